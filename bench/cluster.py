"""Multi-turn TTFT through a Hearth cluster: routing by conversation against Ray's default router
(power of two choices), on the same local Ray cluster.

    .venv/bin/python bench/cluster.py                        # 8 conversations × 4 turns
    .venv/bin/python bench/cluster.py --conversations 4 --turns 3 --workers 2

It starts a Ray cluster on loopback (`ray.cluster_utils.Cluster`: a head with no CPU for
replicas, and --workers worker nodes of one CPU each), deploys hearth.cluster with one replica
per worker (threads=1), and for each routing runs conversations of the same shape (its own, so
that no cache left by the other run serves them): each has a long system prompt of its own, and
its turns go one after another while the conversations run side by side.
Turn 1 always decodes its whole prompt; from turn 2 on, a turn that reaches the replica holding
its conversation decodes only what is new. Reported per routing: TTFT (mean, median, p90) of
turns 2+, how many of them missed the cache, the share of their prompt tokens served from cache,
and the pow2/affinity ratio of mean TTFT.

Writes bench/results/cluster-latest.json and .md. `LocalCluster` is what tests/cluster uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2:135m"
_MB = 1024 * 1024
# Ray's minimum object store is 75 MB; Hearth's requests and answers are small.
OBJECT_STORE_BYTES = 80 * _MB
# A worker node that disappears is declared dead after about 3 missed 1 s health checks (the
# default is 5 × 3 s), so the failover test and a failed node in the bench take seconds.
FAST_NODE_HEALTH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalCluster:
    """A Ray cluster of processes on this machine, with Serve's proxy on a free loopback port.
    Stopped with Cluster.shutdown(), never `ray stop` (which would end every Ray on the box)."""

    workers: int = 2
    hearth_home: Path | None = None
    port: int = field(default_factory=free_port)
    cluster: Any = None
    worker_nodes: list[Any] = field(default_factory=list)
    _home_before: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalCluster:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        if self.hearth_home is not None:  # the nodes' processes inherit it
            self._home_before = os.environ.get("HEARTH_HOME")
            os.environ["HEARTH_HOME"] = str(self.hearth_home)
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,  # replicas only on workers: removing one is a known loss
                "object_store_memory": OBJECT_STORE_BYTES,
                "include_dashboard": False,
                "_system_config": FAST_NODE_HEALTH,
            },
        )
        for _ in range(self.workers):
            self.add_worker()
        ray.init(address=self.cluster.address, logging_level="warning", log_to_driver=False)
        serve.start(
            http_options={"host": "127.0.0.1", "port": self.port}, proxy_location="HeadOnly"
        )
        return self

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
        self.worker_nodes.append(node)
        return node

    def remove_worker(self, node: Any) -> None:
        self.worker_nodes.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def worker_with_node_id(self, node_id: str) -> Any:
        for node in self.worker_nodes:
            if node.node_id == node_id:
                return node
        raise LookupError(f"no worker node {node_id}")

    def deploy(self, settings: Any) -> None:
        from ray import serve

        from hearth.cluster import build_application

        serve.run(build_application(settings), name=settings.app_name, route_prefix="/")

    def undeploy(self, app_name: str = "hearth") -> None:
        from ray import serve

        serve.delete(app_name)

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/health", timeout=30)
        body: dict[str, Any] = response.json()
        return body

    def wait_for_replicas(self, count: int, timeout_s: float = 180) -> dict[str, Any]:
        """Until /health lists `count` replicas, every one answering."""
        deadline = time.monotonic() + timeout_s
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                health = self.health()
            except (httpx.TransportError, ValueError):  # not up, or not deployed yet (no JSON)
                health = {}
            if health.get("replicas_answering") == count == health.get("replicas_running"):
                return health
            time.sleep(0.5)
        raise TimeoutError(f"not {count} replicas after {timeout_s}s: {health}")

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            if self.cluster is not None:
                self.cluster.shutdown()
            if self.hearth_home is not None:
                if self._home_before is None:
                    os.environ.pop("HEARTH_HOME", None)
                else:
                    os.environ["HEARTH_HOME"] = self._home_before

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.shutdown()


def system_prompt(index: int, words: int = 220) -> str:
    """A long system prompt of its own for each conversation: distinct from its first words."""
    topics = ["tides", "glaciers", "orchards", "lighthouses", "bridges", "comets", "looms", "bees"]
    topic = topics[index % len(topics)]
    filler = " ".join(f"{topic}-{index}-{n}" for n in range(words))
    return f"Conversation {index}. You answer briefly about {topic}. Background notes: {filler}"


async def _turn(
    client: openai.AsyncOpenAI, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, str, int, int]:
    """(TTFT s, reply, prompt tokens, cached tokens) of one streamed turn."""
    started = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - started
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None and details.cached_tokens else 0
    return (
        ttft if ttft is not None else time.perf_counter() - started,
        "".join(parts),
        usage.prompt_tokens,
        cached,
    )


async def run_conversations(
    base_url: str, conversations: int, turns: int, max_tokens: int, first: int = 0
) -> list[dict[str, Any]]:
    """Conversations `first`, `first + 1`...: each routing gets its own, so that no cache left
    by an earlier run (in memory or saved to disk) serves the next one."""
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

    async def conversation(index: int) -> list[dict[str, Any]]:
        messages = [{"role": "system", "content": system_prompt(index, words=80)}]
        rows = []
        for turn in range(1, turns + 1):
            messages.append({"role": "user", "content": f"Tell me fact {turn} about it."})
            ttft, reply, prompt, cached = await _turn(client, messages, max_tokens)
            messages.append({"role": "assistant", "content": reply})
            rows.append(
                {
                    "conversation": index,
                    "turn": turn,
                    "ttft_s": ttft,
                    "prompt": prompt,
                    "cached": cached,
                }
            )
        return rows

    try:
        per_conversation = await asyncio.gather(
            *(conversation(first + i) for i in range(conversations))
        )
    finally:
        await client.close()
    return [row for rows in per_conversation for row in rows]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    later = [row for row in rows if row["turn"] >= 2]
    ttfts = sorted(row["ttft_s"] for row in later)
    prompt = sum(row["prompt"] for row in later)
    previous = {(row["conversation"], row["turn"]): row["prompt"] for row in rows}
    # A turn that reached another replica than its previous one: most of its history recomputed.
    misses = sum(
        1 for row in later if row["cached"] < 0.9 * previous[row["conversation"], row["turn"] - 1]
    )
    return {
        "turns_2plus": len(later),
        "cache_misses": misses,
        "ttft_mean_s": statistics.fmean(ttfts),
        "ttft_median_s": statistics.median(ttfts),
        "ttft_p90_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
        "turn1_ttft_median_s": statistics.median(r["ttft_s"] for r in rows if r["turn"] == 1),
        "cached_share": sum(row["cached"] for row in later) / prompt if prompt else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="Worker nodes, one replica each.")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=4, help="Slots per replica.")
    args = parser.parse_args()

    from hearth.cluster import ClusterSettings

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "workers": args.workers,
        "conversations": args.conversations,
        "turns": args.turns,
        "max_tokens": args.max_tokens,
        "parallel": args.parallel,
        "routing": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="hearth-cluster-bench-") as home,
        LocalCluster(workers=args.workers, hearth_home=Path(home)) as local,
    ):
        for run, routing in enumerate(("affinity", "pow2")):
            settings = ClusterSettings(
                min_replicas=args.workers,
                max_replicas=args.workers,
                replica_cpus=1,
                routing=routing,
                serve_flags={"threads": 1, "parallel": args.parallel, "ctx_size": 2048},
            )
            local.deploy(settings)
            local.wait_for_replicas(args.workers)
            print(
                f"{routing}: {args.conversations} conversations × {args.turns} turns",
                flush=True,
            )
            rows = asyncio.run(
                run_conversations(
                    local.base_url,
                    args.conversations,
                    args.turns,
                    args.max_tokens,
                    first=run * args.conversations,
                )
            )
            results["routing"][routing] = {"summary": summarize(rows), "turns": rows}
            print(f"  {results['routing'][routing]['summary']}", flush=True)
            local.undeploy(settings.app_name)
    affinity = results["routing"]["affinity"]["summary"]
    pow2 = results["routing"]["pow2"]["summary"]
    results["ttft_mean_ratio_pow2_over_affinity"] = pow2["ttft_mean_s"] / affinity["ttft_mean_s"]

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster-latest.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Hearth cluster: multi-turn TTFT, affinity routing vs Ray's power of two choices",
        "",
        f"{results['date']} · {args.workers} worker nodes (1 CPU, 1 replica each, threads=1, "
        f"{args.parallel} slots) · {args.conversations} conversations × {args.turns} turns, "
        f"run side by side · max_tokens {args.max_tokens}",
        "",
        "| routing | TTFT turns 2+: mean | median | p90 | turns 2+ that missed the cache "
        "| their prompt tokens from cache | turn 1 median |",
        "|---|---|---|---|---|---|---|",
    ]
    for routing in ("affinity", "pow2"):
        s = results["routing"][routing]["summary"]
        lines.append(
            f"| {routing} | {s['ttft_mean_s'] * 1000:.0f} ms | {s['ttft_median_s'] * 1000:.0f} ms "
            f"| {s['ttft_p90_s'] * 1000:.0f} ms | {s['cache_misses']}/{s['turns_2plus']} "
            f"| {s['cached_share']:.0%} | {s['turn1_ttft_median_s'] * 1000:.0f} ms |"
        )
    lines += [
        "",
        f"pow2 / affinity, mean TTFT of turns 2+: "
        f"{results['ttft_mean_ratio_pow2_over_affinity']:.2f}×",
        "",
        "One shared machine: compare the two rows of one run, not absolute times across runs.",
    ]
    (RESULTS / "cluster-latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
