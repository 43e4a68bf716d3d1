"""Pulls over the OCI distribution API: Ollama's library (`qwen3:0.6b`) and Docker's model
artifacts (`docker.io/ai/smollm2`), into Hearth's store.

`GET /v2/<repository>/manifests/<tag>` gives the layers; each is fetched from
`/v2/<repository>/blobs/<digest>`, following the registry's redirect to its blob host. A 401
with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` is answered with an anonymous token
from the realm, as Docker Hub asks. The GGUF layer lands in `.partial/<sha256>.part` (a dropped
connection resumes with a Range request, a later pull resumes the same file) and enters the
store only once its sha256 matches the digest; a mismatch deletes it. The small layers (system,
params, license, a Jinja template, Docker's model config) become the model's defaults
(models/defaults.py); Ollama's Go `template` layer is not kept, since Hearth renders the GGUF's
own Jinja template. Ollama's projector layer (`application/vnd.ollama.image.projector`, a
LLaVA-style model's mmproj GGUF) is pulled as the GGUF is and kept beside the model, which then
takes images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from hearth.errors import no_space
from hearth.models.defaults import ModelDefaults, check_jinja_template
from hearth.models.model_names import OciReference, registry_url
from hearth.models.pull_base import (
    HubFile,
    PullBusyError,
    PullError,
    PullNotFoundError,
    PullReporter,
    PullResult,
    PullSourceError,
    check_new_name,
    check_pulled_gguf,
    check_pulled_projector,
    staged_copy,
    staged_projector,
)
from hearth.models.store import ModelStore, file_sha256

__all__ = ["GGUF_LAYERS", "PROJECTOR_LAYER", "pull_oci", "store_name"]

logger = logging.getLogger(__name__)

_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
GGUF_LAYERS = frozenset(
    {
        "application/vnd.ollama.image.model",
        "application/vnd.docker.ai.gguf.v3",
        "application/vnd.docker.ai.model.file.v1+gguf",
    }
)
PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
_SYSTEM = "application/vnd.ollama.image.system"
_PARAMS = "application/vnd.ollama.image.params"
_LICENSES = ("application/vnd.ollama.image.license", "application/vnd.docker.ai.license")
_JINJA_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
_DOCKER_CONFIG = re.compile(r"application/vnd\.docker\.ai\.model\.config\.v[0-9.]+\+json")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_SMALL_LAYER = 4 << 20  # system, params, license, template, config: never more than this
_RETRIES = 3  # a dropped connection resumes where it stopped, this many times per pull
_CHUNK = 1 << 20
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def store_name(ref: OciReference, typed: str) -> str:
    """The store name a pull of `typed` gets: Ollama's short form (no registry.ollama.ai, no
    library/), with the tag only when one was typed."""
    name = ref.short_name
    return name if ref.tag_given else name.removesuffix(f":{ref.tag}")


class _Registry:
    """One repository on one registry, with the anonymous token it asked for, if any."""

    def __init__(self, ref: OciReference) -> None:
        self.ref = ref
        self.base = registry_url(ref.host)
        # httpx drops the Authorization header on a redirect to another host (the blob store).
        self._client = httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(30.0, read=60.0),
            headers={"User-Agent": "hearth"},
        )
        self._token: str | None = None

    def close(self) -> None:
        self._client.close()

    def _url(self, kind: str, reference: str) -> str:
        return f"{self.base}/v2/{self.ref.repository}/{kind}/{reference}"

    def _send(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        """A streamed GET; a 401 with a Bearer challenge is retried once with a token."""
        for _ in range(2):
            request_headers = dict(headers or {})
            if self._token:
                request_headers["Authorization"] = f"Bearer {self._token}"
            request = self._client.build_request("GET", url, headers=request_headers)
            response = self._client.send(request, stream=True)
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code != 401 or self._token or not challenge.startswith("Bearer"):
                return response
            response.close()
            self._token = self._anonymous_token(challenge)
        return response

    def _anonymous_token(self, challenge: str) -> str:
        fields = dict(_CHALLENGE.findall(challenge))
        realm = fields.pop("realm", None)
        if not realm:
            raise PullError(f"{self.ref.host} asks for a login Hearth cannot give: {challenge}")
        response = self._client.get(realm, params=fields)
        if response.status_code != 200:
            raise PullError(f"{self.ref.host}'s token service refused: HTTP {response.status_code}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise PullError(f"{self.ref.host}'s token service gave no token")
        return token

    def _fail(self, response: httpx.Response, what: str) -> PullError:
        response.read()
        if response.status_code in (401, 403, 404):
            return PullNotFoundError(
                f"{self.ref.host} has no {what} (HTTP {response.status_code}; a private "
                "model needs a login Hearth does not do)"
            )
        return PullError(f"{self.ref.host} refused {what}: HTTP {response.status_code}")

    def manifest(self) -> dict[str, Any]:
        accept = ", ".join((*_MANIFEST_TYPES, *_INDEX_TYPES))
        reference = self.ref.tag
        for _ in range(2):  # an index, then the manifest it lists
            with contextlib.closing(
                self._send(self._url("manifests", reference), {"Accept": accept})
            ) as response:
                if response.status_code != 200:
                    raise self._fail(response, f"model {self.ref.repository}:{self.ref.tag}")
                try:
                    data = json.loads(response.read())
                except ValueError as exc:
                    raise PullError(f"{self.ref.host} sent a manifest that is not JSON") from exc
            if not isinstance(data, dict):
                raise PullError(f"{self.ref.host} sent a manifest that is not an object")
            listed = data.get("manifests")
            if not isinstance(listed, list) or not listed:
                return data
            reference = str(listed[0].get("digest", ""))
        raise PullError(f"{self.ref.host} sent an index of indexes")

    def small_blob(self, layer: dict[str, Any]) -> bytes:
        digest = str(layer.get("digest", ""))
        if int(layer.get("size") or 0) > _SMALL_LAYER:
            raise PullError(f"the layer {digest} is too big for its kind")
        with contextlib.closing(self._send(self._url("blobs", digest))) as response:
            if response.status_code != 200:
                raise self._fail(response, f"layer {digest}")
            data: bytes = response.read()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise PullError(f"the layer {digest} arrived corrupted; pull again")
        return data

    def download(self, digest: str, file: BinaryIO, size: int, reporter: PullReporter) -> None:
        """Append the rest of the blob to `file`, which holds what earlier pulls got."""
        drops = 0
        while True:
            start = file.tell()
            if start > size:
                file.seek(0)
                file.truncate(0)
                start = 0
            if start == size:
                return
            if start:
                reporter.note(f"Resuming {digest} from byte {start}.")
            headers = {"Range": f"bytes={start}-"} if start else {}
            reporter.start_transfer(digest, size, start)
            try:
                with contextlib.closing(
                    self._send(self._url("blobs", digest), headers)
                ) as response:
                    if response.status_code == 200 and start:  # the Range was ignored
                        file.seek(0)
                        file.truncate(0)
                        reporter.advance(-start)
                    elif response.status_code not in (200, 206):
                        error = self._fail(response, f"layer {digest}")
                        # What arrived stays in .partial/ for the next pull.
                        raise type(error)(f"{error} (pull again to resume the download)")
                    for chunk in response.iter_bytes(_CHUNK):
                        file.write(chunk)
                        reporter.advance(len(chunk))
                file.flush()
                os.fsync(file.fileno())
            except httpx.TransportError as exc:
                file.flush()
                drops += 1
                if drops > _RETRIES:
                    raise PullError(
                        f"cannot reach {self.ref.host}: {exc or type(exc).__name__} "
                        "(pull again to resume the download)"
                    ) from exc
                logger.info("The download of %s stopped (%s); resuming", digest, exc)
                continue
            except OSError as exc:
                if not no_space(exc):
                    raise PullError(f"could not write {file.name}: {exc}") from exc
                raise PullError(
                    f"out of disk space writing {digest} to {Path(file.name).parent}: "
                    f"{exc.strerror or exc}; free some space, then pull again to resume"
                ) from exc
            finally:
                reporter.end_transfer()
            if file.tell() == size:
                return
            # A body cut short, or longer than the layer, without a transport error: retried as
            # a drop, then refused (a longer file is discarded at the top of the loop).
            drops += 1
            if drops > _RETRIES:
                raise PullError(
                    f"{self.ref.host} sent {file.tell()} bytes of {digest}, whose size is {size} "
                    "(pull again to resume the download)"
                )


def _layers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise PullError("the registry's manifest has no layers")
    return [layer for layer in layers if isinstance(layer, dict)]


def _text(registry: _Registry, layer: dict[str, Any] | None) -> str | None:
    return None if layer is None else registry.small_blob(layer).decode("utf-8", "replace")


def _defaults(
    registry: _Registry,
    manifest: dict[str, Any],
    layers: list[dict[str, Any]],
    reporter: PullReporter,
) -> ModelDefaults:
    by_type: dict[str, dict[str, Any]] = {}
    for layer in layers:
        by_type.setdefault(str(layer.get("mediaType", "")), layer)
    params: dict[str, Any] = {}
    if raw := _text(registry, by_type.get(_PARAMS)):
        try:
            loaded = json.loads(raw)
            params = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            reporter.note("The params layer is not JSON; left out.")
    config = manifest.get("config")
    if isinstance(config, dict) and _DOCKER_CONFIG.fullmatch(str(config.get("mediaType", ""))):
        try:
            described = json.loads(registry.small_blob(config)).get("config", {})
            context = described.get("context_size") if isinstance(described, dict) else None
            if isinstance(context, int) and context > 0:
                params.setdefault("num_ctx", context)
        except (ValueError, AttributeError):
            reporter.note("The model config is not JSON; left out.")
    template = _text(registry, by_type.get(_JINJA_TEMPLATE))
    if template is not None:
        try:
            check_jinja_template(template)
        except ValueError as exc:
            reporter.note(f"The chat template layer is left out: {exc}.")
            template = None
    license_layer = next((by_type[t] for t in _LICENSES if t in by_type), None)
    return ModelDefaults(
        system=_text(registry, by_type.get(_SYSTEM)),
        params=params,
        template=template,
        license=_text(registry, license_layer),
    )


def _blob_of(ref: OciReference, layer: dict[str, Any], what: str) -> HubFile:
    """The layer as a file to fetch: its digest, size and sha256."""
    digest, size = str(layer.get("digest", "")), layer.get("size")
    match = _DIGEST.fullmatch(digest)
    if match is None or not isinstance(size, int) or size <= 0:
        raise PullError(f"{ref.full_name}'s {what} layer has no usable sha256 digest and size")
    return HubFile(digest, size, match.group(1))


def pull_oci(
    models: ModelStore, ref: OciReference, typed: str, name: str | None, reporter: PullReporter
) -> PullResult:
    """Pull the model `ref` (typed by the user as `typed`) into the store as `name`."""
    name = check_new_name(name or store_name(ref, typed))
    registry = _Registry(ref)
    try:
        try:
            manifest = registry.manifest()
        except httpx.TransportError as exc:
            raise PullError(f"cannot reach {ref.host} at {registry.base}: {exc}") from exc
        layers = _layers(manifest)
        ggufs = [layer for layer in layers if layer.get("mediaType") in GGUF_LAYERS]
        if not ggufs:
            raise PullSourceError(f"{ref.full_name} has no GGUF layer: not a model Hearth serves")
        if len(ggufs) > 1:
            raise PullSourceError(f"{ref.full_name} is a split GGUF; those are not supported")
        model = _blob_of(ref, ggufs[0], "GGUF")
        reporter.resolved(model)
        # Ollama writes one projector layer at most; a second would be a model Hearth can't serve.
        projectors = [layer for layer in layers if layer.get("mediaType") == PROJECTOR_LAYER]
        if len(projectors) > 1:
            raise PullSourceError(f"{ref.full_name} has several projectors; not supported")
        projector = _blob_of(ref, projectors[0], "projector") if projectors else None
        if projector is not None:
            reporter.note(f"With its vision projector, {projector.filename}.")
        try:
            defaults = _defaults(registry, manifest, layers, reporter)
        except httpx.TransportError as exc:
            raise PullError(f"cannot reach {ref.host}: {exc}") from exc
        existing = models.get(name)
        model_current = existing is not None and existing.sha256 == model.sha256
        projector_sha256 = projector.sha256 if projector is not None else None
        if existing is not None and model_current and existing.mmproj_sha256 == projector_sha256:
            return PullResult(existing, up_to_date=True)
        source = f"{ref.host}/{ref.repository}:{ref.tag}"
        with ExitStack() as held:
            # What the store has already is linked, not downloaded again.
            if existing is not None and model_current:
                staged = staged_copy(models, existing.path, held)
            else:
                staged = _fetch_blob(models, registry, model, reporter, held, check_pulled_gguf)
            mmproj = None
            if projector is not None:
                layer = projector
                mmproj = staged_projector(
                    models,
                    existing,
                    layer,
                    reporter,
                    held,
                    lambda: _fetch_blob(
                        models, registry, layer, reporter, held, check_pulled_projector
                    ),
                    f"{source} {layer.filename}",
                )
            assert model.sha256 is not None
            stored = models.install(
                name, staged, source=source, sha256=model.sha256, defaults=defaults, mmproj=mmproj
            )
        return PullResult(stored, up_to_date=False)
    finally:
        registry.close()


def _fetch_blob(
    models: ModelStore,
    registry: _Registry,
    blob: HubFile,
    reporter: PullReporter,
    held: ExitStack,
    check: Callable[[Path, str], None],
) -> Path:
    """`.partial/<sha256>.part`, downloaded (resumed) whole and checked: its sha256, then
    `check`. Its lock is held until `held` closes, after the install."""
    ref = registry.ref
    assert blob.sha256 is not None and blob.size is not None
    digest = blob.filename
    partial = models.staging_dir / f"{blob.sha256}.part"
    file = held.enter_context(partial.open("ab"))
    try:
        # One pull per blob at a time until it is installed; released however we end.
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise PullBusyError(f"another pull is downloading {digest}") from exc
    registry.download(digest, file, blob.size, reporter)
    reporter.verifying()
    actual = file_sha256(partial)
    if actual != blob.sha256:
        partial.unlink(missing_ok=True)
        raise PullError(
            f"{ref.full_name}'s layer {digest} arrived corrupted (sha256 {actual}, the registry "
            f"says {blob.sha256}); discarded it, pull again"
        )
    try:
        check(partial, f"{ref.full_name}'s layer {digest}")
    except PullError:
        partial.unlink(missing_ok=True)
        raise
    return partial
