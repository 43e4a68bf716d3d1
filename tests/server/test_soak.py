"""The short soak (bench/soak.py, 60 s): a mixed load against the real server, then the checks
a long-running server must pass (no 5xx but 503, nothing left in use, flat memory)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

SOAK = Path(__file__).parents[2] / "bench" / "soak.py"


@pytest.mark.timeout(240)
def test_a_short_soak_passes() -> None:
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak  # its dataclasses look their module up there
    spec.loader.exec_module(soak)
    report = soak.soak(60, None)
    assert report["requests"] > 100, report
    assert report["passed"], report
    assert report["exit_code"] == 0, report
