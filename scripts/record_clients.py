"""A loopback recording proxy: what real clients (Claude Code, Codex) send, and what Hearth says.

Each request is forwarded to a running `hearth serve` and its answer streamed back unchanged;
the request (method, path, headers, JSON body) and the answer's status and first bytes are
written to one JSON file per request under --out. Secrets are scrubbed on the way to disk:
authorization and API-key headers are replaced, the rest (anthropic-beta, anthropic-version,
user-agent, content-type) is kept, since those are what a server must accept.

    python scripts/record_clients.py --upstream http://127.0.0.1:8642 --port 8650 --out rec/

--strip FIELD (repeatable; `tools[].defer_loading` names a field of each tool, `**.minimum`
a key at any depth, `tools[name=Workflow]` or
`tools[type=web_search]` the tools that match) removes a field
before forwarding, never from the recording: it shows what a client sends after a request that
Hearth refuses today, so one run records the whole first turn.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import itertools
import json
import re
import socketserver
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

SECRET_HEADERS = {"authorization", "x-api-key", "proxy-authorization", "cookie"}
# Dropped from recordings: they describe this one connection, not the client.
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}
ANSWER_PREVIEW_BYTES = 4000

_counter = itertools.count(1)
_lock = threading.Lock()


def scrub_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in HOP_HEADERS:
            continue
        kept[key] = "<scrubbed>" if key in SECRET_HEADERS else value
    return kept


# Persistent machine identifiers (not secrets, but not ours to publish), wherever they appear,
# including inside JSON-encoded strings such as Claude Code's metadata.user_id.
_IDENTIFIER = re.compile(
    r'((?:\\?"|\b)(?:device_id|installation_id|x-codex-installation-id)\\?"\s*:\s*\\?")[^"\\]+'
)


def scrub_identifiers(text: str) -> str:
    return _IDENTIFIER.sub(r"\1<scrubbed>", text)


def save(path: Path, record: dict[str, Any]) -> None:
    path.write_text(scrub_identifiers(json.dumps(record, indent=2, ensure_ascii=False)) + "\n")


def decode_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"_raw": raw.decode("utf-8", "replace")}


def _strip_everywhere(value: Any, key: str) -> bool:
    found = False
    if isinstance(value, dict):
        found = value.pop(key, None) is not None
        for child in value.values():
            found = _strip_everywhere(child, key) or found
    elif isinstance(value, list):
        for child in value:
            found = _strip_everywhere(child, key) or found
    return found


def strip_fields(body: Any, fields: list[str]) -> tuple[Any, list[str]]:
    """The body without the named fields, and those it had."""
    if not isinstance(body, dict) or not fields:
        return body, []
    body = json.loads(json.dumps(body))
    removed: list[str] = []
    for field in fields:
        if field.startswith("**."):
            if _strip_everywhere(body, field[3:]):
                removed.append(field)
        elif field.startswith("tools[") and "=" in field:
            key, value = field.removeprefix("tools[").removesuffix("]").split("=", 1)
            tools = body.get("tools") or []
            kept = [t for t in tools if not (isinstance(t, dict) and t.get(key) == value)]
            if len(kept) != len(tools):
                body["tools"] = kept
                removed.append(field)
        elif "[]." in field:
            parent, child = field.split("[].", 1)
            for item in body.get(parent) or ():
                if isinstance(item, dict) and child in item:
                    del item[child]
                    if field not in removed:
                        removed.append(field)
        elif field in body:
            del body[field]
            removed.append(field)
    return body, removed


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: urllib.parse.SplitResult
    out_dir: Path
    strip: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("proxy: " + format % args + "\n")

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        with _lock:
            number = next(_counter)
        record: dict[str, Any] = {
            "method": self.command,
            "path": self.path,
            "headers": scrub_headers(list(self.headers.items())),
            "body": decode_body(raw),
        }
        forwarded_body, stripped = strip_fields(record["body"], self.strip)
        if stripped:
            record["stripped_before_forwarding"] = stripped
            raw = json.dumps(forwarded_body).encode()
        route = self.path.split("?")[0].strip("/").replace("/", "_")
        path = self.out_dir / f"{number:03d}-{self.command}-{route}.json"
        # Written now and with the answer: a client killed mid-stream still leaves its request.
        save(path, record)
        started = time.monotonic()
        connection = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port or 80, timeout=600
        )
        forward = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        forward["Content-Length"] = str(len(raw))
        preview = bytearray()
        try:
            connection.request(self.command, self.path, body=raw, headers=forward)
            answer = connection.getresponse()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_HEADERS:
                    self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := answer.read1(65536):
                if len(preview) < ANSWER_PREVIEW_BYTES:
                    preview += chunk[: ANSWER_PREVIEW_BYTES - len(preview)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            record["answer"] = {
                "status": answer.status,
                "content_type": answer.getheader("content-type"),
                "seconds": round(time.monotonic() - started, 3),
                "preview": preview.decode("utf-8", "replace"),
            }
        except (OSError, http.client.HTTPException) as exc:
            record["answer"] = {"error": repr(exc)}
        finally:
            connection.close()
            save(path, record)
            status = record["answer"].get("status", "error")
            sys.stderr.write(f"proxy: {self.command} {self.path} -> {status} ({path.name})\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default="http://127.0.0.1:8642", help="Hearth's base URL")
    parser.add_argument("--port", type=int, default=8650, help="the proxy's loopback port")
    parser.add_argument("--out", type=Path, required=True, help="folder for the recordings")
    parser.add_argument("--strip", action="append", default=[], help="a field not to forward")
    args = parser.parse_args()
    RecordingHandler.strip = args.strip
    args.out.mkdir(parents=True, exist_ok=True)
    RecordingHandler.upstream = urllib.parse.urlsplit(args.upstream)
    RecordingHandler.out_dir = args.out
    server = _Server(("127.0.0.1", args.port), RecordingHandler)
    sys.stderr.write(f"proxy: 127.0.0.1:{args.port} -> {args.upstream}, recording to {args.out}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
