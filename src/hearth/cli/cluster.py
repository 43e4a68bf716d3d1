"""`hearth cluster`: Hearth replicas on a Ray Serve cluster (docs/cluster.md).

- `serve` deploys hearth.cluster on a running Ray cluster with Hearth's own flags (those of
  `hearth serve`, from ServeSettings) and the cluster's (from ClusterSettings), prints the
  address clients use, and returns: the application lives on in the cluster.
- `status` shows the replicas behind a cluster address: node, model, slots, queue.
- `stop` removes the application from the cluster.
Ray is imported only by `serve` and `stop`, which need the `cluster` extra.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth.cli.client import auth_headers, base_url, server_options
from hearth.cli.serve import _flag_type, _settings_options
from hearth.cluster.settings import ClusterSettings
from hearth.settings import ServeSettings

__all__ = ["command"]

_NEEDS_EXTRA = "`hearth cluster` needs Ray Serve: pip install 'hearth[cluster]'"
# Cluster settings that are flags here; serve_flags are Hearth's own (`_settings_options`).
_CLUSTER_FLAGS = [name for name in ClusterSettings.model_fields if name != "serve_flags"]


def _cluster_options(func: Any) -> Any:
    for name in reversed(_CLUSTER_FLAGS):
        field = ClusterSettings.model_fields[name]
        click_type, _ = _flag_type(field.annotation)
        func = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=click_type,
            default=None,
            help=f"{field.description}"
            + ("" if field.default is None else f" [default: {field.default}]"),
        )(func)
    return func


def _usage_error(exc: ValidationError) -> click.UsageError:
    problems = []
    for error in exc.errors():
        parts = [str(part) for part in error["loc"] if part != "serve_flags"]
        flag = f"--{parts[-1].replace('_', '-')}: " if parts else ""
        problems.append(flag + error["msg"].removeprefix("Value error, "))
    return click.UsageError("; ".join(problems))


@click.group(name="cluster")
def command() -> None:
    """Hearth replicas on a Ray Serve cluster, routed by conversation."""


@command.command(name="serve")
@click.option(
    "--address",
    envvar="RAY_ADDRESS",
    default="auto",
    show_default=True,
    help="Ray cluster to deploy on ('auto': the one this machine is part of). [env: RAY_ADDRESS]",
)
@_cluster_options
@_settings_options
def serve_command(address: str, **flags: Any) -> None:
    """Deploy Hearth on a Ray cluster: replicas of `hearth serve` behind one address.

    --host and --port are where Ray Serve's proxies listen (on every node)."""
    cluster = {k: flags.pop(k) for k in _CLUSTER_FLAGS if flags.get(k) is not None}
    for name in _CLUSTER_FLAGS:
        flags.pop(name, None)
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    try:
        # Flags and this shell's HEARTH_* variables, as `hearth serve` reads them, go to every
        # replica; what neither sets is each node's default (threads: its cores).
        driver = ServeSettings(**given)
        serve_flags = {name: getattr(driver, name) for name in driver.model_fields_set}
        settings = ClusterSettings(**cluster, serve_flags=serve_flags)
    except ValidationError as exc:
        raise _usage_error(exc) from exc
    try:
        import ray
        from ray import serve

        from hearth.cluster import build_application
    except ImportError as exc:
        raise click.ClickException(_NEEDS_EXTRA) from exc

    serve_settings = settings.serve_settings()
    ray.init(address=address, logging_level="warning")
    serve.start(http_options={"host": serve_settings.host, "port": serve_settings.port})
    serve.run(
        build_application(settings), name=settings.app_name, route_prefix=settings.route_prefix
    )
    url = base_url(serve_settings.host, serve_settings.port) + settings.route_prefix.rstrip("/")
    try:
        httpx.get(f"{url}/health", timeout=30).raise_for_status()
    except httpx.HTTPError as exc:
        # Serve was already running with other HTTP options, which serve.start cannot change.
        raise click.ClickException(
            f"Deployed, but {url}/health does not answer ({exc}); `serve status` shows where "
            "Ray Serve's proxies listen."
        ) from exc
    click.echo(
        f"Hearth cluster `{settings.app_name}` ready at {url} · model "
        f"{serve_settings.model or 'smollm2:135m'} · {settings.min_replicas}–"
        f"{settings.max_replicas} replicas · routing {settings.routing}\n"
        f"OpenAI clients: base_url={url}/v1 · replicas: hearth cluster status "
        f"--host {serve_settings.host} --port {serve_settings.port}"
    )


@command.command(name="stop")
@click.option("--address", envvar="RAY_ADDRESS", default="auto", show_default=True)
@click.option("--app-name", default="hearth", show_default=True)
def stop_command(address: str, app_name: str) -> None:
    """Remove a Hearth application from the Ray cluster (its replicas drain first)."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise click.ClickException(_NEEDS_EXTRA) from exc
    ray.init(address=address, logging_level="warning")
    serve.delete(app_name)
    click.echo(f"Removed `{app_name}`.")


def _cell(value: Any) -> str:
    return "—" if value is None else str(value)


@command.command(name="status")
@server_options
@click.option("--route-prefix", default="", help="The application's route prefix, if not '/'.")
def status_command(host: str, port: int, route_prefix: str) -> None:
    """Show the replicas behind a cluster address: node, model, slots in use, queue."""
    errors = Console(stderr=True, highlight=False)
    url = base_url(host, port) + route_prefix.rstrip("/")
    try:
        response = httpx.get(f"{url}/health", headers=auth_headers(), timeout=30)
        health: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError):
        errors.print(Text(f"No Hearth cluster answers at {url}.", style="bold red"))
        sys.exit(1)
    if not health.get("cluster"):
        errors.print(Text(f"{url} is a single Hearth server; see `hearth ps`.", style="bold red"))
        sys.exit(1)
    console = Console(highlight=False)
    console.print(
        f"{health.get('replicas_answering')}/{health.get('replicas_running')} replicas answering"
        f" · slots {health.get('slots_in_use')}/{health.get('slots_total')} in use"
        f" · {health.get('queue_length')} queued"
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("REPLICA", "NODE", "NODE ID", "MODEL", "SLOTS", "QUEUE", "STATUS"):
        table.add_column(column, no_wrap=True)
    for replica in health.get("replicas", []):
        in_use, total = replica.get("slots_in_use"), replica.get("slots_total")
        table.add_row(
            _cell(replica.get("replica")),
            _cell(replica.get("node_ip")),
            _cell(replica.get("node_id"))[:12],
            _cell(replica.get("model")),
            "—" if in_use is None else f"{in_use}/{total}",
            _cell(replica.get("queue_length")),
            _cell(replica.get("status")),
        )
    console.print(table)
