"""A real SIGTERM reaching `flamingo-edge run` while the worker is busy with queries.

The process is started as an operator (or systemd) would: `python -m edge run --config ...`
with the af2-tiny fixture model, a real mosquitto for the alerts, four file streams played as
fast as possible (so the worker has far more 1024-token text queries queued than it can finish
in the stop's drain time) and a gate monitor that raises alerts. SIGTERM arrives once answers
are flowing. The process must exit 0 within its stop deadline (`run` stops with a 10-s
timeout), and nothing may be lost silently: every text query due is answered, skipped as late,
or counted in the one "work abandoned" line (queued and in flight); every alert raised is
either received by a subscriber or still in the outbox, and the pipeline's last line says so.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import soundfile as sf

from tests.mqtt_broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "af2-tiny" / "checkpoint"
SR = 16000
CLIPS = 12  # per stream: 120 s of audio
STREAMS = ("a", "b", "c", "d")
TALK = ("talk1", "talk2", "talk3")  # text monitors
STOP_TIMEOUT_S = 10.0  # edge/run_cli.py: d.stop(timeout=10)


def _audio(path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(CLIPS * 10 * SR) / SR
    x = 0.02 * rng.standard_normal(t.size)
    for s in range(5, CLIPS * 10, 20):  # a loud tone every 20 s: the gate monitor's alerts
        x[s * SR:(s + 2) * SR] = 0.8 * np.sin(2 * np.pi * 440 * t[s * SR:(s + 2) * SR])
    sf.write(path, x.astype(np.float32), SR)


def _config(tmp: Path, broker: Mosquitto) -> Path:
    wav = tmp / "a.wav"
    _audio(wav)
    cfg = {
        "data_dir": str(tmp / "data"),
        "streams": [{"id": s, "source": "file", "path": str(wav), "speed": 0} for s in STREAMS],
        "monitors": [
            # long generations (sampling at a high temperature rarely meets EOS); each its own
            # batch (different seeds), so the queue holds far more work than the drain time
            *({"name": m, "question": "Describe the sound in detail.", "answer": "text",
               "every": "10s", "window": "10s",
               "decoding": {"max_new_tokens": 1024, "greedy": False, "temperature": 3.0, "seed": i}}
              for i, m in enumerate(TALK)),
            {"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -12"], "cooldown": 0,
             "severity": "warning"},
        ],
        "alerts": {"mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": "fe-term"},
                   "rules": {"cooldown_s": 0, "dedupe_window_s": 0}},
        "http": {"enabled": False},
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def _events(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_sigterm_during_queries_exits_in_time_and_accounts_for_everything(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    received: list[dict[str, Any]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="term-sub")
    sub.on_message = lambda _c, _u, m: received.append(json.loads(m.payload))
    sub.connect(broker.host, broker.port)
    sub.subscribe("fe-term/events", qos=1)
    sub.loop_start()
    proc = None
    try:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(_config(tmp_path, broker)),
             "--model", str(FIXTURE), "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        lines: list[str] = []
        answered = threading.Event()

        def read() -> None:
            assert proc is not None and proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if '"monitor": "talk' in line and '"monitor result"' in line:
                    answered.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert answered.wait(120), "no answer within 120 s:\n" + "".join(lines[-30:])
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(STOP_TIMEOUT_S + 20)
        exit_s = time.monotonic() - t_term
        reader.join(10)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        time.sleep(0.5)  # the last PUBLISHes reach the subscriber
        sub.loop_stop()
        sub.disconnect()
        broker.stop()

    log = _events(lines)
    names = [e.get("event") for e in log]
    assert rc == 0, (rc, [ln[:200] for ln in lines[-8:]])
    # within the deadline `run` stops with (plus the interpreter's exit)
    assert exit_s < STOP_TIMEOUT_S + 3, exit_s

    # the worker was still busy: queued work (and maybe a query in flight) abandoned, counted,
    # logged once
    abandoned = [e for e in log if e.get("event") == "work abandoned"]
    assert len(abandoned) == 1, names
    ab = abandoned[0]
    assert ab["at"] == "shutdown" and ab["queries_queued"] > 0, ab
    # every text query due is accounted for: answered, skipped as late, or abandoned
    talk = sum(e.get("event") == "monitor result" and e.get("monitor") in TALK for e in log)
    late = sum(sum(m in TALK for m in (e.get("monitors") or [e.get("monitor")])) for e in log
               if e.get("event") in ("query skipped: past its deadline",
                                     "queries skipped: past their deadline"))
    # a clip whose encode finished after the deadline is not processed (counted as dropped);
    # its queries are counted missed and logged per clip
    late_clip = [e for e in log if e.get("event") == "queries abandoned at shutdown"]
    assert all(set(e["monitors"].split(",")) == set(TALK) for e in late_clip), late_clip
    daemon_stopped = next(e for e in log if e.get("event") == "stopped" and e.get("logger") == "edge.daemon")
    assert daemon_stopped["queries_queued"] == ab["queries_queued"]
    assert daemon_stopped["queries_running"] == ab["queries_running"]
    # one query per text monitor for each clip encoded (clips dropped as behind have none)
    run_stopped = next(e for e in log if e.get("event") == "stopped" and e.get("logger") == "edge.run_cli")
    encoded = run_stopped["clips"]
    assert (talk + late + ab["queries_queued"] + ab["queries_running"]
            == len(TALK) * encoded), (talk, late, ab, encoded)
    # a model call running at the deadline is cut short, not left to die with the interpreter
    assert "worker still inside a model call after the shutdown deadline" not in names

    # every alert raised is delivered or still in the outbox, and the pipeline says which
    raised = {e["alert_id"] for e in log if e.get("event") == "alert raised"}
    assert raised, names
    got = {p.get("alert_id") or p.get("id") for p in received}
    with sqlite3.connect(tmp_path / "data" / "outbox.sqlite3") as db:
        pending = {r[0] for r in db.execute("SELECT alert_id FROM outbox")}
    assert raised <= got | pending, (raised - got - pending)
    flushed = next(e for e in log if e.get("event") == "alert pipeline stopped")
    assert flushed["outbox_pending"] == len(pending)
