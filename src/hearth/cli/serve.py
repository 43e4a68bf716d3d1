"""`hearth serve`: its flags are generated from ServeSettings, so flags and env never drift."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
import types
import typing
from typing import Any

import click
from pydantic import ByteSize, ValidationError

from hearth.settings import ServeSettings

__all__ = ["command", "serve"]

logger = logging.getLogger("hearth")

# On SIGTERM/Ctrl-C the server first drains (hearth.server.http.drain): new requests get 503,
# running ones get --drain-timeout to finish, and those left are then ended through their
# engines, so each gets a 503 or a final error event. Only then does uvicorn's shutdown start;
# its own deadline (cancelling tasks: a traceback, and a stream cut mid-event) is for a
# connection that still will not close, with a wide margin for a decode step on a loaded
# machine, which cannot be interrupted.
GRACEFUL_SHUTDOWN_S = 10


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, multiple) for a settings field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flag_type(typing.get_args(annotation)[0])
    if origin is list:
        return str, True
    if annotation is ByteSize:  # "4GiB": pydantic parses the units
        return str, False
    if origin is typing.Literal:
        return click.Choice([str(choice) for choice in typing.get_args(annotation)]), False
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(inner[0])
    return annotation, False


def _settings_options(func: Any) -> Any:
    for name, field in reversed(ServeSettings.model_fields.items()):
        click_type, multiple = _flag_type(field.annotation)
        env = f"HEARTH_{name.upper()}"
        is_flag = field.annotation is bool  # `--metrics-public`, no value; absent: None
        func = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=None if is_flag else click_type,
            is_flag=is_flag,
            multiple=multiple,
            default=None,
            help=f"{field.description} [env: {env}]",
        )(func)
    return func


def _bound_malloc_arenas() -> None:
    """glibc gives every thread that allocates an arena of its own, and requests are prepared
    (templated, tokenized) on worker threads: without a bound, resident memory grew 11% in a
    40 s soak as each worker's arena filled (0.5% before preparation left the event loop)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and others: no per-thread arenas to bound
        return
    m_arena_max = -8  # malloc.h
    libc.mallopt(m_arena_max, 2)


@click.command(name="serve")
@_settings_options
def command(**flags: Any) -> None:
    """Serve a model through the OpenAI API (default: the embedded SmolLM2-135M)."""
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    try:
        settings = ServeSettings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            flag = f"--{where.replace('_', '-')}: " if where else ""
            problems.append(flag + error["msg"].removeprefix("Value error, "))
        raise click.UsageError("; ".join(problems)) from exc
    serve(settings)


def serve(settings: ServeSettings) -> None:
    import uvicorn

    from hearth.errors import HearthError, ServerShuttingDownError
    from hearth.models.presets import PresetError
    from hearth.models.registry import DEFAULT_MODEL_ID, UnknownModelError
    from hearth.server.app import create_app, load_state

    _bound_malloc_arenas()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Load before uvicorn starts, so a bad model, too big a context or a bad presets file is
    # one clear line.
    logger.info(
        "Loading %s with %d slots × %s ctx",
        settings.model or DEFAULT_MODEL_ID,
        settings.parallel,
        settings.ctx_size or "the model's own",
    )
    try:
        state = load_state(settings)
    except (UnknownModelError, RuntimeError, PresetError) as exc:
        raise click.ClickException(str(exc)) from exc
    except HearthError as exc:  # a model file that is not a whole GGUF
        raise click.ClickException(exc.message) from exc

    app = create_app(settings, state)

    class _Server(uvicorn.Server):
        # Signals received: the first drains, the second ends the running requests at once,
        # a third leaves without waiting for connections to close.
        signals = 0
        drain_task: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
            # A signal handler: only flags here; on_tick, on the event loop, acts on them.
            # uvicorn's own would stop accepting at once, and re-raise the signal at the end.
            self.signals += 1
            if self.signals >= 3 or not self.started:
                self.should_exit = True
                self.force_exit = self.signals >= 3

        async def on_tick(self, counter: int) -> bool:
            if self.signals and self.drain_task is None:
                self.drain_task = asyncio.create_task(self._drain(), name="hearth-drain")
            if self.signals >= 2:
                state.drain.hurry()
            return await super().on_tick(counter)

        async def _drain(self) -> None:
            try:
                await state.drain.run(settings.drain_timeout, state.end_requests)
            except Exception:
                logger.exception("Draining failed; stopping now")
            self.should_exit = True

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.should_exit:
                return
            startup = state.model
            assert startup is not None  # loaded before the server started
            device = state.devices[0] if state.devices else None
            where = f"{device.name} ({device.description})" if device else "CPU"
            logger.info(
                "Hearth ready on http://%s:%d · model %s · %s · %d slots × %d ctx · %d threads",
                settings.host,
                settings.port,
                state.model_id,
                where,
                settings.parallel,
                startup.n_ctx_per_slot,
                settings.threads,
            )

        async def shutdown(self, sockets: Any = None) -> None:
            # After a drain nothing runs any more; a stop that skipped it ends requests here.
            state.drain.draining = True
            state.end_requests(
                ServerShuttingDownError("The server is shutting down; retry once it is back.")
            )
            await super().shutdown(sockets)
            # Signals are not re-raised (uvicorn would: a KeyboardInterrupt traceback, or death
            # by signal); a requested stop that went cleanly exits 0.
            self._captured_signals.clear()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    _Server(config).run()
