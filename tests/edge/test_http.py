"""/metrics + /healthz over a real socket."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path


from alerts.config import AlertsConfig
from edge.http import start_http_server
from edge.metrics import Metrics


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_and_healthz() -> None:
    m = Metrics()
    m.alerts_sent.labels("mqtt").inc(3)
    m.mqtt_connected.set(1)
    state = {"ok": True, "mqtt": {"connected": True}}
    ep = start_http_server(0, m, lambda: dict(state), host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{ep.port}"
        code, body = _get(base + "/metrics")
        assert code == 200
        assert 'fe_alerts_sent_total{sink="mqtt"} 3.0' in body and "fe_mqtt_connected 1.0" in body
        for name in ("fe_frames_in_total", "fe_frames_dropped_total", "fe_gap_samples_total", "fe_encode_seconds",
                     "fe_clips_behind", "fe_query_seconds", "fe_decode_tokens_per_second", "fe_alerts_queued",
                     "fe_alerts_failed_total"):
            assert f"# TYPE {name.removesuffix('_total')}" in body, name
        code, body = _get(base + "/healthz")
        assert code == 200 and json.loads(body)["mqtt"]["connected"] is True
        state["ok"] = False
        code, body = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["ok"] is False
        assert _get(base + "/nope")[0] == 404
    finally:
        ep.stop()


def test_healthz_503_when_health_raises() -> None:
    def broken() -> dict:
        raise RuntimeError("worker gone")

    ep = start_http_server(0, Metrics(), broken, host="127.0.0.1")
    try:
        code, body = _get(f"http://127.0.0.1:{ep.port}/healthz")
        assert code == 503 and "worker gone" in body
    finally:
        ep.stop()


def test_pipeline_health_plugs_into_healthz(tmp_path: Path) -> None:
    from alerts.pipeline import AlertPipeline

    cfg = AlertsConfig.model_validate({"node_id": "n", "mqtt": {"enabled": False}})
    p = AlertPipeline(cfg, Metrics(), "b", tmp_path).start()
    ep = start_http_server(0, p.metrics, p.health, host="127.0.0.1")
    try:
        assert _get(f"http://127.0.0.1:{ep.port}/healthz")[0] == 200
        p.stop(2)
        code, body = _get(f"http://127.0.0.1:{ep.port}/healthz")
        assert code == 503 and json.loads(body)["worker_alive"] is False
    finally:
        ep.stop()
