"""The daemon with threads: model-free runs, the alert pipeline, http, misbehaving sources."""

import json
import time
import urllib.request

import numpy as np
from click.testing import CliRunner

from edge.cli import cli
from edge.config import load_settings
from edge.daemon import Daemon
from edge.sinks import CallbackSink
from streams.base import Frame, Source
from streams.file import FileSource

from .fakes import FakeModel
from .recordings import recording


def settings(tmp_path, monitors, **extra):
    return load_settings(data={"data_dir": str(tmp_path / "data"),
                               "streams": [{"id": "s", "source": "file", "path": "x"}],
                               "monitors": monitors, "alerts": {"mqtt": {"enabled": False}},
                               **extra})


GATE = [{"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -20"], "cooldown": 0,
         "severity": "warning"}]


def test_model_free_daemon_runs_to_the_end_with_alerts_and_http(tmp_path):
    rec = recording(tmp_path / "r.wav")
    s = settings(tmp_path, GATE + [{"name": "q", "question": "q?", "every": "10s"}],
                 http={"enabled": True, "port": 0})
    got = []
    d = Daemon(s, sources=[FileSource(rec, "s", speed=0, start_time=0.0)], lossless=True,
               sinks=[CallbackSink(lambda r, a, sr: got.append((r, a)))])
    d.start()
    try:
        assert d.run(timeout=60)
        port = d.http_endpoint.port
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())
    finally:
        d.stop()
    assert [(r.monitor, r.verdict) for r, _ in got] == [("loud", "positive"), ("loud", "negative")]
    r, audio = got[0]
    assert r.start.timestamp() == 30.0 and r.end.timestamp() == 40.0
    assert audio.read().shape == (160000,)
    assert 'fe_samples_in_total{stream="s"} 960000.0' in metrics
    assert health["ok"] and health["streams"]["s"]["samples"] == 960000
    assert (tmp_path / "data" / "history.sqlite3").exists()  # the alert pipeline ran


class Flaky(Source):
    """Raises twice, then plays 20 s and ends."""

    finite = False

    def __init__(self):
        self.streams = ("s",)
        self.calls = 0

    def run(self, emit, stop):
        self.calls += 1
        if self.calls <= 2:
            raise RuntimeError("device on fire")
        for i in range(200):
            emit(Frame("s", i * 1600, 0.0, i, np.full(1600, 0.5, np.float32)))
        stop.wait()


def test_a_failing_source_is_restarted(tmp_path):
    s = settings(tmp_path, GATE)
    src = Flaky()
    got = []
    d = Daemon(s, sources=[src], sinks=[CallbackSink(lambda r, a, sr: got.append(r))],
               alerts=False, source_backoff=(0.01, 0.02))
    d.start()
    try:
        t = time.time() + 20
        while len(got) < 1 and time.time() < t:
            time.sleep(0.05)
    finally:
        d.stop(timeout=4)
    assert src.calls == 3 and got and got[0].monitor == "loud"


def test_live_mode_never_blocks_ingest_and_counts_dropped_clips(tmp_path):
    rec = recording(tmp_path / "r.wav", seconds=120)
    s = settings(tmp_path, [], audio={"max_pending_clips": 1, "encode_batch": 1})
    model = FakeModel(encode_delay=0.2)
    d = Daemon(s, model=model, sources=[FileSource(rec, "s", speed=0)], alerts=False)
    t0 = time.monotonic()
    d.start()
    try:
        assert d.run(timeout=60)
    finally:
        d.stop()
    m = d.metrics
    encoded = m.clips_encoded.labels("s")._value.get()
    dropped = m.clips_dropped.labels("s", "behind")._value.get()
    assert encoded + dropped == 12 and dropped > 0
    assert time.monotonic() - t0 < 0.2 * 12  # the source did not wait for the encoder


def test_run_command_plays_the_embedded_demo(tmp_path):
    res = CliRunner().invoke(cli, ["run", "--speed", "0", "--data-dir", str(tmp_path),
                                   "--log-format", "json"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "no AF2 weights given" in out and "flamingo-edge model fetch" in out and "--model" in out
    events = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    results = [e for e in events if e.get("event") == "monitor result"]
    assert {"loud", "unusual-sound"} <= {e["monitor"] for e in results}
    assert (tmp_path / "demo" / "machine-room-v1.flac").exists()
    assert events[-1]["event"] == "stopped"
    # it says what it is doing before the first result
    said = [e["event"] for e in events]
    assert said.index("generating the demo recording (first run only)") < said.index("monitor result")
    # the events it promises (knocking 1:00, alarm 2:20, knocking 3:15) each raise an alert:
    # a gate's single "clear" ends its event, so the second knock is a new one
    raised = [e for e in events if e.get("event") == "alert raised"]
    assert [e["monitor"] for e in raised] == ["unusual-sound", "loud", "unusual-sound", "unusual-sound"]
    summary = out[out.index("demo finished"):]
    assert summary.startswith("demo finished: 4 alert(s) raised")
    for line in ("1:00.0-1:10.0 unusual-sound", "2:20.0-2:30.0 loud", "3:10.0-3:20.0 unusual-sound",
                 f"flamingo-edge alerts list --data-dir {tmp_path}"):
        assert line in summary
    res = CliRunner().invoke(cli, ["alerts", "list", "--data-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0 and len(res.output.splitlines()) == 4


def test_run_says_it_loads_pytorch_before_the_model(tmp_path):
    """With --model, the seconds of `import torch` passed without a word: the line saying so
    came after the model had loaded."""
    res = CliRunner().invoke(cli, ["run", "--model", str(tmp_path / "no-such-model"), "--data-dir",
                                   str(tmp_path), "--log-format", "json"])
    assert res.exit_code == 1 and "cannot load the AF2 model" in res.output, res.output
    said = [json.loads(x)["event"] for x in res.output.splitlines() if x.startswith("{")]
    assert said.index("loading the inference code (PyTorch)") < said.index("loading the AF2 model")


def test_replay_timeline_model_free(tmp_path):
    rec = recording(tmp_path / "r.wav")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("streams: [{id: s, source: mic}]\nmonitors:\n"
                   "  - {name: loud, kind: gate, triggers: ['level_dbfs > -20'], cooldown: 0}\n")
    res = CliRunner().invoke(cli, ["replay", str(rec), "--config", str(cfg), "--no-progress",
                                   "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.stdout.splitlines() if x.strip()]
    assert len(lines) == 2 and "00:30.0-00:40.0" in lines[0] and "positive" in lines[0]


def test_invalid_config_fails_before_start(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("alerts: {webhook: {enabled: true, secret: 'abc-very-secret'}}\n"
                   "streams: [{id: s, source: file}]\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert res.exit_code != 0
    assert "streams[s]" in res.output and "alerts.webhook" in res.output
    assert "abc-very-secret" not in res.output


def test_fast_file_logs_heard_utc_and_the_file_offset_apart(tmp_path):
    """Like the 8x demo, at 40x: the result for file 0:30-0:40 is stamped with the wall time at
    which it was heard (start + 0.75..1 s), never start + 30 s (a UTC in the future); `at`
    keeps the offset in the file."""
    import structlog

    from edge.sinks import LogSink

    rec = recording(tmp_path / "r.wav", seconds=40)
    got = []
    s = settings(tmp_path, GATE)
    d = Daemon(s, sources=[FileSource(rec, "s", speed=40, start_time=1000.0)], alerts=False,
               http=False, log_results=False,
               sinks=[CallbackSink(lambda r, a, sr: got.append(r))])
    d.start()
    try:
        assert d.run(timeout=60)
    finally:
        d.stop()
    r = got[0]
    assert r.extra["offset_s"] == [30.0, 40.0]
    assert r.start.timestamp() == 1000.0 + 30 / 40 and r.end.timestamp() == 1000.0 + 40 / 40
    with structlog.testing.capture_logs() as logs:
        LogSink().submit(r, None, 16000)
    assert logs[0]["at"] == "0:30.0-0:40.0"


def test_replay_text_is_in_time_order_and_escapes_answers(tmp_path, monkeypatch):
    """Answers with newlines / terminal escapes printed raw broke the timeline apart, and a
    30-s question listed after the 10-s gate results it started before."""
    import edge.daemon

    model = FakeModel(answer="knock\nknock\x1b[2J\x00 \u202eend\\")
    monkeypatch.setattr(edge.daemon, "load_model", lambda *a, **k: model)
    rec = recording(tmp_path / "r.wav", seconds=60, loud=(30, 40))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("streams: [{id: s, source: mic}]\nmonitors:\n"
                   "  - {name: loud, kind: gate, triggers: ['level_dbfs > -40'], cooldown: 0}\n"
                   "  - {name: what, question: 'What?', answer: text, every: 30s, window: 30s}\n")
    res = CliRunner().invoke(cli, ["replay", str(rec), "--config", str(cfg), "--no-progress",
                                   "--model", str(tmp_path), "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    what = [x for x in lines if " what " in x]
    assert len(what) == 2 and len([x for x in lines if " loud " in x]) == 6
    assert all(x.endswith("knock\\nknock\\x1b[2J\\x00 \\u202eend\\\\") for x in what)
    assert not any(c in res.stdout for c in "\x1b\x00\u202e")
    starts = [x.split("-", 1)[0] for x in lines]
    assert starts == sorted(starts) and lines[0].startswith("00:00.0-00:10.0  s")
    assert any(x.startswith("00:00.0-00:30.0") and " what " in x for x in lines[:2])


def test_demo_summary_keeps_each_alert_on_one_safe_line(tmp_path):
    """The summary printed a text answer raw: its newlines split an alert's line and an ESC
    sequence reached the terminal."""
    from edge.demo import demo_summary

    out = demo_summary([{"offset_s": [140.0, 170.0], "monitor": "describe", "severity": "info",
                         "answer": "an alarm\nthen\x1b[2J quiet"}], tmp_path, None)
    lines = out.splitlines()
    assert len(lines) == 4 and "\x1b" not in out
    assert lines[1].endswith("describe       info     an alarm\\nthen\\x1b[2J quiet")
