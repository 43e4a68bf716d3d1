"""Issue 5's first acceptance check end to end: `hearth pull` from the loopback hub (as a
subprocess, HF_ENDPOINT pointed at it), then the real server loads the pulled model on demand
and chats with it through the official client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.conftest import SMOL_REPO
from tests.models.fake_hub import FakeHub
from tests.server.conftest import start_server

pytestmark = pytest.mark.server


def test_pull_from_the_hub_then_chat_with_the_pulled_model(hub: FakeHub, tmp_path: Path) -> None:
    home = tmp_path / "home"  # start_server's HEARTH_HOME for this log dir
    name = f"hf.co/{SMOL_REPO}:Q4_1"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    environ |= {"HEARTH_HOME": str(home), "HF_ENDPOINT": hub.endpoint}
    pulled = subprocess.run(
        [sys.executable, "-m", "hearth", "pull", name],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pulled.returncode == 0, pulled.stderr
    with start_server(tmp_path) as server:
        client = server.client()
        assert name in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.model == name
        assert reply.choices[0].message.content
        loaded = [m["name"] for m in server.health()["models"]]
        assert name in loaded
