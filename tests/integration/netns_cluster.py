"""Moved to ``controller.testing.netns`` (the sandbox uses it too); this re-export keeps
older imports working until they are updated."""

from controller.testing.netns import *  # noqa: F403
from controller.testing.netns import (  # noqa: F401
    NetnsCluster,
    NetnsError,
    Probe,
    ProbeResult,
    cleanup_dead_runs,
    cleanup_stale,
    list_netns,
    unavailable_reason,
)
