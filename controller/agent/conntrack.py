"""Remove established flows that the ruleset now in force would not allow as new.

``ct state established`` is accepted before any policy lookup, so without this a connection
opened while a policy allowed it would outlive the policy. After each apply the agent walks the
conntrack table of the node's namespace and deletes TCP/UDP/SCTP entries whose original
direction the new ruleset would drop. Flows from or to the node's own addresses never cross
the forward hook (node-to-pod traffic is always allowed) and are left alone.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Iterable

from pyroute2 import Conntrack, IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from controller.agent.netns import netns
from controller.agent.verdict import Ruleset

log = logging.getLogger(__name__)

PORT_PROTOCOLS = frozenset({6, 17, 132})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def remove_disallowed(
    netns_name: str | None, ruleset: Ruleset, pod_ips: Iterable[IPAddress]
) -> int:
    """Delete conntrack entries to or from ``pod_ips`` that ``ruleset`` denies; returns how many."""
    pods = set(pod_ips)
    if not pods:
        return 0
    removed = 0
    with netns(netns_name):
        ipr, ct = IPRoute(), Conntrack()
        try:
            own = {ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}
            # each synchronous pyroute2 call ends by closing its event loop: finish the dump
            # before deleting anything
            for entry in list(ct.dump_entries()):
                t = entry.tuple_orig
                if t.proto not in PORT_PROTOCOLS or t.saddr is None:
                    continue
                src, dst = ipaddress.ip_address(t.saddr), ipaddress.ip_address(t.daddr)
                if (src not in pods and dst not in pods) or src in own or dst in own:
                    continue
                if not ruleset.forward((src, dst, t.proto, t.dport or 0)):
                    try:
                        ct.delete(entry)
                    except NetlinkError as e:
                        if e.code != errno.ENOENT:
                            raise
                        continue  # the flow ended between the dump and now
                    removed += 1
        finally:
            ct.close()
            ipr.close()
    if removed:
        log.info("removed %d established flows that policies no longer allow", removed)
    return removed
