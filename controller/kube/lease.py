"""Leader election on a coordination.k8s.io/v1 Lease (what client-go's leaderelection does).

Every operator replica keeps watching and compiling (a hot standby); only the holder of the
lease publishes. The holder renews every ``renew`` seconds; another replica takes over once
``duration`` seconds pass without a renewal. Updates carry the resourceVersion they read, so
two replicas can never both believe they won the same term.

Every call has a client-side timeout (``timeouts.LEASE``), and, like client-go's
``RenewDeadline``, a holder whose last successful renewal is older than ``renew_deadline``
(shorter than ``duration``) stops counting itself leader at once, even while a renewal is
still hanging: by the time another replica may take the lease over, this one has stopped
publishing.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.kube import timeouts

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class LeaseElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration: int = 15,
        renew_deadline: float = 10.0,
    ) -> None:
        assert renew_deadline < duration, "stop leading before another replica may take over"
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_deadline = renew_deadline
        self._held = False
        self._renewed_at = -float("inf")  # monotonic start of the last successful round
        # A renewal still running in an executor thread when the loop is cancelled must not
        # land after release() and take the lease back.
        self._lock = threading.Lock()
        self._released = False

    @property
    def is_leader(self) -> bool:
        """Held, and renewed within the renew deadline (whatever a hanging call is doing)."""
        return self._held and self.renewed_ago() < self.renew_deadline

    def renewed_ago(self) -> float:
        """Seconds since the start of the last successful election round."""
        return time.monotonic() - self._renewed_at

    def try_acquire_or_renew(self) -> bool:
        """One election round; returns whether we hold the lease afterwards."""
        with self._lock:
            if self._released:
                return False
            return self._try_acquire_or_renew()

    def _try_acquire_or_renew(self) -> bool:
        started = time.monotonic()
        try:
            held = self._round()
        except ApiException as e:
            if e.status != 409:  # 409: someone else wrote first this round
                log.warning("lease %s/%s: %s %s", self.namespace, self.name, e.status, e.reason)
            held = False
        except Exception as e:  # API unreachable: we cannot renew, so we are not leader
            log.warning(
                "lease %s/%s: cannot reach the API server: %s", self.namespace, self.name, e
            )
            held = False
        if held:
            self._renewed_at = started
        if held != self._held:
            log.warning(
                "%s leadership of %s/%s", "acquired" if held else "lost", self.namespace, self.name
            )
        self._held = held
        return held

    def _round(self) -> bool:
        now = _now()
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=timeouts.LEASE
            )
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, now, 0),
            )
            self.coordination.create_namespaced_lease(
                self.namespace, body, _request_timeout=timeouts.LEASE
            )
            return True
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity
        renewed = spec.renew_time or spec.acquire_time
        duration = spec.lease_duration_seconds or self.duration
        expired = renewed is None or now - renewed > timedelta(seconds=duration)
        if holder != self.identity and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = spec.acquire_time if holder == self.identity and spec.acquire_time else now
        lease.spec = self._spec(acquired, now, transitions)
        self.coordination.replace_namespaced_lease(
            self.name, self.namespace, lease, _request_timeout=timeouts.LEASE
        )
        return True

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.duration,
            acquire_time=acquired,
            renew_time=renewed,
            lease_transitions=transitions,
        )

    def release(self) -> None:
        """Give the lease up at shutdown so a standby takes over at once."""
        with self._lock:
            self._released = True
            self._release()

    def _release(self) -> None:
        if not self._held:
            return
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=timeouts.LEASE
            )
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.renew_time = _now() - timedelta(seconds=self.duration + 1)
                self.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=timeouts.LEASE
                )
        except Exception as e:
            log.warning("could not release lease: %s", e)
        self._held = False
