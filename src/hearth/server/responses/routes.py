"""OpenAI's Responses API routes: create, retrieve, delete, input items."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from hearth.errors import UnsupportedParameterError
from hearth.protocol import responses as responses_wire
from hearth.server.http.auth import key_owner, require_api_key
from hearth.server.http.errors import error_responses
from hearth.server.http.leases import state_of, with_model
from hearth.server.http.openapi import json_or_named_events
from hearth.server.responses.serving import (
    delete_response,
    list_input_items,
    retrieve_response,
    serve_response,
)

__all__ = ["router"]

_STATUSES = (400, 401, 404, 413, 429, 500, 503)

router = APIRouter(
    prefix="/v1", dependencies=[Depends(require_api_key)], responses=error_responses(*_STATUSES)
)


@router.post(
    "/responses",
    response_model=None,
    responses=json_or_named_events(
        responses_wire.Response, responses_wire.ResponseStreamEvent, responses_wire.ErrorEvent
    ),
)
async def create_response(
    body: responses_wire.ResponseCreateRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_response(state, model, body, request),
    )


@router.get(
    "/responses/{response_id}",
    response_model=None,
    responses={200: {"model": responses_wire.Response}},
)
async def get_response(
    response_id: str,
    request: Request,
    stream: bool = False,
    include: Annotated[list[str] | None, Query()] = None,
) -> JSONResponse:
    return await retrieve_response(
        state_of(request),
        response_id,
        stream=stream,
        include=include or [],
        owner=key_owner(request),
    )


@router.delete("/responses/{response_id}")
async def remove_response(response_id: str, request: Request) -> responses_wire.DeletedResponse:
    return await delete_response(state_of(request), response_id, key_owner(request))


@router.get("/responses/{response_id}/input_items")
async def response_input_items(
    response_id: str,
    request: Request,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    include: Annotated[list[str] | None, Query()] = None,
) -> responses_wire.InputItemList:
    if include:
        raise UnsupportedParameterError(
            "'include' is not supported: no extra output data is served.", param="include"
        )
    return await list_input_items(
        state_of(request),
        response_id,
        after=after,
        before=before,
        limit=limit,
        order=order,
        owner=key_owner(request),
    )
