"""A loopback stand-in for an OCI registry (Ollama's registry.ollama.ai, Docker Hub): the
distribution API a pull uses, answered as those registries answer it, on a thread of the test
process. Also builds an Ollama store on disk, as `ollama pull` leaves it.

- GET /v2/<repository>/manifests/<tag>: the manifest (Ollama's or Docker's model artifact)
- GET /v2/<repository>/blobs/<digest>: 307 to the blob host (`localhost` while the registry is
  `127.0.0.1`, as a registry redirects to its CDN), which refuses an Authorization header as a
  presigned URL does
- GET /blobstore/<digest>: the bytes, with Range support (206)
- GET /token?service=…&scope=…: an anonymous token, for repositories under `token_namespaces`,
  which answer 401 with a Bearer challenge without one (Docker Hub's flow)

Faults on demand: drop the connection after N bytes (optionally starting an outage: 503 to every
download after it), stall after N bytes until released; a manifest may name a digest its blob
does not have.
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
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.models.fake_hub import HubBlob, serving_on_loopback

OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_SYSTEM = "application/vnd.ollama.image.system"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
OLLAMA_LICENSE = "application/vnd.ollama.image.license"
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"
DOCKER_GGUF = "application/vnd.docker.ai.gguf.v3"
DOCKER_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
DOCKER_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
DOCKER_LICENSE = "application/vnd.docker.ai.license"
GO_TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
_CHUNK = 1 << 20


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass
class Download:
    digest: str
    range_start: int
    status: int


@dataclass
class FakeRegistry:
    port: int = 0
    manifests: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, HubBlob] = field(default_factory=dict)
    token_namespaces: tuple[str, ...] = ("ai/",)
    drop_after: int | None = None
    outage_after_drop: bool = False
    outage: bool = False
    stall_after: int | None = None
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    downloads: list[Download] = field(default_factory=list)
    tokens_issued: list[str] = field(default_factory=list)
    authorized_on_blob_host: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _layer(self, media_type: str, blob: HubBlob, digest: str | None = None) -> dict[str, Any]:
        digest = digest or f"sha256:{blob.sha256}"
        self.blobs[digest] = blob
        return {"mediaType": media_type, "digest": digest, "size": blob.size}

    def _text(self, media_type: str, text: str) -> dict[str, Any]:
        return self._layer(media_type, HubBlob(data=text.encode()))

    def add_ollama_model(
        self,
        repository: str,
        tag: str,
        gguf: Path,
        *,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        license: str | None = None,
        wrong_digest: bool = False,
        declared_size: int | None = None,
        projector: Path | None = None,
    ) -> str:
        """An Ollama-style model; returns its GGUF layer's digest (the one the manifest names).
        `wrong_digest` and `declared_size` make the manifest lie about the GGUF; `projector`
        adds a LLaVA-style projector layer."""
        blob = HubBlob(path=gguf)
        digest = digest_of(b"not the model") if wrong_digest else None
        layers = [self._layer(OLLAMA_MODEL, blob, digest)]
        if declared_size is not None:
            layers[0]["size"] = declared_size
        if projector is not None:
            layers.append(self._layer(OLLAMA_PROJECTOR, HubBlob(path=projector)))
        layers.append(self._text(OLLAMA_TEMPLATE, GO_TEMPLATE))
        if system is not None:
            layers.append(self._text(OLLAMA_SYSTEM, system))
        if params is not None:
            layers.append(self._text(OLLAMA_PARAMS, json.dumps(params)))
        if license is not None:
            layers.append(self._text(OLLAMA_LICENSE, license))
        config = self._text(
            "application/vnd.docker.container.image.v1+json", '{"model_format":"gguf"}'
        )
        self.manifests[(repository, tag)] = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config,
            "layers": layers,
        }
        return str(layers[0]["digest"])

    def add_docker_model(
        self,
        repository: str,
        tag: str,
        gguf: Path,
        *,
        context_size: int | None = None,
        template: str | None = None,
        license: str | None = None,
    ) -> str:
        """A model artifact as Docker Model Runner publishes it."""
        layers = [self._layer(DOCKER_GGUF, HubBlob(path=gguf))]
        if template is not None:
            layers.append(self._text(DOCKER_TEMPLATE, template))
        if license is not None:
            layers.append(self._text(DOCKER_LICENSE, license))
        described: dict[str, Any] = {"format": "gguf", "quantization": "F32"}
        if context_size is not None:
            described["context_size"] = context_size
        config = self._text(DOCKER_CONFIG, json.dumps({"config": described}))
        self.manifests[(repository, tag)] = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        }
        return str(layers[0]["digest"])

    def downloads_of(self, digest: str) -> list[Download]:
        return [d for d in self.downloads if d.digest == digest]


def _handler(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/token":
                scope = parse_qs(query).get("scope", [""])[0]
                token = f"token-{len(registry.tokens_issued)}"
                registry.tokens_issued.append(scope)
                body = json.dumps({"token": token, "access_token": token}).encode()
                return self._send(200, body, {"Content-Type": "application/json"})
            if match := re.fullmatch(r"/blobstore/(sha256:[0-9a-f]{64})", path):
                return self._blob(match.group(1))
            match = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
            if match is None:
                return self._error(404, "NAME_UNKNOWN")
            repository, kind, reference = match.groups()
            if not self._authorized(repository):
                return
            if kind == "manifests":
                manifest = registry.manifests.get((repository, reference))
                if manifest is None:
                    return self._error(404, "MANIFEST_UNKNOWN")
                body = json.dumps(manifest).encode()
                return self._send(200, body, {"Content-Type": str(manifest["mediaType"])})
            if reference not in registry.blobs:
                return self._error(404, "BLOB_UNKNOWN")
            location = f"http://localhost:{registry.port}/blobstore/{reference}"
            self._send(307, b"", {"Location": location})

        def _authorized(self, repository: str) -> bool:
            if not repository.startswith(registry.token_namespaces):
                return True
            if self.headers.get("Authorization", "").startswith("Bearer token-"):
                return True
            challenge = (
                f'Bearer realm="{registry.url}/token",service="fake-registry",'
                f'scope="repository:{repository}:pull"'
            )
            self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})
            return False

        def _blob(self, digest: str) -> None:
            if self.headers.get("Authorization"):
                # A presigned blob URL refuses credentials meant for the registry.
                registry.authorized_on_blob_host.append(digest)
                return self._error(400, "UNEXPECTED_AUTHORIZATION")
            blob = registry.blobs.get(digest)
            if blob is None:
                return self._error(404, "BLOB_UNKNOWN")
            start = 0
            if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(match.group(1))
            if registry.outage:
                registry.downloads.append(Download(digest, start, 503))
                return self._send(503, b"Service Unavailable")
            size = blob.size
            if start >= size:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206 if start else 200
            registry.downloads.append(Download(digest, start, status))
            self.send_response(status)
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            limit, stall = registry.drop_after, registry.stall_after
            if size > _CHUNK:  # the small layers never take a fault meant for the model
                registry.drop_after = registry.stall_after = None
            else:
                limit = stall = None
            sent = 0
            try:
                for block in blob.chunks(start):
                    cut = limit if limit is not None else stall
                    if cut is not None and sent + len(block) >= cut:
                        self.wfile.write(block[: cut - sent])
                        self.wfile.flush()
                        if stall is not None:
                            registry.stalled.set()
                            registry.release.wait(60)
                            self.wfile.write(block[cut - sent :])
                            stall = None
                            sent += len(block)
                            continue
                        registry.outage = registry.outage_after_drop
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
def running_registry(registry: FakeRegistry) -> Iterator[FakeRegistry]:
    with serving_on_loopback(_handler(registry), registry.release, "fake-registry") as port:
        registry.port = port
        yield registry


def ollama_store(
    root: Path,
    name: str,
    tag: str,
    gguf: Path,
    *,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    namespace: str = "library",
    projector: Path | None = None,
) -> Path:
    """Lay `gguf` out in an Ollama store at `root` as `ollama pull` does (the blob a hard link,
    or a copy across file systems); returns the blob's path."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes | None, source: Path | None = None) -> dict[str, Any]:
        content = data if data is not None else source.read_bytes()  # type: ignore[union-attr]
        digest = digest_of(content)
        path = blobs / digest.replace(":", "-")
        if not path.exists():
            path.write_bytes(content)
        return {"digest": digest, "size": len(content)}

    layers = [{"mediaType": OLLAMA_MODEL, **blob(None, gguf)}]
    if projector is not None:
        layers.append({"mediaType": OLLAMA_PROJECTOR, **blob(None, projector)})
    layers.append({"mediaType": OLLAMA_TEMPLATE, **blob(GO_TEMPLATE.encode())})
    if system is not None:
        layers.append({"mediaType": OLLAMA_SYSTEM, **blob(system.encode())})
    if params is not None:
        layers.append({"mediaType": OLLAMA_PARAMS, **blob(json.dumps(params).encode())})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            **blob(b'{"model_format":"gguf"}'),
        },
        "layers": layers,
    }
    folder = root / "manifests" / "registry.ollama.ai" / namespace / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / tag).write_text(json.dumps(manifest))
    return blobs / str(layers[0]["digest"]).replace(":", "-")
