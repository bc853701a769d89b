"""kopf wiring: watch handlers feed the engine; background tasks publish and hold the lease.

Watches use ``@kopf.on.event`` only (no finalizers, no annotations written on users' objects).
Each kind also has a key-only ``@kopf.index``: kopf fills every index from the initial listing
before it calls any resource handler, so the first handler call can record the complete set
of objects the engine must have seen before its first publish (no partial view is published
after a restart).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes import client

from controller.kube.lease import LeaseElector
from controller.kube.publisher import execute, list_published
from controller.operator.engine import Engine, OperatorConfig
from controller.resources import GROUP, VERSION

log = logging.getLogger(__name__)

RESOURCES = {
    "Namespace": ("", "v1", "namespaces"),
    "Pod": ("", "v1", "pods"),
    "Node": ("", "v1", "nodes"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}
LEASE_RENEW = 2.0


def build_registry(
    engine: Engine, api: client.ApiClient, elector: LeaseElector
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    custom = client.CustomObjectsApi(api)
    index_names = {kind: f"nftpolicy_{kind.lower()}_keys" for kind in RESOURCES}
    background: list[asyncio.Task[None]] = []
    # kopf posts Events only from a context its handlers run in (its event queue is a context
    # variable of the per-object tasks); the first handler call lends one to the publish loop.
    handler_context: list[contextvars.Context] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(api)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True  # leadership is the Lease's job (see lease.py)
        settings.posting.level = logging.ERROR
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        settings.networking.request_timeout = 30
        background.append(
            asyncio.create_task(_publish_loop(engine, custom, elector, handler_context))
        )
        background.append(asyncio.create_task(_lease_loop(elector)))

    @kopf.on.cleanup(registry=registry)
    async def stop_background(**_: Any) -> None:
        # kopf stops its watches at once on SIGTERM but gives other tasks 5 s before it cancels
        # them: without this the lease would be renewed, and published from a view no longer
        # fed, for those 5 s, and a standby would take over only afterwards.
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    for kind, (group, version, plural) in RESOURCES.items():
        _register_kind(registry, engine, kind, group, version, plural, index_names, handler_context)

    @kopf.on.event(GROUP, VERSION, "noderules", registry=registry)
    async def noderules_status(body: kopf.Body, **_: Any) -> None:
        applied = (body.get("status") or {}).get("appliedGeneration")
        if applied is None:
            return
        engine.enforcement.reported(body["metadata"]["name"], int(applied))
        _post_enforced(engine)

    return registry


def _post_enforced(engine: Engine) -> None:
    """An Enforced Event for every policy change now applied on all the nodes it spans
    (from a kopf handler context)."""
    for policy, nodes, seconds in engine.enforcement.done(time.monotonic()):
        ref = engine.policy_refs.get(policy)
        if ref is not None:
            kopf.event(
                cast(kopf.Body, ref),
                type="Normal",
                reason="Enforced",
                message=f"enforced on {nodes} node(s) {seconds * 1000:.0f} ms after the change",
            )


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


def _register_kind(
    registry: kopf.OperatorRegistry,
    engine: Engine,
    kind: str,
    group: str,
    version: str,
    plural: str,
    index_names: Mapping[str, str],
    handler_context: list[contextvars.Context],
) -> None:
    namespaced = kind in ("Pod", "NetworkPolicy")

    def index_fn(name: str, namespace: str | None, **_: Any) -> dict[tuple[str, str], None]:
        key = f"{namespace}/{name}" if namespaced else name
        return {(kind, key): None}

    kopf.index(group, version, plural, id=index_names[kind], registry=registry)(index_fn)

    async def event_fn(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
        if not handler_context:
            handler_context.append(contextvars.copy_context())
        if engine.expected is None:
            keys: set[tuple[str, str]] = set()
            for name in index_names.values():
                keys.update(kwargs[name])
            engine.expect(keys)
            log.info("initial listing: %d objects", len(keys))
        if type == "DELETED":
            engine.forget(kind, body)
            return
        error = engine.feed(kind, body)
        if error is not None and kind == "NetworkPolicy":
            engine.metrics.inc("invalid_policies_total")
            # kopf.warn() would be filtered by settings.posting.level; post it explicitly
            kopf.event(
                body, type="Warning", reason="InvalidPolicy", message=f"not enforced: {error}"
            )

    kopf.on.event(group, version, plural, id=f"nftpolicy-{plural}", registry=registry)(event_fn)


async def _lease_loop(elector: LeaseElector) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            await loop.run_in_executor(None, elector.try_acquire_or_renew)
            await asyncio.sleep(LEASE_RENEW)
    finally:
        await loop.run_in_executor(None, elector.release)


async def _publish_loop(
    engine: Engine,
    custom: client.CustomObjectsApi,
    elector: LeaseElector,
    handler_context: list[contextvars.Context],
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(engine.config.publish_interval)
        engine.metrics.set("leader", 1.0 if elector.is_leader else 0.0)
        engine.metrics.set("synced", 1.0 if engine.synced else 0.0)
        if not elector.is_leader:
            if engine.published is not None:
                engine.stop_leading()
            continue
        if not engine.synced:
            continue
        try:
            if engine.published is None:
                published = await loop.run_in_executor(None, list_published, custom)
                engine.start_leading(published)
                log.info("leading: %d objects published, planning the differences", len(published))
            writes = engine.prepare()
            if writes:
                done, sent = await loop.run_in_executor(None, execute, custom, writes)
                engine.written(done, sent)
                if len(done) < len(writes):
                    engine.metrics.inc("write_failures_total")
            engine.metrics.set("pending_writes", len(engine.pending))
            # Changes that need no agent report (no node's rules changed, or every spanned node
            # already applies them) are done as soon as they are published: a NodeRules status
            # event, which otherwise triggers the check, may never come for them.
            if engine.enforcement.pending and handler_context:
                handler_context[0].run(_post_enforced, engine)
        except Exception:
            log.exception("publishing failed; retrying")
            await asyncio.sleep(1.0)


def run_operator(api: client.ApiClient, metrics_port: int, config: OperatorConfig) -> None:
    engine = Engine(config)
    if metrics_port:
        engine.metrics.serve(metrics_port)
    elector = LeaseElector(api, config.lease_namespace, config.lease_name, config.identity)
    registry = build_registry(engine, api, elector)
    kopf.run(registry=registry, clusterwide=True, standalone=True)
