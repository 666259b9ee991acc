"""The daemon's HTTP server: the web page, its JSON API (`edge.web`), ``/metrics`` and ``/healthz``.

A Starlette app served by uvicorn on its own thread (its own event loop), started and stopped
by the supervisor (`edge.daemon`). ``start_http_server(port, metrics, health, host)`` binds
the socket in the caller's thread (an address in use raises `OSError` there), serves, and
returns an `HttpEndpoint` (``.port`` is the bound port, useful with ``port=0``; ``.stop()``).

``health`` is a callable returning a dict (`edge.health.health_report`); its ``"http_status"``
decides the status code of ``/healthz`` when present, else its ``"ok"`` key: **200** when
truthy, **503** otherwise, with the whole dict as JSON so an operator sees *why*. A health
callable that raises yields 503 with the error text.

Security (`Guard`, every request, before any route):

* bound to loopback by default; bound elsewhere only with a credential (`HttpConfig` refuses
  the configuration otherwise, and so does `start_http_server`);
* a configured credential is required on **every** request, loopback clients included (a
  reverse proxy on the same host makes every client look local): ``Authorization: Bearer
  <token>`` or basic auth (any user name with the token as password, or the configured
  user name and password); compared in constant time, never logged, never returned;
* request bodies above ``max_body`` bytes get 413, clients above ``rate`` requests per second
  (burst ``burst``) get 429;
* bound to loopback, a request whose ``Host`` is not a loopback name gets 421 (a DNS
  rebinding page cannot read the API); a write (POST) must be JSON and, when the browser
  says where it comes from (``Origin``), come from the page's own origin (no CSRF).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import HttpConfig, is_loopback
from .log import register_secret
from .metrics import Metrics

if TYPE_CHECKING:
    import uvicorn

    from .running import RunningDaemon

log = structlog.get_logger(__name__)

HealthFn = Callable[[], dict[str, Any]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---------------------------------------------------------------------------------- security
@dataclass(frozen=True)
class Credential:
    """What a request must carry (None: nothing; only allowed on loopback)."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def of(cls, cfg: HttpConfig) -> Credential | None:
        if not cfg.has_credential:
            return None
        return cls(cfg.token.get_secret_value() if cfg.token else None, cfg.username,
                   cfg.password.get_secret_value() if cfg.password else None)

    def accepts(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        kind, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if kind.lower() == "bearer":
            return self.token is not None and _same(value, self.token)
        if kind.lower() != "basic":
            return False
        try:
            user, sep, pw = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        if not sep:
            return False
        ok_token = self.token is not None and _same(pw, self.token)
        ok_pair = (self.password is not None and self.username is not None
                   and _same(user, self.username) & _same(pw, self.password))
        return ok_token or ok_pair


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class RateLimiter:
    """A token bucket per client address (the oldest forgotten beyond ``max_clients``)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_clients, self.clock = rate, float(burst), max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok


_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     (b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
      b"style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'")),
]


class Guard:
    """ASGI middleware enforcing the rules in the module docstring."""

    def __init__(self, app: ASGIApp, cfg: HttpConfig, credential: Credential | None,
                 loopback_only: bool) -> None:
        self.app = app
        self.credential = credential
        self.loopback_only = loopback_only
        self.max_body = cfg.max_body
        self.limiter = RateLimiter(cfg.rate, cfg.burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = (scope.get("client") or ("?", 0))[0]
        if not self.limiter.allow(client):
            await _plain(send, 429, "too many requests", [(b"retry-after", b"1")])
            return
        if self.loopback_only and not _loopback_host(headers.get("host", "")):
            await _plain(send, 421, "this server answers to loopback names only")
            return
        if self.credential is not None and not self.credential.accepts(headers.get("authorization")):
            await _plain(send, 401, "unauthorized",
                         [(b"www-authenticate", b'Basic realm="flamingo-edge", charset="UTF-8"')])
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != headers.get("host"):
                await _plain(send, 403, "cross-origin write refused")
                return
            if method == "POST" and not headers.get("content-type", "").startswith("application/json"):
                await _plain(send, 415, "a write takes application/json")
                return
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > self.max_body:
            await _plain(send, 413 if length > 0 else 400, "request body too large or invalid")
            return
        await self.app(scope, _bounded(receive, self.max_body), _with_headers(send))


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("["):  # [::1]:port
        name = host[1:].split("]", 1)[0]
    return bool(name) and is_loopback(name)


def _bounded(receive: Receive, limit: int) -> Receive:
    """A body longer than ``limit`` (chunked, no Content-Length) ends the request."""
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        msg = await receive()
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise ValueError("request body too large")
        return msg

    return wrapped


def _with_headers(send: Send) -> Send:
    async def wrapped(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            msg = dict(msg)
            msg["headers"] = list(msg.get("headers", [])) + _SECURITY_HEADERS
        await send(msg)

    return wrapped


async def _plain(send: Send, code: int, text: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *(extra or []), *_SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------- the app
def build_app(metrics: Metrics, health: HealthFn, daemon: RunningDaemon | None = None,
              cfg: HttpConfig | None = None) -> Any:
    """The Starlette app: /metrics, /healthz, and (with a daemon) the page and /api/."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Route

    async def metrics_route(request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def health_route(request: Request) -> Response:
        try:
            info = dict(await asyncio.to_thread(health))
            code = int(info.get("http_status") or (200 if info.get("ok") else 503))
        except Exception as e:  # noqa: BLE001 - report, don't crash the endpoint
            info, code = {"ok": False, "error": f"{type(e).__name__}: {e}"}, 503
        return JSONResponse(json.loads(json.dumps(info, default=str)), status_code=code)

    routes: list[BaseRoute] = [
        Route("/metrics", metrics_route, methods=["GET", "HEAD"]),
        Route("/healthz", health_route, methods=["GET", "HEAD"]),
        Route("/health", health_route, methods=["GET", "HEAD"]),
    ]
    api = None
    if daemon is not None:
        from .web import page_routes

        page, api = page_routes(daemon, metrics, health, cfg or HttpConfig())
        routes += page

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "not found"}, status_code=404)

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.state.api = api
    return app


# ---------------------------------------------------------------------------------- serving
class HttpEndpoint:
    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket,
                 on_stop: Callable[[], None] | None = None) -> None:
        self._server = server
        self._thread = thread
        self._sock = sock
        self._on_stop = on_stop
        self.port = int(sock.getsockname()[1])

    def stop(self) -> None:
        if self._on_stop is not None:
            self._on_stop()  # end the live streams (SSE) so the server can close them
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()


def _bind(host: str, port: int) -> socket.socket:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def start_http_server(
    port: int, metrics: Metrics, health: HealthFn | None = None, host: str = "127.0.0.1",
    *, daemon: RunningDaemon | None = None, config: HttpConfig | None = None,
) -> HttpEndpoint:
    """Serve on ``host:port`` in a thread; raises `OSError` (address in use...) or
    `ValueError` (bound beyond loopback with no credential) in the caller."""
    import uvicorn

    cfg = config or HttpConfig(host=host, port=port)
    credential = Credential.of(cfg)
    loopback = is_loopback(host)
    if not loopback and credential is None:
        raise ValueError(f"http.host {host} is beyond loopback: set http.token "
                         "(or http.username and http.password)")
    register_secret(*cfg.secrets())
    app = build_app(metrics, health or (lambda: {"ok": True}), daemon, cfg)
    guarded = Guard(app, cfg, credential, loopback_only=loopback)
    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(
        guarded, log_config=None, log_level="warning", access_log=False, lifespan="off", loop="asyncio", http="h11",
        ws="none", proxy_headers=False, server_header=False, limit_concurrency=64,
        timeout_graceful_shutdown=2, h11_max_incomplete_event_size=16384))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise OSError("http server did not start")
    api = app.state.api
    ep = HttpEndpoint(server, t, sock, on_stop=api.close if api is not None else None)
    log.info("http endpoint listening", host=host, port=ep.port,
             page=f"http://{host if ':' not in host else f'[{host}]'}:{ep.port}/"
             if daemon is not None else None,
             login="required" if credential is not None else "not required (loopback)")
    return ep
