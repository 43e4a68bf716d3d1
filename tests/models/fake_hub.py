"""A loopback stand-in for the Hugging Face hub: exactly the endpoints huggingface_hub uses for
a pull, answered as the hub answers them, on a thread of the test process.

- GET  /api/models/{org}/{repo}[/revision/{rev}]?blobs=true: the repo's files, LFS sha256 and size
- HEAD /{org}/{repo}/resolve/{rev}/{file}: 302 to the "CDN" with X-Repo-Commit, ETag,
  X-Linked-Etag (the LFS sha256) and X-Linked-Size, as the hub does for an LFS file
- GET  /{org}/{repo}/resolve/{rev}/{file}: the same 302
- GET  /cdn/{sha256}: the bytes, with Range support (206), on another host name (`localhost`,
  while the hub is `127.0.0.1`), so huggingface_hub stops its HEAD at the redirect as it does
  for the real CDN

Faults on demand: drop the connection after N bytes, stall after N bytes until released, or
answer 503 to every download (an outage).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

COMMIT = "0" * 8 + "c0ffee" * 5 + "00"  # 40 hex digits
_CHUNK = 1 << 20


@dataclass
class HubBlob:
    """One file of a repo: bytes in memory or a file on disk."""

    data: bytes | None = None
    path: Path | None = None
    lfs: bool = True
    # The sha256 the hub advertises; a wrong one makes the download "corrupted".
    advertised_sha256: str | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    @property
    def sha256(self) -> str:
        if self.advertised_sha256 is None:
            self.advertised_sha256 = hashlib.sha256(self.read()).hexdigest()
        return self.advertised_sha256

    def chunks(self, start: int) -> Iterator[bytes]:
        if self.data is not None:
            for offset in range(start, len(self.data), _CHUNK):
                yield self.data[offset : offset + _CHUNK]
            return
        assert self.path is not None
        with self.path.open("rb") as file:
            file.seek(start)
            while block := file.read(_CHUNK):
                yield block


@dataclass
class Download:
    path: str
    range_start: int
    status: int


@dataclass
class FakeHub:
    repos: dict[str, dict[str, HubBlob]] = field(default_factory=dict)
    port: int = 0
    # Faults, each consumed by the next download it applies to.
    drop_after: int | None = None  # send this many bytes of the next download, then hang up
    stall_after: int | None = None  # send this many bytes, then wait for `release`
    outage: bool = False  # answer 503 to every download
    outage_after_drop: bool = False  # the dropped connection starts an outage
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    downloads: list[Download] = field(default_factory=list)
    api_calls: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blob_by_sha(self, sha: str) -> HubBlob | None:
        for files in self.repos.values():
            for blob in files.values():
                if blob.lfs and blob.sha256 == sha:
                    return blob
        return None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _repo_not_found(self) -> None:
            # What the hub sends for a missing (or private) repo.
            self._json(
                401,
                {"error": "Repository not found"},
                {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )

        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def _route(self) -> None:
            path = self.path.split("?", 1)[0]
            if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
                hub.api_calls.append(self.path)
                self._model_info(match.group(1))
            elif match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                self._resolve(match.group(1), match.group(3))
            elif match := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
                self._content(match.group(1))
            else:
                self._json(404, {"error": "not found"})

        def _model_info(self, repo_id: str) -> None:
            files = hub.repos.get(repo_id)
            if files is None:
                return self._repo_not_found()
            siblings = []
            for name, blob in sorted(files.items()):
                sibling: dict[str, Any] = {"rfilename": name, "size": blob.size, "blobId": "b" * 40}
                if blob.lfs:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": 135}
                siblings.append(sibling)
            self._json(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": COMMIT,
                    "private": False,
                    "siblings": siblings,
                },
            )

        def _resolve(self, repo_id: str, filename: str) -> None:
            files = hub.repos.get(repo_id)
            if files is None:
                return self._repo_not_found()
            blob = files.get(filename)
            if blob is None:
                return self._json(
                    404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
                )
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{"b" * 40}"'}
            if not blob.lfs:
                return self._send(
                    200,
                    blob.read() if self.command == "GET" else b"",
                    {**headers, "ETag": f'"{blob.sha256}"'},
                )
            headers |= {
                "X-Linked-Etag": f'"{blob.sha256}"',
                "X-Linked-Size": str(blob.size),
                "Location": f"http://localhost:{hub.port}/cdn/{blob.sha256}",
            }
            self._send(302, b"", headers)

        def _content(self, sha: str) -> None:
            blob = hub.blob_by_sha(sha)
            if blob is None:
                return self._json(404, {"error": "no such blob"})
            start = 0
            if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(match.group(1))
            if hub.outage:
                hub.downloads.append(Download(self.path, start, 503))
                return self._send(503, b"Service Unavailable")
            size = blob.size
            if start >= size:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206 if start else 200
            hub.downloads.append(Download(self.path, start, status))
            self.send_response(status)
            self.send_header("Content-Length", str(size - start))
            self.send_header("ETag", f'"{sha}"')
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            limit, stall = hub.drop_after, hub.stall_after
            hub.drop_after = hub.stall_after = None
            sent = 0
            try:
                for block in blob.chunks(start):
                    cut = limit if limit is not None else stall
                    if cut is not None and sent + len(block) >= cut:
                        self.wfile.write(block[: cut - sent])
                        self.wfile.flush()
                        if stall is not None:
                            hub.stalled.set()
                            hub.release.wait(60)
                        # Hang up mid-body, as a dropped connection does.
                        hub.outage = hub.outage or (limit is not None and hub.outage_after_drop)
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(block)
                    sent += len(block)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


@contextmanager
def serving_on_loopback(
    handler: type[BaseHTTPRequestHandler], release: threading.Event, name: str
) -> Iterator[int]:
    """Serve `handler` on a free loopback port (yielded) in a thread; on exit, `release` lets a
    stalled response go before the server stops."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def running_hub(hub: FakeHub) -> Iterator[FakeHub]:
    with serving_on_loopback(_handler(hub), hub.release, "fake-hub") as port:
        hub.port = port
        yield hub


def tiny_gguf(path: Path, *, seed: int, file_type: int = 15, context_length: int = 2048) -> Path:
    """A small but whole GGUF model file (one f32 tensor), distinct per seed."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(context_length)
    writer.add_file_type(file_type)
    writer.add_license("apache-2.0")
    writer.add_tensor(
        "token_embd.weight", np.random.default_rng(seed).random((16, 64), dtype=np.float32)
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
