"""Test helpers that need no cluster: a real etcd + kube-apiserver (see ``apiserver``)."""
