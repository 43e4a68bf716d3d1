"""`hearth run`: chat with the server's model in the terminal, starting a server if none answers.

A thin HTTP client (httpx, not openai, so the CLI starts fast). It never imports the server or
llama.cpp: the server runs in its own process, which `hearth run` leaves behind for later chats.

As in `ollama run`, a typed line that names image files (`describe ./photo.png`) sends them to a
model that takes images, as data-URL parts of the message, and leaves their paths out of the text.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx
from rich.console import Console
from rich.text import Text

from hearth.cli.client import auth_headers as _auth_headers
from hearth.cli.client import base_url as _base_url
from hearth.cli.client import server_options
from hearth.models.registry import model_id

__all__ = [
    "ChatError",
    "command",
    "ensure_server",
    "extract_images",
    "log_path",
    "parse_sse",
    "pid_path",
]

START_TIMEOUT_S = 120.0
_POLL_INTERVAL_S = 0.25
_LOG_TAIL_LINES = 20
_HELP = "Commands: /clear forgets the conversation, /bye quits (so does Ctrl-D)."

# A message's content is its text, or a list of parts when it carries images.
Message = dict[str, Any]

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}
# A word of the typed line: quoted, or a run of non-blanks where `\ ` is a space (as a shell's
# completion or a file dragged onto the terminal writes a path).
_WORD = re.compile(r"""'([^']+)'|"([^"]+)"|((?:\\ |\S)+)""")
_TRAILING_PUNCTUATION = ".,;:!?)"


class ChatError(Exception):
    """A failure to show the user in red: a server error body, or a lost connection."""


# --- where the background server keeps its log and pid ------------------------------------------


def _state_dir() -> Path:
    home = os.environ.get("HEARTH_HOME")
    if home:
        return Path(home).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "hearth"


def log_path() -> Path:
    if os.environ.get("HEARTH_HOME"):
        return _state_dir() / "logs" / "serve.log"
    return _state_dir() / "serve.log"


def pid_path() -> Path:
    return _state_dir() / "serve.pid"


# --- talking to the server ------------------------------------------------------------------------


def _health(client: httpx.Client) -> dict[str, Any] | None:
    """The server's /health, or None when nothing listens. Raises ChatError for a non-Hearth."""
    try:
        response = client.get("/health", timeout=3.0)
    except httpx.TransportError:
        return None
    try:
        body = response.json() if response.status_code == 200 else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise ChatError(
            f"{client.base_url} answers, but not as a Hearth server "
            f"(GET /health: HTTP {response.status_code}). Pick another --port."
        )
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        return message
    text = response.text.strip()[:500]
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


def parse_sse(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event; data lines of one event are joined by newlines."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # Comments (":"), event:, id: and retry: lines carry nothing a chat needs.
    if data:
        yield "\n".join(data)


def _stream_chat(
    client: httpx.Client, model: str, messages: list[Message], on_delta: Callable[[str], None]
) -> str:
    """Send the conversation, call on_delta with each piece of the answer, return the answer.

    A KeyboardInterrupt (Ctrl-C) propagates once leaving the `with` has closed the stream.
    """
    body = {"model": model, "messages": messages, "stream": True}
    parts: list[str] = []
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ChatError(_error_message(response))
            for data in parse_sse(response.iter_lines()):
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise ChatError(f"The server sent a malformed event: {data[:200]}") from exc
                if not isinstance(chunk, dict):
                    continue
                error = chunk.get("error")
                if error is not None:
                    message = error.get("message") if isinstance(error, dict) else None
                    raise ChatError(str(message or error))
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
                        on_delta(content)
    except httpx.TransportError as exc:
        raise ChatError(f"Lost the connection to the server at {client.base_url}: {exc}") from exc
    return "".join(parts)


# --- images named in the prompt --------------------------------------------------------------


def extract_images(line: str) -> tuple[str, list[Path]]:
    """The line without the image files it names, and those files, in order. A word names one
    when it is the path of an existing .png, .jpg, .jpeg, .gif, .bmp or .webp file (bare, quoted,
    or with `\\ ` for its spaces; `~` expanded; punctuation after it stays text)."""
    images: list[Path] = []

    def take(word: re.Match[str]) -> str:
        quoted = word.group(1) or word.group(2)
        text = quoted if quoted is not None else word.group(3).replace("\\ ", " ")
        trailing = ""
        if quoted is None:
            stripped = text.rstrip(_TRAILING_PUNCTUATION)
            text, trailing = stripped, text[len(stripped) :]
        path = Path(text).expanduser()
        if path.suffix.lower() not in IMAGE_TYPES or not path.is_file():
            return word.group(0)
        images.append(path)
        return trailing

    text = _WORD.sub(take, line)
    if images:
        text = re.sub(r"[ \t]{2,}", " ", text).strip()
    return text, images


def _image_part(path: Path) -> dict[str, Any]:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    url = f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _takes_images(client: httpx.Client, model: str) -> bool | None:
    """Whether the served model lists `vision` among its capabilities; None when the server
    does not say (then the images are sent, and the server answers for them)."""
    try:
        response = client.get(f"/v1/models/{quote(model, safe='/:')}", timeout=10.0)
        capabilities = response.json().get("capabilities") if response.status_code == 200 else None
    except (httpx.TransportError, ValueError, AttributeError):
        return None
    return "vision" in capabilities if isinstance(capabilities, list) else None


# --- starting a server ------------------------------------------------------------------------


def _serve_command(
    host: str, port: int, model: str | None, serve_args: Sequence[str] = ()
) -> list[str]:
    argv = [sys.executable, "-m", "hearth", "serve", "--host", host, "--port", str(port)]
    return argv + (["--model", model] if model else []) + list(serve_args)


def _log_tail(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-_LOG_TAIL_LINES:])


def _start_server(
    client: httpx.Client,
    host: str,
    port: int,
    model: str | None,
    console: Console,
    serve_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Start `hearth serve` detached, wait until /health answers, and return its body."""
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as log_file:
        # Its own session: the server outlives this chat and ignores the terminal's Ctrl-C.
        process = subprocess.Popen(
            _serve_command(host, port, model, serve_args),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file = pid_path()
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{process.pid}\n", encoding="ascii")

    deadline = time.monotonic() + START_TIMEOUT_S
    with console.status("Starting Hearth…"):
        while True:
            health = _health(client)
            if health is not None:
                break
            if process.poll() is not None:
                tail = _log_tail(log, offset)
                pid_file.unlink(missing_ok=True)
                raise ChatError(
                    f"The Hearth server exited with code {process.returncode}"
                    + (f":\n{tail}" if tail else ".")
                    + f"\n(full log: {log})"
                )
            if time.monotonic() > deadline:
                raise ChatError(
                    f"The Hearth server (pid {process.pid}) did not answer within "
                    f"{START_TIMEOUT_S:.0f} s; it is still starting or stuck. Log: {log}"
                )
            time.sleep(_POLL_INTERVAL_S)
    console.print(
        Text.assemble(
            ("Started a Hearth server in the background ", "dim"),
            (f"(pid {process.pid}, log {log}). ", "dim"),
            (f"It keeps running after this chat; stop it with: kill {process.pid}", "dim"),
        ),
        soft_wrap=True,
    )
    return health


def ensure_server(
    client: httpx.Client,
    host: str,
    port: int,
    model: str | None,
    console: Console,
    serve_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The /health of the server at host:port, starting one (with serve_args) if none answers."""
    health = _health(client)
    if health is None:
        if model is not None:
            from hearth.models.registry import UnknownModelError, resolve

            try:
                resolve(model)  # fail now rather than after the server's start
            except UnknownModelError as exc:
                raise ChatError(str(exc)) from exc
        health = _start_server(client, host, port, model, console, serve_args)
    return health


def _connect(
    client: httpx.Client, host: str, port: int, model: str | None, console: Console
) -> str:
    """The model id of the server at host:port, starting one if none answers."""
    health = ensure_server(client, host, port, model, console)
    served = str(health["model"])
    if model is not None and model_id(model) != served:
        raise ChatError(
            f"The server at {client.base_url} serves {served!r}, not {model!r}; "
            f"a server serves one model. Run `hearth run {served}`, stop that server, "
            "or pick another --port."
        )
    return served


# --- the chat ---------------------------------------------------------------------------------


def _write_delta(text: str) -> None:
    click.echo(text, nl=False)  # click.echo flushes, so the answer appears as it comes


def _read_line(prompt: str) -> str:
    return input(prompt)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _error(console: Console, message: str) -> None:
    console.print(Text(message, style="bold red"), soft_wrap=True)


def _user_message(
    client: httpx.Client, model: str, text: str, console: Console, vision: list[bool | None]
) -> Message | None:
    """The user's turn, with the images the line names when the model takes them (`vision`
    holds what the server said, asked once per chat); None when an image cannot be read."""
    words, images = extract_images(text)
    if not images:
        return {"role": "user", "content": text}
    if not vision:
        vision.append(_takes_images(client, model))
    if vision[0] is False:
        console.print(
            Text(f"{model} does not take images; the paths go as text.", style="dim"),
            soft_wrap=True,
        )
        return {"role": "user", "content": text}
    try:
        parts = [_image_part(path) for path in images]
    except OSError as exc:
        _error(console, f"Cannot read the image {exc.filename}: {exc.strerror or exc}")
        return None
    for path in images:
        console.print(Text(f"Added image {path}", style="dim"), soft_wrap=True)
    if words:
        parts.append({"type": "text", "text": words})
    return {"role": "user", "content": parts}


def _chat_loop(client: httpx.Client, model: str, history: list[Message], console: Console) -> None:
    system = [m for m in history if m["role"] == "system"]
    shown: list[str] = []  # this turn's answer so far
    vision: list[bool | None] = []  # whether the model takes images, once asked

    def show(delta: str) -> None:
        shown.append(delta)
        _write_delta(delta)

    console.print(
        Text(f"Chatting with {model} at {client.base_url}. {_HELP}", style="dim"), soft_wrap=True
    )
    while True:
        try:
            line = _read_line(">>> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return
        if text == "/clear":
            history[:] = system
            console.print(Text("Cleared the conversation.", style="dim"))
            continue
        if text in ("/?", "/help"):
            console.print(Text(_HELP, style="dim"))
            continue
        message = _user_message(client, model, text, console, vision)
        if message is None:
            continue
        history.append(message)
        shown.clear()
        try:
            answer = _stream_chat(client, model, history, show)
        except KeyboardInterrupt:
            # The stream is closed; keep what the user saw, so the model sees it too.
            click.echo()
            console.print(Text("(stopped)", style="dim"))
            if shown:
                history.append({"role": "assistant", "content": "".join(shown)})
            else:
                history.pop()
            continue
        except ChatError as exc:
            click.echo()
            _error(console, str(exc))
            history.pop()  # the turn failed: two user turns in a row would confuse the model
            continue
        click.echo()
        history.append({"role": "assistant", "content": answer})


@click.command(name="run")
@click.argument("model", required=False)
@server_options
@click.option("--system", "system", default=None, help="A system prompt for the conversation.")
def command(model: str | None, host: str, port: int, system: str | None) -> None:
    """Chat with MODEL in the terminal (default: whatever the server serves).

    Starts a server in the background if none answers on --host/--port. With stdin not a
    terminal, sends all of stdin as one message and prints the answer: `echo hi | hearth run`.
    """
    console = Console(stderr=True, highlight=False)
    history: list[Message] = [{"role": "system", "content": system}] if system else []
    timeout = httpx.Timeout(10.0, read=600.0)  # a busy server may queue the request a while
    with httpx.Client(
        base_url=_base_url(host, port), headers=_auth_headers(), timeout=timeout
    ) as client:
        try:
            served = _connect(client, host, port, model, console)
        except ChatError as exc:
            _error(console, str(exc))
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)

        if _interactive():
            _chat_loop(client, served, history, console)
            return

        message = sys.stdin.read()
        if not message.strip():
            _error(console, "Nothing to send: stdin was empty.")
            sys.exit(1)
        history.append({"role": "user", "content": message})
        try:
            _stream_chat(client, served, history, _write_delta)
        except ChatError as exc:
            click.echo()
            _error(console, str(exc))
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo()
            sys.exit(130)
        click.echo()
