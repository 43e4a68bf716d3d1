"""`hearth pull`, `hearth ps` and `hearth rm` end to end, as subprocesses, with the real
`hearth serve` serving a model from the store.

Until the server has GET /api/ps (issue 5's model manager), `hearth ps` reads /health instead;
these tests hold either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from hearth.models.registry import embedded_model_path
from tests.server.conftest import HearthServer, start_server

pytestmark = pytest.mark.server

NAME = "mysmol:latest"


def hearth(*args: str, home: Path, port: int) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    environ |= {"HEARTH_HOME": str(home), "HEARTH_PORT": str(port), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "hearth", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    """A server whose model was imported into its home with `hearth pull ./file.gguf`."""
    log_dir = tmp_path_factory.mktemp("models-e2e")
    home = log_dir / "home"  # start_server's HEARTH_HOME
    imported = hearth("pull", str(embedded_model_path()), "--name", NAME, home=home, port=1)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(f"Pulled {NAME} (")
    with start_server(log_dir, "--model", NAME) as server:
        yield server


def home_of(server: HearthServer) -> Path:
    return server.log_path.parent / "home"


def test_the_server_serves_the_pulled_model(served: HearthServer) -> None:
    assert served.health()["model"] == NAME
    listed = hearth("list", home=home_of(served), port=served.port)
    assert listed.returncode == 0, listed.stderr
    assert NAME in [line.split()[0] for line in listed.stdout.splitlines()[1:]]


def test_ps_shows_the_loaded_model(served: HearthServer) -> None:
    done = hearth("ps", home=home_of(served), port=served.port)
    assert done.returncode == 0, done.stderr
    header, *rows = [line.split() for line in done.stdout.strip().splitlines()]
    assert header == ["NAME", "SIZE", "PROCESSOR", "SLOTS", "CONTEXT", "UNTIL", "RUNNER"]
    [row] = [row for row in rows if row[0] == NAME]
    health = served.health()
    assert f"{health['slots_in_use']}/{health['slots_total']}" in row
    assert str(health["n_ctx_per_slot"]) in row


def test_api_delete_refuses_the_servers_own_model(served: HearthServer) -> None:
    with ollama.Client(host=served.base_url) as client:
        with pytest.raises(ollama.ResponseError) as refused:
            client.delete(NAME)
        assert refused.value.status_code == 409
        assert "the model this server was started with (--model)" in refused.value.error
        assert NAME in [m.model for m in client.list().models]
    assert served.health()["model"] == NAME


def test_rm_keeps_the_loaded_model_unless_forced(served: HearthServer) -> None:
    home = home_of(served)
    refused = hearth("rm", NAME, home=home, port=served.port)
    assert refused.returncode == 1
    assert f"{NAME} is loaded in the Hearth server at http://127.0.0.1:{served.port}" in (
        refused.stderr
    )
    assert NAME in hearth("list", home=home, port=served.port).stdout

    forced = hearth("rm", NAME, "--force", home=home, port=served.port)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith(f"Removed {NAME} (")
    assert NAME not in hearth("list", home=home, port=served.port).stdout
    # The server keeps its open copy of the file and goes on answering.
    assert served.health()["model"] == NAME
