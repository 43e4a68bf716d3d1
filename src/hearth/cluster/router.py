"""Request routers for the Hearth replica deployment, on Ray Serve's RequestRouter API.

`AffinityRouter` routes by conversation: Ray's `ConsistentHashRouter` over the affinity key the
ingress computes (hearth.cluster.affinity) and passes as the request's session id, with two
changes:
- affinity first: the replica that owns a key is tried three times, with the growing probe
  deadlines of Ray's backoff, before the next replica on the ring. A replica busy decoding may
  answer a queue-length probe late; a full queue (max_ongoing_requests) is a fast answer, so a
  busy owner still hands over at once.
- no key (GET, embeddings): the least busy replica, where Ray's ring would hash a fresh request
  id (a random replica).

`PowerOfTwoRouter` is Ray's default router (two random replicas, the shorter queue), the
baseline bench/cluster.py measures against.

Both honour pinned requests: a session id `replica:<id>` goes to that replica only, which is how
the ingress asks every replica for its /health and /api/ps.
"""

from __future__ import annotations

from typing import Any

from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

__all__ = ["PINNED_PREFIX", "AffinityRouter", "PowerOfTwoRouter", "pinned_session"]

PINNED_PREFIX = "replica:"
DEFAULT_PRIMARY_ATTEMPTS = 3


def pinned_session(replica: str) -> str:
    """The session id that routes a request to the replica whose unique id is `replica`."""
    return PINNED_PREFIX + replica


def _pinned_ranks(
    candidates: list[RunningReplica], pending_request: PendingRequest | None
) -> list[list[RunningReplica]] | None:
    """The one replica a pinned request names (none when it is gone), or None if not pinned."""
    if pending_request is None:
        return None
    session: str = pending_request.metadata.session_id
    if not session.startswith(PINNED_PREFIX):
        return None
    pending_request.routing_context.should_backoff = True
    wanted = session.removeprefix(PINNED_PREFIX)
    if pending_request.future.done():
        # Its caller gave up (the replica is gone). Ray's routing loop looks at that only once
        # a choice offers some replica: offering none would keep this routing task looping,
        # and with a few of them stuck no other request is routed at all.
        return [candidates] if candidates else []
    # Gone: nothing to offer; the ingress gives up on it after its own deadline.
    return [[r] for r in candidates if r.replica_id.unique_id == wanted]


class AffinityRouter(ConsistentHashRouter):  # type: ignore[misc]
    def initialize_state(self, **kwargs: Any) -> None:
        self._primary_attempts = int(kwargs.pop("primary_attempts", DEFAULT_PRIMARY_ATTEMPTS))
        if self._primary_attempts < 1:
            raise ValueError(f"primary_attempts must be at least 1, not {self._primary_attempts}")
        super().initialize_state(**kwargs)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        pinned = _pinned_ranks(candidate_replicas, pending_request)
        if pinned is not None:
            return pinned
        if pending_request is not None and not pending_request.metadata.session_id:
            # Sleep between rounds when every replica is full, rather than spin.
            pending_request.routing_context.should_backoff = True
            return [candidate_replicas] if candidate_replicas else []
        ranks: list[list[RunningReplica]] = await super().choose_replicas(
            candidate_replicas, pending_request
        )
        if not ranks:
            return ranks
        return [ranks[0]] * self._primary_attempts + ranks[1:]


class PowerOfTwoRouter(PowerOfTwoChoicesRequestRouter):  # type: ignore[misc]
    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        pinned = _pinned_ranks(candidate_replicas, pending_request)
        if pinned is not None:
            return pinned
        ranks: list[list[RunningReplica]] = await super().choose_replicas(
            candidate_replicas, pending_request
        )
        return ranks
