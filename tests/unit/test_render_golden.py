"""Golden rulesets for examples/: any change to the rendered layout shows up as a diff.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 scripts/test.sh tests/unit``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controller.cli import main

GOLDEN = Path(__file__).with_name("golden")
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize(
    ("node", "fmt"), [("node-1", "nft"), ("node-2", "nft"), ("node-1", "json")]
)
def test_examples_render_like_golden(
    node: str, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compile", "-f", str(EXAMPLES), "--node", node, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        json.loads(out)  # valid JSON
    golden = GOLDEN / f"{node}.{fmt}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(out)
    assert out == golden.read_text(), f"{golden} differs; UPDATE_GOLDEN=1 to accept"
