"""The metrics endpoint speaks Prometheus text and reports health."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from controller.metrics import Metrics


def test_render_and_serve() -> None:
    m = Metrics("nftpolicy_agent")
    m.describe("applies_total", "counter", "transactions committed")
    m.inc("applies_total")
    m.inc("applies_total", 2)
    m.set("pods", 7)
    text = m.render()
    assert "# TYPE nftpolicy_agent_applies_total counter\nnftpolicy_agent_applies_total 3\n" in text
    assert "# HELP nftpolicy_agent_applies_total transactions committed" in text
    assert "nftpolicy_agent_pods 7" in text
    server = m.serve(0, host="127.0.0.1")
    port = server.server_address[1]
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "nftpolicy_agent_applies_total 3" in body
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        problem: list[str | None] = [None]
        m.add_check("watch", lambda: problem[0])
        m.add_check("sync", lambda: "initial listing not complete", liveness=False)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert err.value.code == 503
        assert err.value.read().decode() == "sync: initial listing not complete\n"
        problem[0] = "no event for 300 s"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert err.value.code == 503
        assert err.value.read().decode() == "watch: no event for 300 s\n"
    finally:
        server.shutdown()
