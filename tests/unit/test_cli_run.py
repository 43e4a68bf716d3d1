"""`hearth run`, the client side: a canned Hearth on a loopback thread stands in for the server,
so SSE parsing, history, errors and server start-up are tested without a model."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hearth.cli import run
from hearth.cli.main import cli

MODEL = "smollm2:135m"


def sse_answer(*pieces: str) -> list[str]:
    """The events of a streamed chat answer, shaped like Hearth's (and OpenAI's)."""

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces]
    return [*events, chunk({}, "stop"), "data: [DONE]\n\n"]


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None}}


@dataclass
class ErrorReply:
    status: int
    body: dict[str, Any]


@dataclass
class FakeHearth:
    port: int = 0
    model: str = MODEL
    health_status: int = 200
    replies: list[list[str] | ErrorReply] = field(default_factory=list)  # one per chat request
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    model_requests: list[str] = field(default_factory=list)  # GET /v1/models/{id}

    def messages(self, index: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.requests[index]["messages"]
        return messages


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeHearth


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path == "/health" and fake.health_status == 200:
            self._json(200, {"status": "ok", "model": fake.model, "slots_total": 4})
        elif self.path.startswith("/v1/models/"):
            fake.model_requests.append(self.path)
            self._json(200, {"id": fake.model, "capabilities": fake.capabilities})
        else:
            self._json(fake.health_status, error_body("Unknown route"))

    def do_POST(self) -> None:
        fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.requests.append(body)
        fake.headers.append(dict(self.headers))
        reply = fake.replies.pop(0) if fake.replies else sse_answer("ok")
        if isinstance(reply, ErrorReply):
            self._json(reply.status, reply.body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for event in reply:
                self.wfile.write(event.encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: Ctrl-C


@pytest.fixture()
def fake() -> Iterator[FakeHearth]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakeHearth(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def interactive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the terminal path; CliRunner's stdin then feeds input() line by line."""
    monkeypatch.setattr(run, "_interactive", lambda: True)


def invoke(fake: FakeHearth, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(run.command, ["--port", str(fake.port), *args], input=input)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- wiring -------------------------------------------------------------------------------------


def test_defaults_match_the_server_settings() -> None:
    from hearth.settings import DEFAULT_HOST, DEFAULT_PORT

    defaults = {param.name: param.default for param in run.command.params}
    assert (defaults["host"], defaults["port"]) == (DEFAULT_HOST, DEFAULT_PORT)


def test_run_is_a_subcommand_of_hearth() -> None:
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0, result.output
    assert "--system" in result.output


def test_importing_run_loads_neither_server_nor_llama_nor_pydantic() -> None:
    code = (
        "import sys, hearth.cli.run; "
        "print([m for m in ('hearth.server', 'llama_cpp', 'pydantic') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_state_paths_follow_hearth_home_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    assert run.log_path() == tmp_path / "home" / "logs" / "serve.log"
    assert run.pid_path() == tmp_path / "home" / "serve.pid"

    monkeypatch.delenv("HEARTH_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert run.log_path() == tmp_path / "state" / "hearth" / "serve.log"

    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert run.log_path() == tmp_path / "user" / ".local" / "state" / "hearth" / "serve.log"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:1"),
        ("0.0.0.0", "http://127.0.0.1:1"),
        ("::1", "http://[::1]:1"),
        ("::", "http://[::1]:1"),
        ("example.lan", "http://example.lan:1"),
    ],
)
def test_base_url_connects_to_a_wildcard_bind_locally(host: str, url: str) -> None:
    assert run._base_url(host, 1) == url


def test_parse_sse_joins_data_lines_and_skips_the_rest() -> None:
    lines = [": keep-alive", "", "event: message", "data: {", "data:  1}", "id: 7", "", "data:x"]
    assert list(run.parse_sse(lines)) == ["{\n 1}", "x"]


# --- one message from stdin ---------------------------------------------------------------------


def test_piped_stdin_is_one_message_and_the_answer_streams_to_stdout(fake: FakeHearth) -> None:
    fake.replies = [sse_answer("Hel", "lo", " there")]
    result = invoke(fake, input="Say hello\nplease\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello there\n"
    assert fake.requests == [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello\nplease\n"}],
            "stream": True,
        }
    ]


def test_system_prompt_leads_the_conversation(fake: FakeHearth) -> None:
    result = invoke(fake, "--system", "Be brief.", input="hi")
    assert result.exit_code == 0, result.output
    assert fake.messages(0) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_host_and_port_come_from_the_environment(
    fake: FakeHearth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_HOST", "127.0.0.1")
    monkeypatch.setenv("HEARTH_PORT", str(fake.port))
    result = CliRunner().invoke(run.command, [], input="hi")
    assert result.exit_code == 0, result.output
    assert len(fake.requests) == 1


def test_the_first_api_key_is_sent_as_bearer(
    fake: FakeHearth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_API_KEY", " k1 , k2")
    assert invoke(fake, input="hi").exit_code == 0
    assert fake.headers[0]["Authorization"] == "Bearer k1"


def test_server_error_shows_its_message_and_exits_1(fake: FakeHearth) -> None:
    fake.replies = [ErrorReply(401, error_body("Incorrect API key provided."))]
    result = invoke(fake, input="hi")
    assert result.exit_code == 1
    assert "Incorrect API key provided." in result.stderr
    assert "Traceback" not in result.output


def test_non_json_error_shows_the_status(fake: FakeHearth) -> None:
    fake.replies = [ErrorReply(503, {})]
    result = invoke(fake, input="hi")
    assert result.exit_code == 1
    assert "HTTP 503" in result.stderr


def test_an_error_event_midway_shows_its_message(fake: FakeHearth) -> None:
    error_event = f"data: {json.dumps(error_body('The engine failed.'))}\n\n"
    fake.replies = [[*sse_answer("partial")[:2], error_event]]
    result = invoke(fake, input="hi")
    assert result.exit_code == 1
    assert result.stdout.startswith("partial")
    assert "The engine failed." in result.stderr


def test_empty_stdin_sends_nothing(fake: FakeHearth) -> None:
    result = invoke(fake, input="  \n")
    assert result.exit_code == 1
    assert "stdin was empty" in result.stderr
    assert fake.requests == []


# --- which model --------------------------------------------------------------------------------


def test_a_different_model_than_the_server_serves_is_an_error(fake: FakeHearth) -> None:
    result = invoke(fake, "other.gguf", input="hi")
    assert result.exit_code == 1
    assert "serves 'smollm2:135m', not 'other.gguf'" in result.stderr
    assert fake.requests == []


@pytest.mark.parametrize("name", [MODEL, "/models/SmolLM2.gguf"])
def test_the_served_model_by_name_or_gguf_path_is_accepted(fake: FakeHearth, name: str) -> None:
    fake.model = "SmolLM2" if name.endswith(".gguf") else MODEL
    result = invoke(fake, name, input="hi")
    assert result.exit_code == 0, result.output
    assert fake.requests[0]["model"] == fake.model


def test_a_port_that_is_not_hearth_is_an_error(fake: FakeHearth) -> None:
    fake.health_status = 404
    result = invoke(fake, input="hi")
    assert result.exit_code == 1
    assert "not as a Hearth server" in result.stderr


# --- the terminal chat --------------------------------------------------------------------------


@pytest.mark.usefixtures("interactive")
def test_each_turn_sends_the_whole_history(fake: FakeHearth) -> None:
    fake.replies = [sse_answer("Hi", "!"), sse_answer("Fine.")]
    result = invoke(fake, input="hello\n\n   \nhow are you?\n/bye\nnever sent\n")
    assert result.exit_code == 0, result.output
    assert len(fake.requests) == 2  # blank lines are skipped; /bye stops before the last line
    assert fake.messages(1) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "how are you?"},
    ]
    assert "Hi!\n" in result.stdout
    assert "Fine.\n" in result.stdout


@pytest.mark.usefixtures("interactive")
def test_clear_forgets_all_but_the_system_prompt(fake: FakeHearth) -> None:
    result = invoke(fake, "--system", "Be brief.", input="one\n/clear\ntwo\n")  # then EOF
    assert result.exit_code == 0, result.output
    assert fake.messages(1) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "two"},
    ]
    assert "Cleared" in result.stderr


@pytest.mark.usefixtures("interactive")
def test_an_error_keeps_the_chat_going_without_the_failed_turn(fake: FakeHearth) -> None:
    fake.replies = [ErrorReply(400, error_body("Too long.")), sse_answer("ok")]
    result = invoke(fake, input="first\nsecond\n")
    assert result.exit_code == 0, result.output
    assert "Too long." in result.stderr
    assert "Traceback" not in result.output
    assert fake.messages(1) == [{"role": "user", "content": "second"}]


@pytest.mark.usefixtures("interactive")
def test_ctrl_c_stops_the_answer_and_keeps_what_was_shown(
    fake: FakeHearth, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.replies = [sse_answer("Once", " upon", " a time"), sse_answer("ok")]
    written: list[str] = []

    def write(delta: str) -> None:
        written.append(delta)
        if len(written) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(run, "_write_delta", write)
    result = invoke(fake, input="story\nmore\n")
    assert result.exit_code == 0, result.output
    assert "(stopped)" in result.stderr
    assert fake.messages(1) == [
        {"role": "user", "content": "story"},
        {"role": "assistant", "content": "Once"},
        {"role": "user", "content": "more"},
    ]
    assert written == ["Once", "ok"]


@pytest.mark.usefixtures("interactive")
def test_image_paths_in_a_line_are_sent_as_images(fake: FakeHearth, tmp_path: Path) -> None:
    fake.capabilities = ["completion", "vision"]
    png = tmp_path / "red dot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    jpeg = tmp_path / "b.JPG"
    jpeg.write_bytes(b"\xff\xd8\xffjpeg")
    spaced = str(png).replace(" ", "\\ ")
    line = f"compare {spaced} with '{jpeg}', not {tmp_path / 'missing.png'}\nthen text\n"
    result = invoke(fake, input=line)
    assert result.exit_code == 0, result.output

    def image_part(media_type: str, path: Path) -> dict[str, Any]:
        url = f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"
        return {"type": "image_url", "image_url": {"url": url}}

    assert fake.messages(0) == [
        {
            "role": "user",
            "content": [
                image_part("image/png", png),
                image_part("image/jpeg", jpeg),
                {"type": "text", "text": f"compare with , not {tmp_path / 'missing.png'}"},
            ],
        }
    ]
    # The next turn's history keeps the images; a line without any is plain text.
    assert fake.messages(1)[0] == fake.messages(0)[0]
    assert fake.messages(1)[2] == {"role": "user", "content": "then text"}
    assert f"Added image {png}" in result.stderr and f"Added image {jpeg}" in result.stderr
    assert len(fake.model_requests) == 1  # the capabilities are asked once per chat


@pytest.mark.usefixtures("interactive")
def test_image_paths_stay_text_for_a_model_without_vision(fake: FakeHearth, tmp_path: Path) -> None:
    image = tmp_path / "a.webp"
    image.write_bytes(b"RIFF....WEBP")
    result = invoke(fake, input=f"describe {image}\n")
    assert result.exit_code == 0, result.output
    assert fake.messages(0) == [{"role": "user", "content": f"describe {image}"}]
    assert "does not take images" in result.stderr


def test_extract_images_keeps_what_is_not_an_image_file(tmp_path: Path) -> None:
    image = tmp_path / "x.gif"
    image.write_bytes(b"GIF89a")
    (tmp_path / "notes.txt").write_text("hi")
    assert run.extract_images(f"what is {image}?") == ("what is ?", [image])
    assert run.extract_images(f"{image}") == ("", [image])
    text = f"read {tmp_path / 'notes.txt'} and {tmp_path}/nope.bmp  twice"
    assert run.extract_images(text) == (text, [])


@pytest.mark.usefixtures("interactive")
def test_ctrl_c_at_the_prompt_quits(fake: FakeHearth, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_read_line", interrupted)
    result = invoke(fake)
    assert result.exit_code == 0, result.output
    assert fake.requests == []


# --- starting a server --------------------------------------------------------------------------

# Stands in for `hearth serve`: says something, waits a moment, then answers like Hearth.
_FAKE_SERVE = textwrap.dedent(
    """
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"status": "ok", "model": "smollm2:135m"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()
            delta = {"choices": [{"index": 0, "delta": {"content": "spawned"}}]}
            self.wfile.write(b"data: " + json.dumps(delta).encode() + b"\\n\\ndata: [DONE]\\n\\n")

    print("fake hearth starting", flush=True)
    time.sleep(0.5)
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.fixture()
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process `hearth run` starts; stopped and reaped after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    class Recording(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            processes.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def _serve_with(monkeypatch: pytest.MonkeyPatch, *argv: str) -> list[tuple[str, int, str | None]]:
    """Start `python ARGV PORT` instead of `hearth serve`; returns the calls made."""
    calls: list[tuple[str, int, str | None]] = []

    def serve_command(
        host: str, port: int, model: str | None, serve_args: Sequence[str] = ()
    ) -> list[str]:
        calls.append((host, port, model))
        return [sys.executable, *argv, str(port)]

    monkeypatch.setattr(run, "_serve_command", serve_command)
    return calls


def test_serve_command_runs_this_python() -> None:
    assert run._serve_command("127.0.0.1", 9, None) == [
        sys.executable,
        *("-m", "hearth", "serve", "--host", "127.0.0.1", "--port", "9"),
    ]
    assert run._serve_command("::1", 9, "x.gguf")[-2:] == ["--model", "x.gguf"]
    assert run._serve_command("::1", 9, None, ["--parallel", "1"])[-2:] == ["--parallel", "1"]


def test_no_server_starts_one_in_the_background(
    spawned: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _serve_with(monkeypatch, "-c", _FAKE_SERVE)
    port = free_port()
    result = CliRunner().invoke(run.command, ["--port", str(port)], input="hi")
    assert result.exit_code == 0, result.output
    assert result.stdout == "spawned\n"
    assert calls == [("127.0.0.1", port, None)]

    [process] = spawned
    assert process.poll() is None  # left running
    assert os.getsid(process.pid) == process.pid  # its own session: the terminal's ^C skips it
    assert run.pid_path().read_text().strip() == str(process.pid)
    assert "fake hearth starting" in run.log_path().read_text()
    assert f"kill {process.pid}" in result.stderr


def test_a_server_that_dies_shows_its_log(
    spawned: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run.log_path().parent.mkdir(parents=True)
    run.log_path().write_text("an older run's line\n")
    _serve_with(monkeypatch, "-c", "import sys; print('bind failed: in use'); sys.exit(3)")
    result = CliRunner().invoke(run.command, ["--port", str(free_port())], input="hi")
    assert result.exit_code == 1
    assert "exited with code 3" in result.stderr
    assert "bind failed: in use" in result.stderr
    assert "an older run's line" not in result.stderr
    assert not run.pid_path().exists()


def test_a_server_that_never_answers_times_out(
    spawned: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "START_TIMEOUT_S", 0.5)
    _serve_with(monkeypatch, "-c", "import time; time.sleep(60)")
    result = CliRunner().invoke(run.command, ["--port", str(free_port())], input="hi")
    assert result.exit_code == 1
    assert "did not answer within" in result.stderr
    assert spawned[0].poll() is None  # left for the user to judge; the fixture stops it


def test_an_unknown_model_fails_before_starting_anything(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    result = CliRunner().invoke(run.command, ["--port", str(free_port()), "nope.gguf"], input="hi")
    assert result.exit_code == 1
    assert "no such model file" in result.stderr
    assert spawned == []
