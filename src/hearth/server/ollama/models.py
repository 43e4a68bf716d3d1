"""Ollama's POST /api/pull, POST /api/copy, DELETE /api/delete, POST /api/create and
/api/blobs/:digest over Hearth's model store.

A pull is `hearth pull`'s own machinery (`models/pull.py`: the Hugging Face hub through
huggingface_hub, or an OCI registry, Ollama's library or Docker Hub; resumable, sha256-checked)
run on a thread of its own, since it blocks for as long as the download lasts. Its reporter
hands each event to the event loop with `call_soon_threadsafe`; the route turns them into
Ollama's progress lines. The reply waits for the file to be found before its headers go out,
so an unknown repo is a real 404 and a bad name a 400, as with /api/chat.

Requests pulling the same name share one job: a second client joins the download under way,
sees its progress from where it is, and gets the model with the first. The download stops at
its next chunk once every client has left; what arrived stays in `.partial/`, and the next pull
of the file resumes from it.

A copy is `hearth cp`'s (`registry.copy_model`), under a name no request uses yet.

A create is `hearth create`'s (models/create.py): everything is checked before the reply starts,
then the link (or the quantization) runs on a thread of its own, its steps streamed as
Ollama's progress lines. A blob is a GGUF kept in `.partial/blobs/` for a create's `files`, once
its sha256 matches its digest.

A delete is `hearth rm`'s: `registry.removable` decides what may go, and a model this server
has loaded is unloaded first when idle, refused while requests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from hearth.errors import (
    ConflictError,
    HearthError,
    InsufficientStorageError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    UnsupportedParameterError,
    UpstreamError,
)
from hearth.models import create, registry
from hearth.models.model_names import OciReference
from hearth.models.pull import (
    HubFile,
    HubSource,
    PullBusyError,
    PullError,
    PullNotFoundError,
    PullReporter,
    PullResult,
    PullSourceError,
    no_space,
    parse_source,
    pull,
)
from hearth.models.store import InvalidModelNameError, check_model_name
from hearth.protocol import ollama as wire
from hearth.server.core.turns import until_disconnect
from hearth.server.state import ServerState

__all__ = [
    "PullJob",
    "blob_exists",
    "copy_model",
    "delete_model",
    "receive_blob",
    "serve_create",
    "serve_pull",
]

logger = logging.getLogger(__name__)

_NDJSON = "application/x-ndjson"


# -- events from the pull's thread -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resolved:
    digest: str
    total: int | None


@dataclass(frozen=True, slots=True)
class _Progress:
    completed: int
    total: int | None


@dataclass(frozen=True, slots=True)
class _Verifying:
    pass


@dataclass(frozen=True, slots=True)
class _Done:
    result: PullResult


@dataclass(frozen=True, slots=True)
class _Failed:
    error: HearthError


_Event = _Resolved | _Progress | _Verifying | _Done | _Failed


class _PullCancelled(Exception):
    """Raised on the pull's thread, at its next chunk, once the client left (or the server is
    stopping). Not an OSError, so huggingface_hub does not retry it: the download stops, and the
    bytes written so far stay for the next pull to resume."""


def _http_error(exc: Exception) -> HearthError:
    if isinstance(exc, PullSourceError):
        return InvalidRequestError(str(exc), param="model")
    if isinstance(exc, PullNotFoundError):
        return NotFoundError(str(exc), param="model")
    if isinstance(exc, PullBusyError):
        return ConflictError(str(exc))
    if isinstance(exc, PullError):
        return UpstreamError(str(exc))
    logger.error("The pull failed", exc_info=exc)
    return HearthError(f"The pull failed: {exc}")


Subscriber = asyncio.Queue[_Event]


class PullJob(PullReporter):
    """One pull on its own thread, shared by every request for the same name; each request
    subscribes and reads its events from `next()` on the event loop.

    The thread is a daemon: a download still blocked on the network never holds up the
    server's exit (asyncio's default executor would wait for it)."""

    def __init__(self, source: str, name: str | None) -> None:
        self.source = source
        self.key = source.lower()
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._subscribers: list[Subscriber] = []
        # What a request that joins late is told first: the file, where the download is.
        self._resolved: _Resolved | None = None
        self._latest: _Progress | _Verifying | None = None
        self.outcome: _Done | _Failed | None = None
        self._cancelled = threading.Event()
        self._completed = 0
        self._total: int | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="hearth-pull", daemon=True).start()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def abort(self, error: HearthError) -> None:
        """End the pull with `error` (the server is stopping). On the event loop."""
        self.cancel()
        self._publish(_Failed(error))

    def subscribe(self) -> Subscriber:
        """A queue of this pull's events from now on, after the state it is in. On the loop."""
        queue: Subscriber = asyncio.Queue()
        for event in (self._resolved, self._latest, self.outcome):
            if event is not None:
                queue.put_nowait(event)
        self._subscribers.append(queue)
        return queue

    def leave(self, queue: Subscriber) -> bool:
        """Unsubscribe; True when no request follows the pull any more (it is then cancelled,
        a no-op once it ended)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)
        if self._subscribers:
            return False
        self.cancel()
        return True

    def _publish(self, event: _Event) -> None:
        if self.outcome is not None:
            return
        if isinstance(event, _Resolved):
            self._resolved = event
        elif isinstance(event, _Progress | _Verifying):
            self._latest = event
        else:
            self.outcome = event
        for queue in self._subscribers:
            queue.put_nowait(event)

    @staticmethod
    async def next(queue: Subscriber) -> _Event:
        """The next event; a run of progress events comes out as the latest one."""
        event = await queue.get()
        while isinstance(event, _Progress) and not queue.empty():
            event = queue.get_nowait()
        return event

    # -- on the pull's thread ------------------------------------------------------------------

    def _run(self) -> None:
        event: _Event
        try:
            event = _Done(pull(self.source, name=self._name, reporter=self))
        except _PullCancelled:
            logger.info(
                "Stopped pulling %s: its client left (or the server is stopping); the next "
                "pull resumes it",
                self.source,
            )
            return
        except Exception as exc:
            event = _Failed(_http_error(exc))
        self._post(event)

    def _post(self, event: _Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self._loop.call_soon_threadsafe(self._publish, event)

    def _check(self) -> None:
        if self._cancelled.is_set():
            raise _PullCancelled

    def note(self, message: str) -> None:
        logger.info("Pulling %s: %s", self.source, message)

    def resolved(self, file: HubFile) -> None:
        self._check()
        self._total = file.size
        self._post(_Resolved(f"sha256:{file.sha256}", file.size))

    def start_transfer(self, description: str, total: int | None, completed: int) -> None:
        self._check()
        self._total = total if total is not None else self._total
        self._completed = completed
        self._post(_Progress(self._completed, self._total))

    def advance(self, size: int) -> None:
        self._check()
        self._completed += size
        self._post(_Progress(self._completed, self._total))

    def verifying(self) -> None:
        self._post(_Verifying())


# -- POST /api/pull ----------------------------------------------------------------------------


def _remote_source(model: str) -> HubSource | OciReference:
    """The hub or a registry, never a path: that would let a client make the server read its
    own files."""
    try:
        source = parse_source(model) if model.strip() else None
    except PullError:
        source = None
    if not isinstance(source, HubSource | OciReference):
        raise InvalidRequestError(
            f"Cannot pull {model!r}: Hearth pulls GGUF models from the Hugging Face hub "
            "(hf.co/ORG/REPO[:QUANT], hf.co/ORG/REPO/FILE.gguf) and from OCI registries "
            "(Ollama's names like qwen3:0.6b, or HOST/NAMESPACE/NAME[:TAG]).",
            param="model",
        )
    return source


def _store_name(model: str, source: HubSource | OciReference) -> str | None:
    """The name the model is stored under: the one the client pulled, which it will then use
    (as Ollama does); for a file (`…/FILE.gguf`) or a URL, hf.co/ORG/REPO:QUANT as
    `hearth pull` names it."""
    if isinstance(source, HubSource) and source.filename is not None:
        return None
    try:
        return check_model_name(model.strip())
    except InvalidModelNameError:
        return None


def _served(state: ServerState, model: str) -> bool:
    """Whether a request may already name `model` (`NAME` being `NAME:latest`). Blocking: reads
    the store's manifests."""
    state.catalog.index.refresh()
    names = {name.lower() for name in state.catalog.names()}
    tagged = registry.with_default_tag(model.strip())
    return model.strip().lower() in names or (tagged is not None and tagged.lower() in names)


def _line(
    status: str, digest: str | None = None, total: int | None = None, completed: int | None = None
) -> bytes:
    line = wire.ProgressResponse(status=status, digest=digest, total=total, completed=completed)
    return line.model_dump_json(exclude_none=True).encode() + b"\n"


async def serve_pull(state: ServerState, req: wire.PullRequest, http_request: Request) -> Response:
    if req.insecure:
        raise UnsupportedParameterError(
            "'insecure' is not supported: Hearth pulls over HTTPS (HF_ENDPOINT and "
            "HEARTH_REGISTRIES say where each host is).",
            param="insecure",
        )
    if await asyncio.to_thread(_served, state, req.model):
        return _success(req.stream)  # bundled, pulled before, or an alias: nothing to fetch
    source = _remote_source(req.model)
    job = _join(state, req.model.strip(), _store_name(req.model, source))
    queue = job.subscribe()
    try:
        # Wait until the source has named the file (or refused): errors are then real statuses.
        first = await until_disconnect(http_request, job.next(queue))
        if isinstance(first, _Failed):
            raise first.error
        if not req.stream:
            _log_pulled(await until_disconnect(http_request, _outcome(job, queue, first)))
            return _success(stream=False)
    except BaseException:
        _end(state, job, queue)
        raise
    return _PullStream(state, job, queue, _progress(job, queue, first))


def _join(state: ServerState, source: str, name: str | None) -> PullJob:
    """The pull of `source` under way, else a new one."""
    key = source.lower()
    for job in state.pulls:
        if (
            isinstance(job, PullJob)
            and job.key == key
            and job.outcome is None
            and not job.cancelled
        ):
            logger.info("Joining the pull of %s under way", source)
            return job
    job = PullJob(source, name)
    state.pulls.add(job)
    job.start()
    return job


def _end(state: ServerState, job: PullJob, queue: Subscriber) -> None:
    if job.leave(queue):  # the last of its clients left, or it ended
        state.pulls.discard(job)


async def _outcome(job: PullJob, queue: Subscriber, first: _Event) -> PullResult:
    event = first
    while not isinstance(event, _Done):
        if isinstance(event, _Failed):
            raise event.error
        event = await job.next(queue)
    return event.result


class _PullStream(StreamingResponse):
    """The progress stream; however it ends (done, failed, the client gone), it leaves the
    pull, which stops when no client follows it any more."""

    def __init__(
        self, state: ServerState, job: PullJob, queue: Subscriber, lines: AsyncIterator[bytes]
    ) -> None:
        super().__init__(lines, media_type=_NDJSON)
        self._state = state
        self._job = job
        self._queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            _end(self._state, self._job, self._queue)


def _success(stream: bool) -> Response:
    if stream:
        return Response(_line("success"), media_type=_NDJSON)
    return JSONResponse({"status": "success"})


def _log_pulled(result: PullResult) -> None:
    model = result.model
    if result.up_to_date:
        logger.info("%s is up to date (%s)", model.name, model.source)
    else:
        logger.info("Pulled %s from %s (%d bytes)", model.name, model.source, model.size_bytes)


async def _progress(job: PullJob, queue: Subscriber, first: _Event) -> AsyncIterator[bytes]:
    """Ollama's lines: pulling manifest, downloading <digest> (total, completed), verifying
    sha256 digest, success; a failure midway ends the stream with an error line."""
    digest: str | None = None
    total: int | None = None
    yield _line("pulling manifest")
    event = first
    while True:
        if isinstance(event, _Resolved):
            digest, total = event.digest, event.total
        elif isinstance(event, _Progress):
            total = event.total if event.total is not None else total
            yield _line(f"downloading {digest}", digest, total, event.completed)
        elif isinstance(event, _Verifying):
            yield _line("verifying sha256 digest")
        elif isinstance(event, _Done):
            if event.result.up_to_date:  # nothing to download: all of it is there already
                size = event.result.model.size_bytes
                yield _line(f"downloading {digest}", digest, size, size)
            _log_pulled(event.result)
            yield _line("success")
            return
        else:
            yield json.dumps({"error": event.error.message}).encode() + b"\n"
            return
        event = await job.next(queue)


# -- POST /api/copy ---------------------------------------------------------------------------


async def copy_model(state: ServerState, source: str, destination: str) -> None:
    """Copy a model in the store under a new name, as `hearth cp` does. The new name may not be
    one that requests already use: a model (the registry checks those), a preset, or this
    server's --model."""
    if destination.lower() in (name.lower() for name in state.catalog.own_names()):
        raise ConflictError(
            f"'{destination}' already names a model on this server; delete it first, or copy "
            "to another name.",
            param="destination",
        )
    try:
        copied = await asyncio.to_thread(registry.copy_model, source, destination)
    except registry.UnknownModelError as exc:
        raise ModelNotFoundError(f"model '{source}' not found: {exc}", param="source") from exc
    except InvalidModelNameError as exc:
        raise InvalidRequestError(str(exc), param="destination") from exc
    except registry.ModelExistsError as exc:
        raise ConflictError(str(exc), param="destination") from exc
    except OSError as exc:  # the disk is full, or the store not writable
        raise _write_failed("The copy", exc) from exc
    logger.info("Copied %s to %s", source, copied.name)


# -- DELETE /api/delete ------------------------------------------------------------------------


def _in_use(name: str) -> ConflictError:
    return ConflictError(
        f"{name} is in use by running requests; delete it once they end.",
        headers={"Retry-After": "1"},
    )


async def delete_model(state: ServerState, model: str) -> None:
    """Remove a pulled model from the store, as `hearth rm` does. A model this server has
    loaded is unloaded first if idle; refused while a request uses it, and when the server
    needs it: its --model, or the base of a preset."""
    try:
        entry = await asyncio.to_thread(registry.removable, model)
    except registry.UnknownModelError as exc:
        raise ModelNotFoundError(f"model '{model}' not found: {exc}", param="model") from exc
    except registry.NotRemovableError as exc:
        raise InvalidRequestError(str(exc), param="model") from exc
    users = state.catalog.served_from(entry.name)
    if state.catalog.default_name in users:
        raise ConflictError(
            f"{entry.name} is the model this server was started with (--model); it cannot be "
            "deleted while the server runs."
        )
    aliases = [name for name in users if state.catalog.preset(name) is not None]
    if aliases:
        raise ConflictError(
            f"{entry.name} is the base of the preset {', '.join(aliases)} in hearth.toml; "
            "remove the preset first."
        )
    loaded = [s for s in state.models.snapshot() if s.name in users]
    if any(s.busy for s in loaded) or any(n in users for n in state.models.loading()):
        raise _in_use(entry.name)
    for status in loaded:
        if await state.models.unload(status.name) == "pending":  # a request came meanwhile
            raise _in_use(entry.name)
    await asyncio.to_thread(registry.store().remove, entry.name)
    # Now, not at the next refresh: a request in between would find a model with no file.
    await asyncio.to_thread(state.catalog.index.rescan)
    logger.info("Deleted %s (%d bytes)", entry.name, entry.size_bytes)


# -- POST /api/create and /api/blobs/:digest ---------------------------------------------------


def _create_plan(state: ServerState, req: wire.CreateRequest) -> create.CreatePlan:
    """Checks everything before anything is written. Blocking: reads the store."""
    if req.adapters:
        raise UnsupportedParameterError(
            "'adapters' is not supported: Hearth serves no LoRA adapters.", param="adapters"
        )
    if req.messages:
        raise UnsupportedParameterError(
            "'messages' is not supported: a created model has no seeded conversation.",
            param="messages",
        )
    name = req.model.strip()
    if name.lower() in (own.lower() for own in state.catalog.own_names()):
        raise ConflictError(
            f"'{name}' already names a model on this server; choose another.", param="model"
        )
    if name.lower() in (s.name.lower() for s in state.models.snapshot()):
        raise _in_use(name)
    try:
        return create.plan(
            registry.store(),
            name,
            from_model=req.from_,
            files=req.files,
            system=req.system,
            template=req.template,
            parameters=req.parameters,
            license=req.license,
            quantize=req.quantize,
        )
    except create.CreateSourceError as exc:
        raise ModelNotFoundError(str(exc), param=exc.param) from exc
    except create.CreateError as exc:
        raise InvalidRequestError(str(exc), param=exc.param) from exc


async def serve_create(
    state: ServerState, req: wire.CreateRequest, http_request: Request
) -> Response:
    """Ollama's create: the plan's errors are real statuses; the build streams its steps."""
    plan = await asyncio.to_thread(_create_plan, state, req)
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    def status(text: str) -> None:
        loop.call_soon_threadsafe(steps.put_nowait, text)

    def run() -> None:
        try:
            model = create.build(registry.store(), plan, status, state.settings.threads)
            logger.info("Created %s (%s)", model.name, model.source)
            outcome: BaseException | None = None
        except Exception as exc:
            if isinstance(exc, OSError) and no_space(exc):  # the client hears why: no trace
                logger.warning("Creating %s failed: %s", plan.name, exc)
            else:
                logger.error("Creating %s failed", plan.name, exc_info=exc)
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            loop.call_soon_threadsafe(steps.put_nowait, outcome)

    # A thread of its own, as a pull's: a quantization is never cut short midway.
    threading.Thread(target=run, name="hearth-create", daemon=True).start()

    async def lines() -> AsyncIterator[bytes]:
        while True:
            step = await steps.get()
            if step is None:
                yield _line("success")
                return
            if isinstance(step, BaseException):
                message = _write_failed("The create", step).message
                yield json.dumps({"error": message}).encode() + b"\n"
                return
            yield _line(step)

    if req.stream:
        return StreamingResponse(lines(), media_type=_NDJSON)

    async def finished() -> None:
        while (step := await steps.get()) is not None:
            if isinstance(step, BaseException):
                raise _write_failed("The create", step)

    await until_disconnect(http_request, finished())
    return _success(stream=False)


def _write_failed(what: str, exc: BaseException) -> HearthError:
    """A write into the store that failed: 507 naming the disk when it is full (nothing was
    generated, so nothing is lost), else a plain server error."""
    if isinstance(exc, OSError) and no_space(exc):
        return InsufficientStorageError(
            f"{what} failed: the disk holding {registry.store().root} is full "
            f"(or a file size limit was reached): {exc.strerror}. Free some space and retry."
        )
    return HearthError(f"{what} failed: {exc}")


def _blob_file(digest: str) -> Path:
    path = create.blob_path(registry.store(), digest)
    if path is None:
        raise InvalidRequestError(
            f"{digest!r} is not a sha256 digest (sha256:<64 hex>).", param="digest"
        )
    return path


async def blob_exists(digest: str) -> bool:
    """HEAD has no body to say why: a malformed digest is a blob Hearth does not have."""
    path = create.blob_path(registry.store(), digest)
    return path is not None and await asyncio.to_thread(path.is_file)


async def receive_blob(digest: str, http_request: Request) -> None:
    """Keep the body as the blob `digest` for a later create, once its sha256 matches."""
    path = await asyncio.to_thread(_blob_file, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    hasher = hashlib.sha256()
    try:
        try:
            with partial.open("wb") as file:
                async for chunk in http_request.stream():
                    hasher.update(chunk)
                    await asyncio.to_thread(file.write, chunk)
        except OSError as exc:
            raise _write_failed("Storing the blob", exc) from exc
        if f"sha256:{hasher.hexdigest()}" != digest.replace("-", ":", 1):
            raise InvalidRequestError(
                f"the body's sha256 is {hasher.hexdigest()}, not the digest {digest}",
                param="digest",
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
