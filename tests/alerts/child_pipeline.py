"""A stand-in daemon for process-level tests: runs a real `AlertPipeline` in its own process.

It does what the daemon does around the alert stage: logging set-up, READY=1 once the
pipeline runs, a watchdog that pings only while "audio flows" and the worker makes
progress, and on SIGTERM: STOPPING=1, stop ingest, `pipeline.stop()` (flush + offline),
exit 0. Tests drive it through stdin, one command per line:

    alerts N      submit results that raise N alerts
    audio on|off  whether audio "flows" (gates the watchdog)
    wait_sent     print {"event":"sent"} once the outbox is empty
    wait_queued N print {"event":"queued"} once N alerts wait in the outbox
    wait_connected
    positive|negative STREAM MONITOR   submit one result of that verdict
    score STREAM MONITOR P              submit one scored result (probability P, threshold 0.5)

and read JSON lines from stdout. Logs go to stderr as JSON. Environment:
``FE_CONFIGURED`` (JSON stream -> monitors) is passed to `AlertPipeline.start`, and
``FE_SCORED`` (JSON stream -> the scored ones among them) with it;
``FE_KILL_BEFORE_COMMIT`` / ``FE_KILL_AFTER_COMMIT`` (seconds) make the process SIGKILL
itself that long after an alert reached `Outbox.add`, before / after its commit: a
crash at an exact point of the alert's path.
Usage: child_pipeline.py CONFIG_JSON DATA_DIR BOOT_ID [STOP_TIMEOUT]
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from alerts.config import AlertsConfig
from alerts.outbox import Outbox
from alerts.pipeline import AlertPipeline
from edge.log import configure_logging
from edge.metrics import Metrics
from edge.sdnotify import Notifier, ShutdownSignal, Watchdog
from tests.alerts.helpers import alternating, result

_out_lock = threading.Lock()


def say(event: str, **kw: object) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps({"event": event, **kw}) + "\n")
        sys.stdout.flush()


def _install_kill_points() -> None:
    before, after = os.environ.get("FE_KILL_BEFORE_COMMIT"), os.environ.get("FE_KILL_AFTER_COMMIT")
    if not (before or after):
        return
    orig = Outbox.add

    def add(self: Outbox, *a: object, **kw: object) -> None:
        if before:
            time.sleep(float(before))
            os.kill(os.getpid(), signal.SIGKILL)
        orig(self, *a, **kw)  # type: ignore[arg-type]
        if after:
            time.sleep(float(after))
            os.kill(os.getpid(), signal.SIGKILL)

    Outbox.add = add  # type: ignore[method-assign]


def main() -> int:
    cfg_path, data_dir, boot_id = sys.argv[1], sys.argv[2], sys.argv[3]
    stop_timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    config = AlertsConfig.model_validate_json(Path(cfg_path).read_text())
    configure_logging("DEBUG", fmt="json", stream=sys.stderr, secrets=config.secrets())
    sig = ShutdownSignal().install()
    notifier = Notifier()
    _install_kill_points()
    configured = json.loads(os.environ["FE_CONFIGURED"]) if os.environ.get("FE_CONFIGURED") else None
    scored = json.loads(os.environ["FE_SCORED"]) if os.environ.get("FE_SCORED") else None
    pipeline = AlertPipeline(config, Metrics(), boot_id, data_dir)
    pipeline.start(configured=configured, scored=scored) if configured is not None else pipeline.start()
    audio = {"on": True}

    def progress() -> bool:
        return audio["on"] and time.monotonic() - pipeline.last_progress < 2.0

    wd = Watchdog(notifier, progress).start()
    notifier.ready("alert pipeline running")
    say("ready", pid=os.getpid())
    made = {"n": 0}

    def commands() -> None:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "alerts":
                n = int(cmd[1])
                rs = alternating(made["n"] + n)[3 * made["n"]:]
                made["n"] += n
                for r in rs:
                    pipeline.submit(r)
                say("submitted", n=n)
            elif cmd[0] in ("positive", "negative"):
                pipeline.submit(result(cmd[0], stream=cmd[1], monitor=cmd[2], i=made["n"]))
                made["n"] += 1
                say("submitted", n=1)
            elif cmd[0] == "score":
                p = float(cmd[3])
                r = result("positive" if p >= 0.5 else "negative", stream=cmd[1], monitor=cmd[2], i=made["n"])
                pipeline.submit(dataclasses.replace(r, score=p, threshold=0.5, hysteresis=0.0,
                                                    probs={"yes": p, "no": 1.0 - p}, coverage=0.99))
                made["n"] += 1
                say("submitted", n=1)
            elif cmd[0] == "audio":
                audio["on"] = cmd[1] == "on"
                say("audio", on=audio["on"])
            elif cmd[0] == "wait_sent":
                while pipeline.outbox.count() or not pipeline._queue.empty():  # type: ignore[union-attr]
                    time.sleep(0.05)
                say("sent")
            elif cmd[0] == "wait_queued":
                while pipeline.outbox.count() < int(cmd[1]):  # type: ignore[union-attr]
                    time.sleep(0.05)
                say("queued")
            elif cmd[0] == "wait_connected":
                while not (pipeline.mqtt and pipeline.mqtt.connected):
                    time.sleep(0.05)
                say("connected")

    threading.Thread(target=commands, daemon=True).start()
    sig.wait()
    t0 = time.monotonic()
    notifier.stopping("flushing alerts")
    wd.stop()
    delivered = pipeline.stop(stop_timeout)
    say("stopped", delivered=delivered, seconds=round(time.monotonic() - t0, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
