"""The JSON API under ``/api/`` (documented in docs/HTTP.md) and the live feed (SSE).

Everything the page shows comes from here, so Node-RED or Grafana can read the same:
streams (status, level/novelty history, memory strip), monitors (last answer, score history,
ON/OFF), alerts (paged, filtered, with evidence clip and spectrogram served from the clip
store), health (the `/metrics` numbers) and "ask now". Reads run off the event loop
(``asyncio.to_thread``) so a slow SQLite read never stalls the live feed.

Nothing secret is returned: stream sources appear as their kind and the redacted status of
network sources (never a URL from the config), the configuration's credentials never.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..constants import SAMPLE_RATE
from ..metrics import Metrics
from ..running import RunningDaemon
from .live import compact

if TYPE_CHECKING:
    from ..config import HttpConfig

STRIP = 30  # clips in a stream's memory strip
MAX_SUBSCRIBERS = 16  # live feeds open at once
ANSWERS = ("text", "yes_no", "choice")


def _error(code: int, text: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": text, **extra}, status_code=code,
                        headers={"cache-control": "no-store"})


def _json(data: Any) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(data, default=str)),
                        headers={"cache-control": "no-store"})


def _num(v: float | None, nd: int = 2) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


class Api:
    def __init__(self, daemon: RunningDaemon, metrics: Metrics, health: Callable[[], dict[str, Any]],
                 cfg: HttpConfig) -> None:
        self.d = daemon
        self.metrics = metrics
        self.health_fn = health
        self.cfg = cfg
        self.closed = threading.Event()
        self.subscribers = 0

    def close(self) -> None:
        self.closed.set()

    # ------------------------------------------------------------------ streams
    def stream_status(self, sid: str) -> str:
        """The stream's state as /healthz says it (`edge.health`: starting, live, silent,
        reconnecting, ended), or ``gap`` while live but the newest clip held a gap."""
        from ..health import stream_health

        state = stream_health(self.d)[sid].state
        heard = list(self.d.streams[sid].heard)
        if state == "live" and heard and heard[-1][3] > 0:
            return "gap"
        return state

    def source_status(self, sid: str) -> dict[str, Any] | None:
        for src in self.d.sources:
            status = getattr(src, "status", None)
            if callable(status) and sid in getattr(src, "streams", ()):
                st = status().get(sid)
                if st is not None:  # URL sources redact their URL themselves; drop it anyway
                    return {k: v for k, v in st.items() if k != "url"}
        return None

    def stream(self, sid: str, minutes: float = 30.0) -> dict[str, Any]:
        s = self.d.streams[sid]
        heard = list(s.heard)
        cutoff = time.time() - minutes * 60
        readings = [[_num(t, 3), _num(r.level_dbfs), _num(r.novelty)]
                    for _, t, r, _ in heard if t is None or t >= cutoff]
        last = heard[-1][2] if heard else None
        return {
            "id": sid, "source": s.cfg.source, "labels": s.labels, "status": self.stream_status(sid),
            "source_status": self.source_status(sid),
            "level_dbfs": _num(last.level_dbfs) if last else None,
            "novelty": _num(last.novelty) if last else None,
            "memory_clips": len(s.memory), "memory_capacity": s.memory_clips,
            "clip_s": s.clip_len / SAMPLE_RATE, "hop_s": s.hop / SAMPLE_RATE,
            "readings": readings, "strip": self.strip(sid),
        }

    def strip(self, sid: str) -> list[dict[str, Any]]:
        """The last `STRIP` clip slots: encoded (in memory), masked (in memory, all gap),
        heard (gated only: no model, or not encoded yet) or dropped (no trace)."""
        s = self.d.streams[sid]
        mem = {c.index: c for c in s.memory.clips()}
        heard = {i: r for i, _, r, _ in list(s.heard)}
        if not mem and not heard:
            return []
        last = max([*mem, *heard])
        first = max(last - STRIP + 1, min([*mem, *heard]))
        out = []
        for k in range(first, last + 1):
            c, r = mem.get(k), heard.get(k)
            reading = (c.reading if c is not None else None) or r
            state = ("encoded" if c.valid else "masked") if c is not None else (
                "heard" if r is not None else "dropped")
            out.append({"slot": k, "state": state,
                        "novelty": _num(reading.novelty) if reading else None,
                        "level_dbfs": _num(reading.level_dbfs) if reading else None})
        return out

    async def streams(self, request: Request) -> Response:
        minutes = _float(request.query_params.get("minutes"), 30.0, 1.0, 60.0)
        return _json({"streams": await asyncio.to_thread(
            lambda: [self.stream(sid, minutes) for sid in self.d.streams])})

    async def one_stream(self, request: Request) -> Response:
        sid = request.path_params["id"]
        if sid not in self.d.streams:
            return _error(404, "no such stream")
        minutes = _float(request.query_params.get("minutes"), 30.0, 1.0, 60.0)
        return _json(await asyncio.to_thread(self.stream, sid, minutes))

    # ------------------------------------------------------------------ monitors
    def monitors(self, limit: int = 360) -> list[dict[str, Any]]:
        live = self.d.live
        if live is not None:
            live.tick()
        out = []
        for sid in self.d.streams:
            for m in self.d.settings.monitors_for(sid):
                hist = live.history(sid, m.name, limit) if live is not None else []
                out.append({
                    "stream": sid, "monitor": m.name, "kind": m.kind, "question": m.question,
                    "answer": m.answer if m.kind == "af2" else None,
                    "every_s": m.every, "triggers": m.triggers, "severity": m.severity,
                    "threshold": m.threshold if m.kind == "af2" else None,
                    "hysteresis": m.hysteresis if m.kind == "af2" else None,
                    "window_s": m.window if m.window is not None else self.d.settings.audio.window,
                    **(live.state(sid, m.name) if live is not None else {"state": None}),
                    "last": hist[-1] if hist else None,
                    "history": [[h["t"], h["score"], h["verdict"], h["latency_s"]] for h in hist],
                })
        return out

    async def monitor_list(self, request: Request) -> Response:
        limit = int(_float(request.query_params.get("limit"), 360, 1, 360))
        return _json({"monitors": await asyncio.to_thread(self.monitors, limit)})

    # ------------------------------------------------------------------ alerts
    def _clip_root(self) -> Path | None:
        p = self.d.alerts_pipeline
        if p is not None and p.clips is not None:
            return p.clips.root
        return None

    def _with_links(self, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        p = self.d.alerts_pipeline
        sinks = list(getattr(p, "_sinks", [])) if p is not None else []
        waiting = p.outbox.waiting([a["id"] for a in alerts]) if p and p.outbox else {}
        for a in alerts:
            a.pop("extra", None)  # internal bookkeeping (clip slots, offsets)
            a["clip_url"] = f"/api/clips/{a['clip_flac']}" if a.get("clip_flac") else None
            a["spectrogram_url"] = f"/api/clips/{a['clip_png']}" if a.get("clip_png") else None
            w = waiting.get(a["id"], {})
            a["delivery"] = {s: ({"state": "pending", **w[s]} if s in w else {"state": "done"})
                             for s in sinks}
        return alerts

    def alerts(self, q: dict[str, str]) -> dict[str, Any]:
        p = self.d.alerts_pipeline
        limit = int(_float(q.get("limit"), 20, 1, 200))
        offset = int(_float(q.get("offset"), 0, 0, 1e9))
        if p is None or p.history is None:
            return {"alerts": [], "total": 0, "limit": limit, "offset": offset}
        rows, total = p.history.page_alerts(
            stream=q.get("stream") or None, monitor=q.get("monitor") or None,
            severity=q.get("severity") or None, since=_time(q.get("since")),
            until=_time(q.get("until")), limit=limit, offset=offset)
        return {"alerts": self._with_links(rows), "total": total, "limit": limit, "offset": offset}

    async def alert_list(self, request: Request) -> Response:
        try:
            data = await asyncio.to_thread(self.alerts, dict(request.query_params))
        except ValueError as e:
            return _error(400, str(e))
        return _json(data)

    async def one_alert(self, request: Request) -> Response:
        p = self.d.alerts_pipeline
        aid = request.path_params["id"]
        if p is None or p.history is None or len(aid) < 8:
            return _error(404, "no such alert")
        a = await asyncio.to_thread(p.history.get_alert, aid)
        if a is None:
            return _error(404, "no such alert")
        return _json(self._with_links([a])[0])

    async def clip(self, request: Request) -> Response:
        """An evidence file from the clip store (FLAC or PNG), with HTTP range requests.
        The path must resolve inside the store: no '..', no absolute path, no symlink out."""
        root = self._clip_root()
        rel = request.path_params["path"]
        if root is None:
            return _error(404, "no clip store")
        path = _inside(root, rel)
        if path is None or path.suffix not in (".flac", ".png") or not path.is_file():
            return _error(404, "no such clip")
        media = "audio/flac" if path.suffix == ".flac" else "image/png"
        return FileResponse(path, media_type=media, headers={"cache-control": "private, max-age=3600"})

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        d = self.d
        fams = {f.name: f for f in self.metrics.registry.collect()}

        def total(name: str, suffix: str = "_total", **match: str) -> float:
            f = fams.get(name)
            if f is None:
                return 0.0
            return float(sum(s.value for s in f.samples if s.name == name + suffix
                             and all(s.labels.get(k) == v for k, v in match.items())))

        def by(name: str, label: str, suffix: str = "_total") -> dict[str, float]:
            f = fams.get(name)
            out: dict[str, float] = {}
            for s in (f.samples if f else []):
                if s.name == name + suffix:
                    out[s.labels.get(label, "")] = out.get(s.labels.get(label, ""), 0.0) + s.value
            return out

        try:
            h = dict(self.health_fn())
        except Exception as e:  # noqa: BLE001 - reported in the document, like /healthz
            h = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        enc = d.worker.encoder if d.worker is not None else None
        data_dir = Path(d.data_dir)
        return {
            "ok": bool(h.get("ok")),
            "status": h.get("status"),  # ok / degraded / failing (edge.health)
            "reasons": h.get("reasons", []),
            "uptime_s": round(time.monotonic() - d.started_at, 1) if d.started_at else None,
            "model": getattr(d.model, "model_id", None) if d.model is not None else None,
            "backend": _backend(enc),
            "encode_seconds": {"count": total("fe_encode_seconds", "_count"),
                               "sum": total("fe_encode_seconds", "_sum")},
            "query_seconds": {"count": total("fe_query_seconds", "_count"),
                              "sum": total("fe_query_seconds", "_sum")},
            "decode_tokens_per_second": total("fe_decode_tokens_per_second", ""),
            "clips_encoded": total("fe_clips_encoded"),
            "clips_dropped": by("fe_clips_dropped", "reason"),
            "queries": total("fe_queries"),
            "queries_missed": total("fe_queries_missed"),
            "queries_failed": total("fe_queries_failed"),
            "alerts_raised": total("fe_alerts_raised"),
            "alerts_queued": total("fe_alerts_queued", ""),
            "mqtt_connected": total("fe_mqtt_connected", ""),
            "clips_bytes": total("fe_clips_bytes", ""),
            "history_bytes": sum(_size(data_dir / f"history.sqlite3{x}") for x in ("", "-wal")),
            "outbox_bytes": sum(_size(data_dir / f"outbox.sqlite3{x}") for x in ("", "-wal")),
            "health": h,
        }

    async def health_route(self, request: Request) -> Response:
        return _json(await asyncio.to_thread(self.health))

    # ------------------------------------------------------------------ ask now
    async def ask(self, request: Request) -> Response:
        from ..worker.ask import AskError

        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any undecodable body is the client's error
            return _error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        sid, question = body.get("stream"), body.get("question")
        answer = body.get("answer", "text")
        choices = body.get("choices") or []
        if not isinstance(sid, str) or sid not in self.d.streams:
            return _error(400, "stream: no such stream")
        if not isinstance(question, str) or not 1 <= len(question.strip()) <= 500:
            return _error(400, "question: 1-500 characters")
        if answer not in ANSWERS:
            return _error(400, f"answer: one of {', '.join(ANSWERS)}")
        if not isinstance(choices, list) or len(choices) > 10 or not all(
                isinstance(c, str) and 0 < len(c) <= 60 for c in choices):
            return _error(400, "choices: up to 10 strings of 1-60 characters")
        if answer == "choice" and (len(choices) < 2 or len(set(choices)) != len(choices)):
            return _error(400, "choices: 2-10 distinct options for answer: choice")
        try:
            window = float(body.get("window_s", 30))
        except (TypeError, ValueError):
            return _error(400, "window_s: a number of seconds")
        if not 30 <= window <= 300:
            return _error(400, "window_s: 30-300 seconds")
        if self.d.worker is None:
            return _error(503, "not running")
        try:
            fut = self.d.worker.ask(sid, question.strip(), answer=answer, choices=choices,
                                    window_s=window, deadline_s=self.cfg.ask_deadline,
                                    max_waiting=self.cfg.max_asks)
        except AskError as e:
            return _error(429 if e.reason == "busy" else 409 if e.reason == "no_audio" else 503,
                          str(e), reason=e.reason)
        except ValueError as e:  # the answer spec (choices) is invalid
            errors = getattr(e, "errors", None)  # pydantic: the message, not its footer
            text = errors()[0]["msg"].removeprefix("Value error, ") if callable(errors) else str(e)
            return _error(400, f"choices: {text}")
        t0 = time.monotonic()
        try:
            # start within the deadline; then the model call itself (bounded by its tokens)
            res = await asyncio.wait_for(asyncio.wrap_future(fut), self.cfg.ask_deadline + 120)
        except AskError as e:
            return _error(504 if e.reason == "deadline" else 503, str(e), reason=e.reason)
        except asyncio.TimeoutError:
            return _error(504, "not answered in time", reason="deadline")
        out = compact(res)
        out["seconds"] = round(time.monotonic() - t0, 3)
        return _json(out)

    # ------------------------------------------------------------------ live feed (SSE)
    async def events(self, request: Request) -> Response:
        if self.subscribers >= MAX_SUBSCRIBERS:
            return _error(503, "too many live feeds open")
        return StreamingResponse(self._feed(request), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def _feed(self, request: Request) -> AsyncIterator[bytes]:
        """Events: ``reading`` (a clip heard: stream, t, level, novelty, status, strip),
        ``result`` (a monitor result), ``alert`` (a new alert), ``health`` (every 5 s)."""
        live = self.d.live
        seq = live.seq if live is not None else 0
        slots = {sid: (s.heard[-1][0] if s.heard else -1) for sid, s in self.d.streams.items()}
        seen_alerts: set[str] = set()
        first = True
        next_health = 0.0
        next_ping = time.monotonic() + 15
        self.subscribers += 1  # counted here, so the finally below always uncounts it
        try:
            yield b"retry: 2000\n\n"
            while not self.closed.is_set():
                out: list[tuple[str, Any]] = []
                for sid, s in self.d.streams.items():
                    new = [h for h in list(s.heard) if h[0] > slots[sid]]
                    if new:
                        slots[sid] = new[-1][0]
                        out.append(("reading", {
                            "stream": sid, "status": self.stream_status(sid),
                            "readings": [[_num(t, 3), _num(r.level_dbfs), _num(r.novelty)]
                                         for _, t, r, _ in new],
                            "strip": self.strip(sid), "memory_clips": len(s.memory)}))
                if live is not None:
                    for r in live.since(seq):
                        seq = r["seq"]
                        out.append(("result", r))
                fresh = await asyncio.to_thread(self.alerts, {"limit": "10"})
                for a in reversed(fresh["alerts"]):
                    if a["id"] not in seen_alerts:
                        seen_alerts.add(a["id"])
                        if not first:
                            out.append(("alert", a))
                first = False
                now = time.monotonic()
                if now >= next_health:
                    next_health = now + 5
                    out.append(("health", await asyncio.to_thread(self.health)))
                for kind, data in out:
                    yield f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()
                if not out and now >= next_ping:
                    yield b": ping\n\n"
                if out:
                    next_ping = now + 15
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.5)
        finally:
            self.subscribers -= 1


def _float(v: str | None, default: float, lo: float, hi: float) -> float:
    try:
        x = float(v) if v not in (None, "") else default
    except ValueError:
        return default
    return min(hi, max(lo, x)) if math.isfinite(x) else default


def _time(v: str | None) -> float | None:
    """UNIX seconds or an ISO 8601 time -> UNIX seconds."""
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("since/until: UNIX seconds or an ISO 8601 time") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it resolves (symlinks followed) to a file under ``root``, else None."""
    if not rel or "\x00" in rel or rel.startswith(("/", "\\")) or "\\" in rel:
        return None
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return None
    base = root.resolve()
    try:
        p = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return p if p.is_relative_to(base) else None


def _backend(enc: object) -> str | None:
    """The encoder backend as its log line says it (`edge.encoder_backends`)."""
    describe = getattr(enc, "describe", None)
    if callable(describe):
        return str(describe())
    return None if enc is None else "torch"


def _size(p: Path) -> int:
    try:
        return os.stat(p).st_size
    except OSError:
        return 0


def api_routes(api: Api) -> list[BaseRoute]:
    return [
        Route("/api/streams", api.streams),
        Route("/api/streams/{id}", api.one_stream),
        Route("/api/monitors", api.monitor_list),
        Route("/api/alerts", api.alert_list),
        Route("/api/alerts/{id}", api.one_alert),
        Route("/api/clips/{path:path}", api.clip),
        Route("/api/health", api.health_route),
        Route("/api/ask", api.ask, methods=["POST"]),
        Route("/api/events", api.events),
    ]
