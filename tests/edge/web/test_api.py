"""The JSON API (docs/HTTP.md) with the real server on a loopback port, against a daemon that
played a recording through the fixture AF2 model: streams, monitors, alerts with their
evidence (HTTP ranges), health = /metrics, "ask now" through the worker's queue, the live feed."""

from __future__ import annotations

import http.client
import json
import time

import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from edge.daemon import Daemon
from edge.sinks import CallbackSink
from streams.file import FileSource

from ..recordings import recording
from .helpers import GATE, get_json, post_json, request, settings

KNOCK = {"name": "knock", "question": "Is there knocking? Answer yes or no.", "every": "20s",
         "severity": "info"}
RULES = {"mqtt": {"enabled": False},
         "rules": {"off_after_negatives": 1, "cooldown_s": 0, "dedupe_window_s": 0}}


@pytest.fixture(scope="module")
def served(af2, tmp_path_factory):
    """A daemon that played 60 s (loud 20-30 s and 40-50 s) through the fixture model, its
    web server on a free loopback port; the results its sinks got."""
    tmp = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal(60 * 16000)).astype(np.float32)
    for a, b in ((20, 30), (40, 50)):
        t = np.arange((b - a) * 16000)
        x[a * 16000:b * 16000] += 0.5 * np.sin(t * 2 * np.pi * 1000 / 16000).astype(np.float32)
    rec = tmp / "r.wav"
    sf.write(rec, x, 16000, subtype="PCM_16")
    very = dict(GATE, name="very-loud", triggers=["level_dbfs > -12"], severity="critical")
    s = settings(tmp, [GATE, very, KNOCK], alerts=RULES, http={"port": 0})
    got = []
    d = Daemon(s, model=af2, sources=[FileSource(rec, "s", speed=0, start_time=time.time() - 60)],
               lossless=True, sinks=[CallbackSink(lambda r, a, sr: got.append(r))])
    d.start()
    try:
        assert d.run(timeout=120)
        deadline = time.time() + 20  # the alert worker writes the history on its own thread
        while d.alerts_pipeline.history.count("results") < len(got) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the last result's alert (recorded after the result)
        yield d, d.http_endpoint.port, got
    finally:
        d.stop()


def test_streams_show_status_levels_and_the_memory_strip(served):
    _, port, _ = served
    (st,) = get_json(port, "/api/streams")["streams"]
    assert st["id"] == "s" and st["source"] == "file" and st["labels"] == {"location": "test bench"}
    assert st["status"] == "ended"  # as /healthz says it (edge.health)
    assert len(st["readings"]) == 6 and [len(r) for r in st["readings"]] == [3] * 6
    levels = [r[1] for r in st["readings"]]
    assert levels[2] > -12 and levels[4] > -12 and levels[1] < -30  # the loud clips stand out
    assert [c["slot"] for c in st["strip"]] == list(range(6))
    assert {c["state"] for c in st["strip"]} == {"encoded"} and st["memory_clips"] == 6
    assert get_json(port, "/api/streams/s")["id"] == "s"
    assert request(port, "/api/streams/nope")[0] == 404


def test_monitors_show_last_answer_score_history_and_state(served):
    _, port, got = served
    mons = {m["monitor"]: m for m in get_json(port, "/api/monitors")["monitors"]}
    assert set(mons) == {"loud", "very-loud", "knock"}
    k = mons["knock"]
    mine = [r for r in got if r.monitor == "knock"]
    assert len(k["history"]) == len(mine) == 3  # every 20 s of 60 s
    assert [h[1] for h in k["history"]] == pytest.approx([r.score for r in mine])
    assert k["last"]["answer"] == mine[-1].answer and k["threshold"] == 0.5
    assert k["question"] == KNOCK["question"] and k["every_s"] == 20.0
    loud = mons["loud"]
    assert [h[2] for h in loud["history"]] == [r.verdict for r in got if r.monitor == "loud"]
    assert loud["state"] == "OFF" and loud["kind"] == "gate"  # the last clip was quiet


def test_alerts_are_paged_filtered_and_carry_their_evidence(served):
    d, port, _ = served
    raised = {m: d.metrics.alerts_raised.labels("s", m)._value.get()
              for m in ("loud", "very-loud", "knock")}
    assert raised["loud"] == raised["very-loud"] == 2  # two loud spans, each monitor ON twice
    n = int(sum(raised.values()))  # (and the knock monitor as the fixture model scores it)
    res = get_json(port, "/api/alerts?limit=3")
    assert res["total"] == n and len(res["alerts"]) == 3
    rest = get_json(port, "/api/alerts?limit=3&offset=3")["alerts"]
    assert len(rest) == n - 3
    ids = [a["id"] for a in res["alerts"] + rest]
    assert len(set(ids)) == n
    times = [a["raised_at"] for a in res["alerts"] + rest]
    assert times == sorted(times, reverse=True)  # newest first
    crit = get_json(port, "/api/alerts?severity=critical")
    assert crit["total"] == 2 and {a["monitor"] for a in crit["alerts"]} == {"very-loud"}
    assert get_json(port, "/api/alerts?monitor=loud&stream=s")["total"] == 2
    assert get_json(port, f"/api/alerts?since={time.time() + 60}")["total"] == 0
    assert get_json(port, "/api/alerts?until=2000-01-01T00:00:00Z")["total"] == 0
    assert request(port, "/api/alerts?since=yesterday")[0] == 400
    one = get_json(port, f"/api/alerts/{ids[0]}")
    assert one["id"] == ids[0] and one["delivery"] == {}  # no sink configured: history only
    assert request(port, "/api/alerts/00000000-0000")[0] == 404


def test_evidence_clip_is_served_with_ranges_and_the_spectrogram_as_png(served):
    d, port, _ = served
    a = get_json(port, "/api/alerts?limit=1")["alerts"][0]
    root = d.alerts_pipeline.clips.root
    flac = (root / a["clip_flac"]).read_bytes()
    code, h, body = request(port, a["clip_url"])
    assert code == 200 and body == flac and h["content-type"] == "audio/flac"
    assert h["accept-ranges"] == "bytes"
    code, h, body = request(port, a["clip_url"], headers={"Range": "bytes=100-199"})
    assert code == 206 and body == flac[100:200]
    assert h["content-range"] == f"bytes 100-199/{len(flac)}"
    code, h, body = request(port, a["clip_url"], headers={"Range": f"bytes={len(flac) - 10}-"})
    assert code == 206 and body == flac[-10:]
    assert request(port, a["clip_url"], headers={"Range": f"bytes={len(flac) + 5}-"})[0] == 416
    code, h, body = request(port, a["spectrogram_url"])
    assert code == 200 and h["content-type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    audio, sr = sf.read(root / a["clip_flac"])
    from datetime import datetime

    span = datetime.fromisoformat(a["end"]) - datetime.fromisoformat(a["start"])
    assert sr == 16000 and len(audio) == round(span.total_seconds() * 16000) >= 160000


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_health_shows_the_same_numbers_as_metrics(served):
    d, port, _ = served
    h = get_json(port, "/api/health")
    text = request(port, "/metrics")[2].decode()
    assert h["ok"] is True and h["model"] == d.model.model_id and h["uptime_s"] > 0
    assert h["status"] == "ok" and set(h["health"]) == set(d.health())  # /healthz inside
    assert h["backend"]
    assert h["clips_encoded"] == _metric(text, "fe_clips_encoded_total") == 6
    assert h["queries"] == _metric(text, "fe_queries_total")
    assert h["encode_seconds"]["count"] == _metric(text, "fe_encode_seconds_count")
    assert h["encode_seconds"]["sum"] == pytest.approx(_metric(text, "fe_encode_seconds_sum"))
    assert h["alerts_raised"] == _metric(text, "fe_alerts_raised_total") >= 4
    assert h["clips_bytes"] == _metric(text, "fe_clips_bytes") > 0
    assert h["history_bytes"] > 0 and h["queries_missed"] == _metric(text, "fe_queries_missed_total")


def test_ask_now_answers_from_memory_through_the_worker_queue(served):
    d, port, got = served
    before = len(got)
    code, r = post_json(port, "/api/ask", {"stream": "s", "question": "Is a tone {sounding}?",
                                           "answer": "yes_no", "window_s": 60})
    assert code == 200, r
    assert r["monitor"] == "ask-now" and r["reason"] == "ask" and r["question"] == "Is a tone {sounding}?"
    assert set(r["probs"]) == {"yes", "no"} and sum(r["probs"].values()) == pytest.approx(1.0)
    assert r["answer"] in ("yes", "no") and r["seconds"] < 60
    # the window is the last 60 s of memory: the six clips of the recording
    assert r["start"] == min(x.start for x in got).isoformat()
    assert r["end"] == max(x.end for x in got).isoformat()
    code, r = post_json(port, "/api/ask", {"stream": "s", "question": "What do you hear?"})
    assert code == 200 and isinstance(r["answer"], str) and r["score"] is None
    assert len(got) == before  # a question asked by hand goes to the asker, not the sinks
    assert all(a["monitor"] != "ask-now" for a in get_json(port, "/api/alerts")["alerts"])
    # counted by the worker just after it hands the answer back (the reply comes first)
    end = time.monotonic() + 5
    while d.metrics.queries.labels("s", "ask-now")._value.get() < 2 and time.monotonic() < end:
        time.sleep(0.01)
    assert d.metrics.queries.labels("s", "ask-now")._value.get() == 2


@pytest.mark.parametrize("body, code", [
    ({"stream": "nope", "question": "q?"}, 400),
    ({"stream": "s", "question": ""}, 400),
    ({"stream": "s", "question": "x" * 501}, 400),
    ({"stream": "s", "question": "q?", "window_s": 10}, 400),
    ({"stream": "s", "question": "q?", "window_s": 600}, 400),
    ({"stream": "s", "question": "q?", "answer": "essay"}, 400),
    ({"stream": "s", "question": "q?", "answer": "choice", "choices": ["a"]}, 400),
    (["not", "an", "object"], 400),
])
def test_ask_now_rejects_bad_questions(served, body, code):
    assert post_json(served[1], "/api/ask", body)[0] == code


@pytest.mark.parametrize("body, field", [
    ({"stream": ["s"], "question": "q?"}, "stream"),
    ({"stream": {"s": 1}, "question": "q?"}, "stream"),
    ({"stream": "s", "question": "q?", "answer": ["text"]}, "answer"),
    ({"stream": "s", "question": "q?", "answer": "choice", "choices": ["a"]}, "choices"),
    ({"stream": "s", "question": "q?", "answer": "choice", "choices": ["a", "a"]}, "choices"),
])
def test_ask_now_names_the_bad_field_instead_of_failing(served, body, field):
    code, r = post_json(served[1], "/api/ask", body)
    assert code == 400, r
    assert r["error"].startswith(f"{field}: "), r


def test_ask_now_choice_scores_every_option(served):
    code, r = post_json(served[1], "/api/ask", {"stream": "s", "question": "Which sound?",
                                                "answer": "choice",
                                                "choices": ["tone", "knocking", "silence"]})
    assert code == 200 and set(r["probs"]) == {"tone", "knocking", "silence"}
    assert r["choice"] in r["probs"]


def test_the_page_and_its_vendored_files_are_served(served):
    port = served[1]
    code, h, body = request(port, "/")
    assert code == 200 and h["content-type"].startswith("text/html")
    assert b"/static/vendor/uPlot.iife.min.js" in body and b"/static/app.js" in body
    assert b"https://" not in body  # nothing from a CDN
    for path in ("/static/app.js", "/static/app.css", "/static/vendor/uPlot.iife.min.js",
                 "/static/vendor/uPlot.min.css", "/static/vendor/uPlot.LICENSE"):
        code, h, body = request(port, path)
        assert code == 200 and body, path
    assert b"MIT" in request(port, "/static/vendor/uPlot.LICENSE")[2]
    assert "default-src 'self'" in h["content-security-policy"]
    assert request(port, "/static/../config.py")[0] == 404


def _events(port: int, want: set[str], timeout: float = 30) -> dict[str, list]:
    """Read the live feed until every event kind in ``want`` arrived."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", "/api/events")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    got: dict[str, list] = {}
    kind = None
    end = time.monotonic() + timeout
    try:
        while not want <= set(got) and time.monotonic() < end:
            line = r.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                got.setdefault(kind, []).append(json.loads(line[6:]))
    finally:
        c.close()
    return got


def test_live_feed_sends_readings_results_alerts_and_health(tmp_path):
    rec = recording(tmp_path / "r.wav", seconds=40, loud=(20, 30))
    s = settings(tmp_path, [GATE], http={"port": 0})
    d = Daemon(s, sources=[FileSource(rec, "s", speed=20)])  # a clip every half second
    d.start()
    try:
        ev = _events(d.http_endpoint.port, {"reading", "result", "alert", "health"})
        assert ev["health"][0]["ok"] is True and ev["health"][0]["uptime_s"] >= 0
        readings = [r for e in ev["reading"] for r in e["readings"]]
        assert readings and all(len(r) == 3 for r in readings)
        assert ev["reading"][-1]["stream"] == "s" and ev["reading"][-1]["strip"]
        assert {e["monitor"] for e in ev["result"]} == {"loud"}
        assert ev["alert"][0]["monitor"] == "loud" and ev["alert"][0]["spectrogram_url"]
    finally:
        d.stop()
