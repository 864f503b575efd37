"""The dashboard's web server (Starlette on uvicorn): the page, a JSON API and server-sent events.

GET /                       the page (static/index.html; uPlot bundled: no CDN)
GET /api/state              everything: wells at every timepoint, dose fits, models, stream health
GET /api/well/{plate}/{well} one well's time courses and its frames' QC (journal + stream)
GET /api/events             server-sent events: `changes` (what changed since the last event)
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .live import LiveState

STATIC = Path(__file__).resolve().parent / "static"
EVENT_INTERVAL_S = 0.25
KEEPALIVE_S = 1.0  # health (idle time, lag) changes even when nothing else does


def _json_safe(value):
    """NaN/inf are not JSON: send null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class SafeJSON(JSONResponse):
    def render(self, content) -> bytes:
        return json.dumps(_json_safe(content), separators=(",", ":")).encode()


def create_app(state: LiveState) -> Starlette:
    async def index(request: Request):
        return FileResponse(STATIC / "index.html")

    async def api_state(request: Request):
        return SafeJSON(state.snapshot())

    async def api_well(request: Request):
        return SafeJSON(state.well_history(request.path_params["plate"], request.path_params["well"]))

    async def api_events(request: Request):
        version = int(request.query_params.get("since", "0") or 0)

        async def stream():
            nonlocal version
            idle = 0.0
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                changes = state.changes_since(version)
                if changes is None:  # too far behind: the page reloads the whole state
                    yield "event: reload\ndata: {}\n\n"
                    return
                if changes["version"] != version or idle >= KEEPALIVE_S:
                    version = changes["version"]
                    idle = 0.0
                    yield f"event: changes\ndata: {json.dumps(_json_safe(changes), separators=(',', ':'))}\n\n"
                await asyncio.sleep(EVENT_INTERVAL_S)
                idle += EVENT_INTERVAL_S

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return Starlette(routes=[
        Route("/", index),
        Route("/api/state", api_state),
        Route("/api/well/{plate}/{well}", api_well),
        Route("/api/events", api_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
