"""The upstream Kubernetes NetworkPolicy e2e suite, re-expressed as pure data.

Upstream lives in kubernetes/kubernetes ``test/e2e/network/netpol/`` (``network_policy.go``
plus the helpers in ``model.go``, ``reachability.go``, ``truthtable.go``, ``policies.go`` and
``test_helper.go``). This package contains no Go code and no cluster access: it only describes

* :mod:`tests.netpol_upstream.model` -- the standard 3 namespaces x 3 pods cluster as
  Kubernetes API dicts, and :class:`~tests.netpol_upstream.model.Reachability`, the 9x9
  expected-connectivity truth table with upstream's helper operations;
* :mod:`tests.netpol_upstream.cases` -- every ``It(...)`` of the suite as a :class:`Case`:
  ordered steps of actions (apply/delete a policy, relabel a namespace or pod) each followed by
  probe matrices with their expected tables.

Runners (the netns integration harness, a kind cluster, the reference evaluator...) build the
cluster from ``model``, replay ``cases`` and compare what they observe with
``Reachability.compare`` / ``Reachability.format_comparison``.
"""
