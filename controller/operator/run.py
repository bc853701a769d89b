"""kopf wiring: watch handlers feed the engine; background tasks publish, reconcile and hold
the lease.

Watches use ``@kopf.on.event`` only (no finalizers, no annotations written on users' objects,
and no ``@kopf.index``: kopf holds every object's first handler call until all indexes are
filled, waking every waiting object on each one indexed, which made a restart quadratic in the
number of objects). No partial view is published after a restart: the initial sync is our own
paged listing of every compiled kind (the reconcile's machinery), and the engine publishes only
once every kind's listing is complete. kopf's events, its own initial listing included, feed
the engine meanwhile in any order (feeding is monotonic by resourceVersion). Our own
AddressGroups and NodeRules are watched too: agents report status there, and objects deleted or
edited by someone else are re-planned.

Threads: kopf's event loop only routes. Every engine call runs on one compile worker thread
(``Runtime.compile``), API writes in a bounded pool, listings and lease calls in their own
threads, each with a client-side timeout.

Nothing lost on re-list: kopf lists again after a 410 or a broken watch and delivers what it
finds as listing events (type None), without reporting what vanished meanwhile. A listing event
after the initial sync therefore triggers, once the listing has quietened, a reconcile: every
kind is listed through the API and the engine forgets what the listing proves gone. The same
reconcile runs every ``reconcile_period`` seconds as a backstop.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import kopf
from kubernetes import client

from controller.kube import timeouts
from controller.kube.informer import Informer
from controller.kube.lease import LeaseElector
from controller.kube.publisher import (
    PAGE,
    ListFn,
    list_functions,
    list_pages,
    list_published,
    perform,
)
from controller.operator.engine import CR_KINDS, LISTED_KINDS, Engine, Notice, OperatorConfig
from controller.publish.plan import Write
from controller.resources import GROUP, VERSION

log = logging.getLogger(__name__)

RESOURCES = {
    "Namespace": ("", "v1", "namespaces"),
    "Pod": ("", "v1", "pods"),
    "Node": ("", "v1", "nodes"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}
LEASE_RENEW = 2.0
RELIST_QUIET = 1.0  # reconcile this long after kopf's last listing event
RECONCILE_RETRY = 30.0  # a failed reconcile is tried again after this (or the period)
SYNC_RETRY = 5.0  # a failed initial listing of a kind is started again after this
PROGRESS_EVERY = 10.0  # a long initial listing logs how far it got this often
WORKER_IDLE = 1.0  # kopf's per-object task exits after this long idle (its default: 5 s)
CYCLE_SPACING = 0.01  # publish cycles woken by finished writes are at least this far apart
DNS_STALE = 2 * timeouts.WATCH_READ  # the DNS Service watch silent this long: not ready

T = TypeVar("T")


class Relist:
    """Debounces "kopf listed again" signals: waits until listing events stop for a while."""

    def __init__(self, quiet: float = RELIST_QUIET) -> None:
        self.quiet = quiet
        self._event = asyncio.Event()
        self._last = 0.0

    def poke(self) -> None:
        self._last = time.monotonic()
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True once poked and quiet again; False after ``timeout`` without a poke."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        while (left := self._last + self.quiet - time.monotonic()) > 0:
            await asyncio.sleep(left)
        self._event.clear()
        return True


@dataclass
class Runtime:
    """What the handlers and background tasks share."""

    engine: Engine
    api: client.ApiClient
    elector: LeaseElector
    worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="compile")
    )
    lister: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="list")
    )
    leaser: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="lease")
    )
    writers: ThreadPoolExecutor = field(init=False)
    # kopf posts Events only from a context its handlers run in (its event queue is a context
    # variable of the per-object tasks); the first handler call lends one to the publish loop.
    handler_context: list[contextvars.Context] = field(default_factory=list)
    relist: Relist = field(default_factory=Relist)
    last_cycle: float = field(default_factory=time.monotonic)
    reconcile_failing_since: float | None = None
    reconcile_error: str = ""

    def __post_init__(self) -> None:
        self.writers = ThreadPoolExecutor(
            self.engine.config.write_concurrency, thread_name_prefix="write"
        )

    async def compile(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the compile worker (the only thread that touches the engine)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    # ---- health checks (metrics server thread) -------------------------------------------------

    def cycle_problem(self) -> str | None:
        """The publish loop and the compile worker keep going (a cycle is a round trip to
        the worker, so a compile that never ends shows here). The initial listing may
        legitimately keep the worker busy for a long time: it gets ten times longer."""
        silent = time.monotonic() - self.last_cycle
        limit = self.engine.config.stuck_after * (1 if self.engine.synced else 10)
        if silent <= limit:
            return None
        return f"no publish cycle completed for {silent:.0f} s (compile worker busy or stuck)"

    def reconcile_problem(self) -> str | None:
        since = self.reconcile_failing_since
        if since is None or time.monotonic() - since <= self.engine.config.reconcile_grace:
            return None
        return f"reconcile listings failing for {time.monotonic() - since:.0f} s: {self.reconcile_error}"


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    background: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(rt.api)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True  # leadership is the Lease's job (see lease.py)
        settings.posting.level = logging.ERROR
        # kopf logs every handled event at info ("Handler ... succeeded."): 65k lines while
        # 30k pods are created. Its per-object logger only; its warnings and errors remain.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        settings.watching.server_timeout = timeouts.WATCH_SERVER
        settings.watching.client_timeout = timeouts.WATCH_READ
        settings.watching.connect_timeout = timeouts.CONNECT
        # kopf's own listing in pages too (by default it fetches a kind whole: at 100k pods
        # hundreds of MB held at once, next to our paged listing of the same objects).
        settings.watching.chunk_size = PAGE
        # kopf keeps a task per object, holding its last event, this long after the event:
        # after a listing of 100k objects that is tens of thousands of idle tasks at once.
        settings.batching.idle_timeout = WORKER_IDLE
        settings.networking.request_timeout = timeouts.REQUEST[1]
        settings.networking.connect_timeout = timeouts.CONNECT
        background.append(asyncio.create_task(_publish_loop(rt)))
        background.append(asyncio.create_task(_lease_loop(rt)))
        background.append(asyncio.create_task(_reconcile_loop(rt)))

    @kopf.on.cleanup(registry=registry)
    async def stop_background(**_: Any) -> None:
        # kopf stops its watches at once on SIGTERM but gives other tasks 5 s before it cancels
        # them: without this the lease would be renewed, and published from a view no longer
        # fed, for those 5 s, and a standby would take over only afterwards.
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    for kind, (group, version, plural) in RESOURCES.items():
        _register(registry, rt, kind, group, version, plural)
    for plural, kind in CR_KINDS.items():
        _register(registry, rt, kind, GROUP, VERSION, plural)
    return registry


def connection_info(api: client.ApiClient) -> kopf.ConnectionInfo:
    """kopf's credentials, from the same client configuration the rest of the process uses
    (loaded once by the CLI from --kubeconfig or the in-cluster service account)."""
    cfg = api.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def _register(
    registry: kopf.OperatorRegistry,
    rt: Runtime,
    kind: str,
    group: str,
    version: str,
    plural: str,
) -> None:
    own = plural in CR_KINDS

    async def event_fn(type: str | None, body: kopf.Body, **_: Any) -> None:
        if not rt.handler_context:
            rt.handler_context.append(contextvars.copy_context())
        raw = dict(body)  # a plain snapshot: kopf may swap what its Body views
        if own:
            relisted = await rt.compile(rt.engine.observed, plural, type, raw)
        else:
            relisted = await rt.compile(rt.engine.event, kind, type, raw)
        if relisted:
            rt.relist.poke()

    kopf.on.event(group, version, plural, id=f"nftpolicy-{plural}", registry=registry)(event_fn)


# ---- background tasks -------------------------------------------------------------------------


async def _lease_loop(rt: Runtime) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            await loop.run_in_executor(rt.leaser, rt.elector.try_acquire_or_renew)
            await asyncio.sleep(LEASE_RENEW)
    finally:
        await loop.run_in_executor(rt.leaser, rt.elector.release)


async def _publish_loop(rt: Runtime) -> None:
    engine, loop = rt.engine, asyncio.get_running_loop()
    custom = client.CustomObjectsApi(rt.api)
    wake = asyncio.Event()
    while True:
        try:
            await asyncio.wait_for(wake.wait(), engine.config.publish_interval)
            await asyncio.sleep(CYCLE_SPACING)
        except TimeoutError:
            pass
        wake.clear()
        leading = rt.elector.is_leader
        engine.metrics.set("leader", 1.0 if leading else 0.0)
        engine.metrics.set("synced", 1.0 if engine.synced else 0.0)
        try:
            if not leading and engine.leading:
                log.warning(
                    "not leading any more (lease last renewed %.1f s ago): publishing stops",
                    rt.elector.renewed_ago(),
                )
                await rt.compile(engine.stop_leading)
            elif leading and engine.synced and not engine.leading:
                published, _ = await loop.run_in_executor(rt.lister, list_published, custom)
                if rt.elector.is_leader:
                    await rt.compile(engine.start_leading, published)
            writes, notices = await rt.compile(engine.cycle, time.monotonic())
            term = engine.term
            for write in writes:
                _send(rt, custom, write, term, loop, wake)
            _post(rt, notices)
            rt.last_cycle = time.monotonic()
        except Exception:
            log.exception("publishing failed; retrying")
            await asyncio.sleep(1.0)


def _send(
    rt: Runtime,
    custom: client.CustomObjectsApi,
    write: Write,
    term: int,
    loop: asyncio.AbstractEventLoop,
    wake: asyncio.Event,
) -> None:
    """Hand one write to the pool; its outcome goes back to the engine and wakes the loop."""

    def done(future: Future[Any]) -> None:
        if not future.cancelled():
            rt.engine.outcomes.put((term, write, future.result()))
            loop.call_soon_threadsafe(wake.set)

    rt.writers.submit(perform, custom, write).add_done_callback(done)


def _post(rt: Runtime, notices: list[Notice]) -> None:
    if not notices:
        return
    if not rt.handler_context:
        log.warning("%d event(s) not posted: no kopf context yet", len(notices))
        return
    for n in notices:
        rt.handler_context[0].run(
            kopf.event, cast(kopf.Body, n.ref), type=n.type, reason=n.reason, message=n.message
        )


async def _reconcile_loop(rt: Runtime) -> None:
    await _initial_sync(rt)
    # Once kopf's own first listing has quietened, reconcile once: an object our listing
    # saw and that was deleted before kopf's listing (taken a moment later) is reported by
    # neither. kopf's listing events after the sync poke (kopf listing after us, as after a
    # re-list), and so does the sync itself.
    rt.relist.poke()
    period = rt.engine.config.reconcile_period
    wait = period
    while True:
        relisted = await rt.relist.wait(wait)
        ok = await _reconcile(rt, "kopf listed again" if relisted else "periodic")
        wait = period if ok else min(period, RECONCILE_RETRY)


async def _initial_sync(rt: Runtime) -> None:
    """The first complete listing of every compiled kind, page by page (the engine holds no
    more than one raw page of ours at a time), kind by kind; the engine is synced, and may
    publish, after the last. A failed listing starts that kind again (completed kinds stay
    done); failing for long shows in the reconcile health check."""
    started = time.monotonic()
    total = 0
    functions = list_functions(rt.api)
    for kind in LISTED_KINDS:
        began = time.monotonic()
        while True:
            try:
                listed, fed, gone = await _list_kind(rt, kind, functions[kind], began)
                break
            except Exception as e:  # noqa: BLE001 - the API is away or slow: try again
                _reconcile_failed(rt, e)
                log.warning(
                    "initial listing of %s failed: %s; starting it again in %.0f s",
                    kind,
                    rt.reconcile_error,
                    SYNC_RETRY,
                )
                await asyncio.sleep(SYNC_RETRY)
        rt.reconcile_failing_since = None
        total += listed
        log.info(
            "initial listing: %s: %d objects (%d fed from this listing, the rest by kopf's "
            "events first; %d gone meanwhile) in %.1f s",
            kind,
            listed,
            fed,
            gone,
            time.monotonic() - began,
        )
    log.info(
        "initial listing complete: %d objects in %.1f s; publishing once leading",
        total,
        time.monotonic() - started,
    )


async def _list_kind(
    rt: Runtime, kind: str, list_fn: ListFn, began: float | None = None
) -> tuple[int, int, int]:
    """List one kind through the API into the engine: (objects listed, fed, forgotten).
    ``began``: this is the initial listing, started then (progress is logged)."""
    loop = asyncio.get_running_loop()
    pages: Iterator[tuple[list[dict[str, Any]], str]] = list_pages(list_fn)
    listed: set[str] = set()
    version, fed = "", 0
    reported = time.monotonic()
    while (page := await loop.run_in_executor(rt.lister, next, pages, None)) is not None:
        items, version = page
        fed += await rt.compile(rt.engine.relisted, kind, items, listed)
        del items, page  # one raw page at a time
        if began is not None and time.monotonic() - reported >= PROGRESS_EVERY:
            reported = time.monotonic()
            log.info(
                "initial listing: %s: %d objects so far (%.0f s)",
                kind,
                len(listed),
                reported - began,
            )
    gone = await rt.compile(rt.engine.relist_done, kind, listed, version)
    return len(listed), fed, gone


def _reconcile_failed(rt: Runtime, e: Exception) -> None:
    if rt.reconcile_failing_since is None:
        rt.reconcile_failing_since = time.monotonic()
    rt.reconcile_error = f"{type(e).__name__}: {e}"


async def _reconcile(rt: Runtime, why: str) -> bool:
    """List every watched kind through the API and make the engine equal to the listings."""
    engine, loop = rt.engine, asyncio.get_running_loop()
    counts: list[str] = []
    corrections = 0
    try:
        for kind, list_fn in list_functions(rt.api).items():
            listed, fed, gone = await _list_kind(rt, kind, list_fn)
            corrections += fed + gone
            counts.append(f"{kind} {listed} listed, {fed} updated, {gone} forgotten")
        if engine.leading:
            custom = client.CustomObjectsApi(rt.api)
            published, versions = await loop.run_in_executor(rt.lister, list_published, custom)
            fixed = await rt.compile(engine.published_relisted, published, versions)
            corrections += fixed
            counts.append(f"published {len(published)} listed, {fixed} corrected")
    except Exception as e:  # noqa: BLE001 - the API is away or slow: try again later
        _reconcile_failed(rt, e)
        log.warning("reconcile (%s) failed: %s; trying again", why, rt.reconcile_error)
        return False
    rt.reconcile_failing_since = None
    engine.metrics.inc("reconciles_total")
    engine.metrics.inc("reconcile_corrections_total", corrections)
    (log.warning if corrections else log.info)("reconcile (%s): %s", why, "; ".join(counts))
    return True


def run_operator(
    api: client.ApiClient, metrics_port: int, metrics_address: str, config: OperatorConfig
) -> None:
    engine = Engine(config)
    elector = LeaseElector(api, config.lease_namespace, config.lease_name, config.identity)
    rt = Runtime(engine, api, elector)
    metrics = engine.metrics
    metrics.add_check("publish-loop", rt.cycle_problem)
    metrics.add_check("reconcile", rt.reconcile_problem)
    # Readiness only: restarting cannot make the API server accept an object it rejects, and
    # would only move the failure (and a full re-list) to the other replica.
    metrics.add_check("writes", lambda: engine.write_problem(time.monotonic()), liveness=False)
    metrics.add_check("initial-sync", engine.sync_problem, liveness=False)
    if config.default_deny.allow_dns:
        dns = _dns_informer(rt).start()
        metrics.add_check("dns-services", lambda: dns.health(DNS_STALE), liveness=False)
    if metrics_port:
        metrics.serve(metrics_port, metrics_address)
    kopf.run(registry=build_registry(rt), clusterwide=True, standalone=True)


def _dns_informer(rt: Runtime) -> Informer:
    """The DNS Services, from one narrow watch: the DNS namespace, filtered by the service
    selector on the server, so its events cost nothing when other Services change and the
    operator needs to read Services in that namespace only. DNS pods need no watch of their
    own: every pod is watched already. Events go to the compile worker in order."""
    dns = rt.engine.config.default_deny.dns

    def submit(fn: Callable[..., None], *args: Any) -> None:
        rt.worker.submit(fn, *args).add_done_callback(_log_failure)

    return Informer(
        "dns-services",
        client.CoreV1Api(rt.api).list_namespaced_service,
        lambda bodies: submit(rt.engine.dns_listed, bodies),
        lambda type, body: submit(rt.engine.dns_event, type, body),
        namespace=dns.namespace,
        label_selector=str(dns.service_selector),
    )


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and (error := future.exception()) is not None:
        log.error("compiling a DNS Service event failed", exc_info=error)
