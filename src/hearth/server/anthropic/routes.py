"""Anthropic's Messages API routes: https://docs.anthropic.com/en/api/messages"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from hearth.protocol import anthropic as anthropic_wire
from hearth.server.anthropic.messages import count_tokens, serve_messages
from hearth.server.http.auth import require_api_key
from hearth.server.http.errors import error_responses
from hearth.server.http.leases import state_of, with_model
from hearth.server.http.openapi import json_or_named_events

__all__ = ["router"]

_STATUSES = (400, 401, 404, 413, 429, 500, 503)

# With Anthropic's own error shape.
router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*_STATUSES, anthropic=True),
)


@router.post(
    "/messages",
    response_model=None,
    responses=json_or_named_events(
        anthropic_wire.Message, anthropic_wire.StreamEvent, anthropic_wire.ErrorResponse
    ),
)
async def messages(
    body: anthropic_wire.MessagesRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_messages(state, model, body, request),
    )


@router.post("/messages/count_tokens")
async def messages_count_tokens(
    body: anthropic_wire.CountTokensRequest, request: Request
) -> anthropic_wire.CountTokensResponse:
    state = state_of(request)
    with await state.acquire(body.model) as lease:
        return await count_tokens(state, lease.model, body)
