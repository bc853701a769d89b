"""The saved ruleset's file format and the drift digest (pure; file I/O in a temp dir)."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from controller.agent import drift, saved_ruleset
from controller.agent.render import render
from controller.agent.saved_ruleset import SavedRuleset, SavedRulesetError, decode, encode
from controller.compiler.ir import AddressGroup, CompiledPolicy, LocalPod, NodeRules, Rule
from controller.model import Direction


def _ruleset() -> dict[str, Any]:
    group = AddressGroup("g", "peers", frozenset({ipaddress.ip_address("10.0.0.2")}))
    rules = NodeRules(
        node="n1",
        pods=(LocalPod("ns/a", (ipaddress.ip_address("10.0.0.1"),)),),
        policies=(
            CompiledPolicy(
                "ns/p", ("ns/a",), frozenset({Direction.INGRESS}), ingress=(Rule(peers=("g",)),)
            ),
        ),
    )
    return render(rules, {"g": group})


SAVED = SavedRuleset("n1", 7, _ruleset())


def test_round_trip() -> None:
    assert decode(encode(SAVED), "n1") == SAVED


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-3] + b"xyz", "checksum mismatch"),
        (lambda b: b"", "no header line"),
        (lambda b: b"{not json\n{}", "unreadable header"),
        (lambda b: b.replace(b'"version": 1', b'"version": 2'), "format version 2"),
        (lambda b: b.replace(b'"format": "nftpolicy', b'"format": "other'), "not a nftpolicy"),
    ],
)
def test_damaged_files_are_refused_with_a_reason(damage: Any, message: str) -> None:
    with pytest.raises(SavedRulesetError, match=message):
        decode(damage(encode(SAVED)), "n1")


def test_a_file_of_another_node_is_refused() -> None:
    with pytest.raises(SavedRulesetError, match="saved for node 'n1', this is node 'n2'"):
        decode(encode(SAVED), "n2")


def _tampered(change: Any) -> bytes:
    """A file whose checksum is right but whose ruleset was edited."""
    ruleset = copy.deepcopy(SAVED.ruleset)
    change(ruleset["nftables"])
    return encode(SavedRuleset("n1", 7, ruleset))


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.append({"add": {"table": {"family": "ip", "name": "filter"}}}),
        lambda c: c.append(
            {"add": {"rule": {"family": "inet", "table": "other", "chain": "x", "expr": []}}}
        ),
        lambda c: c.append({"flush": {"ruleset": None}}),
        lambda c: c.pop(1),  # no longer replaces the table: would merge into an old one
    ],
    ids=["other-table", "rule-elsewhere", "flush-ruleset", "no-replace"],
)
def test_only_a_replacement_of_our_table_is_loaded(change: Any) -> None:
    with pytest.raises(SavedRulesetError):
        decode(_tampered(change), "n1")


def test_the_stand_in_is_ours_and_drops() -> None:
    stand_in = saved_ruleset.stand_in(-5)
    saved_ruleset._check_ours(stand_in)
    last = stand_in["nftables"][-1]["add"]["rule"]
    assert {"drop": None} in last["expr"]


def test_save_replaces_atomically_and_load_reads_it(tmp_path: Path) -> None:
    assert saved_ruleset.load(tmp_path, "n1") is None
    saved_ruleset.save(tmp_path, SAVED)
    newer = SavedRuleset("n1", 8, SAVED.ruleset)
    (tmp_path / ".ruleset-n1.json.stale").write_text("left by a crash")
    saved_ruleset.save(tmp_path, newer)
    assert saved_ruleset.load(tmp_path, "n1") == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ruleset-n1.json"]
    assert saved_ruleset.remove(tmp_path, "n1") is True
    assert saved_ruleset.remove(tmp_path, "n1") is False


def test_load_names_the_file_when_it_is_damaged(tmp_path: Path) -> None:
    (tmp_path / "ruleset-n1.json").write_bytes(encode(SAVED)[:100])
    with pytest.raises(SavedRulesetError, match=r"ruleset-n1\.json: .*truncated"):
        saved_ruleset.load(tmp_path, "n1")


# ---- drift digest ---------------------------------------------------------------------------------


LISTING = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "nftpolicy", "handle": 3}},
        {
            "rule": {
                "family": "inet",
                "table": "nftpolicy",
                "chain": "c",
                "handle": 9,
                "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}],
            }
        },
    ]
}


def test_digest_ignores_handles_counters_and_metainfo() -> None:
    other = json.loads(json.dumps(LISTING))
    other["nftables"][0]["metainfo"]["version"] = "1.1.1"
    other["nftables"][1]["table"]["handle"] = 4
    other["nftables"][2]["rule"]["handle"] = 17
    other["nftables"][2]["rule"]["expr"][0]["counter"] = {"packets": 5, "bytes": 300}
    assert drift.digest(other) == drift.digest(LISTING)


def test_digest_sees_any_other_change() -> None:
    added = json.loads(json.dumps(LISTING))
    added["nftables"][2]["rule"]["expr"][1] = {"accept": None}
    assert drift.digest(added) != drift.digest(LISTING)
    assert drift.digest(None) == drift.ABSENT != drift.digest(LISTING)
