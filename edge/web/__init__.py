"""The web page for the people on site and its JSON API (docs/HTTP.md).

`page_routes` adds to the daemon's HTTP server (`edge.http`): ``/`` (the page: static HTML,
JS and CSS from ``static/``, charts by the vendored uPlot, no build step, no CDN), ``/static/``
and ``/api/`` (`edge.web.api`). `edge.web.live.LiveResults` is the result sink that keeps
what the page shows of the monitors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from ..config import HttpConfig
    from ..metrics import Metrics
    from ..running import RunningDaemon
    from .api import Api

STATIC = Path(__file__).resolve().parent / "static"


def page_routes(daemon: RunningDaemon, metrics: Metrics, health: Callable[[], dict[str, Any]],
                cfg: HttpConfig) -> tuple[list[BaseRoute], Api]:
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from .api import Api, api_routes

    api = Api(daemon, metrics, health, cfg)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"cache-control": "no-cache"})

    routes: list[BaseRoute] = [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *api_routes(api),
    ]
    return routes, api
