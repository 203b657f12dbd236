"""The review routes of prefilled proposals (data-engine stage 2; see docs/prefill.md).

``POST /api/masks/{id}/accept`` and ``POST /api/masks/{id}/reject`` take
``{"version": N, "elapsed_ms": optional}``: accept answers the mask (``review:
"accepted"``), reject answers 204 and deletes it. A stale version is 409, no such mask 404,
a missing version or a mask that is not a proposal waiting for review 422. The server's
authentication applies; the annotator is the token's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..store import InvalidInput, Project

__all__ = ["REVIEW_FIELDS", "add_proposal_routes"]

#: The fields of an accept or reject request.
REVIEW_FIELDS = {"version", "elapsed_ms"}

JsonBody = Callable[[Request, set[str]], Awaitable[dict[str, Any]]]


def add_proposal_routes(app: FastAPI, project: Project, json_body: JsonBody) -> None:
    """Add the accept and reject routes for ``project`` to ``app``; ``json_body(request,
    allowed)`` is the app's JSON body reader (422 for bad JSON or unknown fields)."""

    async def review(request: Request) -> tuple[dict[str, Any], str | None]:
        body = await json_body(request, REVIEW_FIELDS)
        if "version" not in body:
            raise InvalidInput("version (the version of the proposal) is required")
        return body, request.state.annotator

    @app.post("/api/masks/{mask_id}/accept")
    async def accept_proposal(mask_id: int, request: Request) -> dict[str, Any]:
        """Accept a prefilled proposal as it is: ``{"version": N, "elapsed_ms"}`` -> the mask
        (409 stale version, 422 not a proposal waiting for review)."""
        body, annotator = await review(request)
        record = await run_in_threadpool(
            lambda: project.accept_proposal(mask_id, annotator=annotator, **body)
        )
        return {**record.to_sa1b(), "review": "accepted"}

    @app.post("/api/masks/{mask_id}/reject", status_code=204)
    async def reject_proposal(mask_id: int, request: Request) -> Response:
        """Reject (delete) a prefilled proposal: ``{"version": N, "elapsed_ms"}``."""
        body, annotator = await review(request)
        await run_in_threadpool(
            lambda: project.reject_proposal(mask_id, annotator=annotator, **body)
        )
        return Response(status_code=204)
