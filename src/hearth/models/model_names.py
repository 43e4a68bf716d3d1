"""Model names in the OCI form Ollama and Docker use: `[host/][namespace/]name[:tag]`.

A bare name is Ollama's library: `qwen3:0.6b` is `registry.ollama.ai/library/qwen3:0.6b`. The
first part is a host when it has a dot or a port, or is `localhost` (as Docker decides):
`docker.io/ai/smollm2` is Docker Hub's `ai/smollm2`. The tag defaults to `latest`.

Where each host is reached: `https://<host>`, except Docker Hub (`registry-1.docker.io`);
`HEARTH_REGISTRIES` (`host=URL,host=URL`) and `HEARTH_OLLAMA_REGISTRY` (a URL for Ollama's)
point hosts elsewhere, as HF_ENDPOINT does for the hub. The tests use them for their loopback
registry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["DOCKER_HUB", "OLLAMA_REGISTRY", "OciReference", "parse_reference", "registry_url"]

OLLAMA_REGISTRY = "registry.ollama.ai"
DOCKER_HUB = "docker.io"
_DEFAULT_URLS = {
    OLLAMA_REGISTRY: "https://registry.ollama.ai",
    DOCKER_HUB: "https://registry-1.docker.io",
}
_DOCKER_ALIASES = ("index.docker.io", "registry-1.docker.io")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d+)?")


@dataclass(frozen=True, slots=True)
class OciReference:
    host: str
    repository: str  # namespace/name, say library/qwen3 or ai/smollm2
    tag: str
    tag_given: bool

    @property
    def short_name(self) -> str:
        """The name Ollama shows: no host for its own registry, no `library/` there."""
        repository = self.repository
        if self.host == OLLAMA_REGISTRY:
            repository = repository.removeprefix("library/")
            prefix = ""
        else:
            prefix = f"{self.host}/"
        return f"{prefix}{repository}:{self.tag}"

    @property
    def full_name(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


def parse_reference(text: str) -> OciReference | None:
    """The reference `text` names, or None when it is not one (a path, a URL, junk)."""
    spec = text.strip()
    if not spec or "://" in spec or spec.endswith("/") or "//" in spec:
        return None
    parts = spec.split("/")
    host = OLLAMA_REGISTRY
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        host = parts.pop(0).lower()
        if not _HOST.fullmatch(host):
            return None
        if host in _DOCKER_ALIASES:
            host = DOCKER_HUB
    last = parts[-1]
    tag, tag_given = "latest", False
    if ":" in last:
        last, tag = last.split(":", 1)
        tag_given = True
        if not _TAG.fullmatch(tag):
            return None
    parts[-1] = last
    parts = [part.lower() for part in parts]
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        return None
    if len(parts) == 1:
        parts.insert(0, "library")
    return OciReference(host, "/".join(parts), tag, tag_given)


def registry_url(host: str) -> str:
    """The base URL the registry `host` answers at (see the module's docstring)."""
    mapping = dict(_DEFAULT_URLS)
    if ollama := os.environ.get("HEARTH_OLLAMA_REGISTRY"):
        mapping[OLLAMA_REGISTRY] = ollama
    for pair in (os.environ.get("HEARTH_REGISTRIES") or "").split(","):
        name, _, url = pair.partition("=")
        if name.strip() and url.strip():
            mapping[name.strip().lower()] = url.strip()
    return mapping.get(host, f"https://{host}").rstrip("/")
