"""Process-level behaviour: SIGKILL (Last Will, outbox replay, new boot) and SIGTERM (notify, flush, offline)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.alerts.helpers import BROKER_PASSWORD, Recorder, fast_config, wait_until
from tests.mqtt_broker import Mosquitto

CHILD = Path(__file__).with_name("child_pipeline.py")
ROOT = Path(__file__).resolve().parents[2]


class Child:
    def __init__(self, config_path: Path, data_dir: Path, boot_id: str, env: dict[str, str] | None = None,
                 stop_timeout: float = 5.0) -> None:
        e = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        e.update(PYTHONPATH=str(ROOT), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(config_path), str(data_dir), boot_id, str(stop_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.expect("ready", 30)

    def _read_out(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.stderr.append(line)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = 15) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            try:
                msg = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"child never said {event!r}; stderr:\n{''.join(self.stderr)[-3000:]}") from None
            if msg["event"] == event:
                return msg

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def _write_config(path: Path, broker: Mosquitto, **kw: Any) -> Path:
    d = fast_config(broker, **kw).model_dump(mode="json")
    if "password" in kw:  # SecretStr dumps masked; the child needs the real value
        d["mqtt"]["password"] = kw["password"]
    path.write_text(json.dumps(d))
    return path


def test_sigkill_last_will_outbox_replay_and_new_boot(
    mosquitto: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder], tmp_path: Path,
    children: list[Child],
) -> None:
    broker = mosquitto(users={"edge": BROKER_PASSWORD, "rec": "rec-pass-123"})
    rec = recorder_factory(broker, ["fe-test/events", "fe-test/status"], client_id="kill-rec", persistent=True,
                           username="rec", password="rec-pass-123")
    cfg = _write_config(tmp_path / "cfg.json", broker, username="edge", password=BROKER_PASSWORD)
    data = tmp_path / "data"

    # 1. connected daemon delivers two alerts, then dies without a goodbye: the broker publishes the Will
    c1 = Child(cfg, data, "boot-1")
    children.append(c1)
    c1.send("wait_connected")
    c1.expect("connected")
    c1.send("alerts 2")
    c1.send("wait_sent")
    c1.expect("sent")
    c1.kill()
    assert rec.wait_for(lambda: rec.payloads("fe-test/status") == ["online", "offline"], 10), \
        rec.payloads("fe-test/status")

    # 2. broker down: a second boot raises three alerts into the outbox, then is killed too
    broker.stop()
    c2 = Child(cfg, data, "boot-2")
    children.append(c2)
    c2.send("alerts 3")
    c2.send("wait_queued 3")
    c2.expect("queued")
    c2.kill()

    # 3. broker back; a third boot replays boot-2's alerts in order, then adds its own with seq 1
    broker.start()
    c3 = Child(cfg, data, "boot-3")
    children.append(c3)
    c3.send("wait_connected")
    c3.expect("connected")
    c3.send("alerts 1")
    c3.send("wait_sent")
    c3.expect("sent")
    rec.wait_count("fe-test/events", 6, timeout=20)
    time.sleep(0.5)
    ev = rec.events()
    assert [(e["boot_id"], e["seq"]) for e in ev] == [
        ("boot-1", 1), ("boot-1", 2), ("boot-2", 1), ("boot-2", 2), ("boot-2", 3), ("boot-3", 1)]
    assert len({e["id"] for e in ev}) == 6
    assert wait_until(lambda: rec.payloads("fe-test/status")[-1:] == ["online"], 5)
    replay_log = [e for e in c3.log_events() if e.get("event") == "alert pipeline started"]
    assert replay_log and replay_log[0]["outbox_pending"] == 3
    for c in (c1, c2, c3):
        assert BROKER_PASSWORD not in "".join(c.stderr)
    c3.proc.send_signal(signal.SIGTERM)
    assert c3.proc.wait(15) == 0


def test_sigterm_notify_watchdog_flush_offline_exit0(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path, children: list[Child],
) -> None:
    name = f"fe-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)  # abstract namespace, as systemd may hand out
    sock.settimeout(0.1)
    got: list[tuple[float, str]] = []
    stop_reading = threading.Event()

    def read() -> None:
        while not stop_reading.is_set():
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rec = recorder_factory(broker, ["fe-test/events", "fe-test/status"])
    cfg = _write_config(tmp_path / "cfg.json", broker)
    try:
        c = Child(cfg, tmp_path / "data", "boot-T",
                  env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"}, stop_timeout=5.0)
        children.append(c)
        assert wait_until(lambda: any(m.startswith("READY=1") for _, m in got), 5)
        assert wait_until(lambda: sum(m == "WATCHDOG=1" for _, m in got) >= 3, 5)

        # audio stops flowing: no more pings (systemd would restart us after WatchdogSec)
        c.send("audio off")
        c.expect("audio")
        time.sleep(0.3)
        t_off = time.monotonic()
        time.sleep(1.0)
        assert not [m for t, m in got if t > t_off and m == "WATCHDOG=1"]
        c.send("audio on")
        c.expect("audio")
        n = sum(m == "WATCHDOG=1" for _, m in got)
        assert wait_until(lambda: sum(m == "WATCHDOG=1" for _, m in got) >= n + 2, 5)

        c.send("wait_connected")
        c.expect("connected")
        c.send("alerts 3")
        c.expect("submitted")
        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)  # right after submitting: the flush has work to do
        rc = c.proc.wait(15)
        elapsed = time.monotonic() - t0
    finally:
        stop_reading.set()
        reader.join(2)
        sock.close()
    assert rc == 0
    assert elapsed < 5.0 + 3.0  # stop timeout + interpreter exit
    stopped = c.expect("stopped", 2)
    assert stopped["delivered"] is True
    msgs = [m for _, m in got]
    assert msgs[0].startswith("READY=1") and any(m.startswith("STOPPING=1") for m in msgs)
    assert msgs.index(next(m for m in msgs if m.startswith("STOPPING=1"))) > 0
    ev = rec.wait_count("fe-test/events", 3, timeout=5)
    assert [json.loads(m.payload)["seq"] for m in ev] == [1, 2, 3]
    assert rec.wait_for(lambda: rec.payloads("fe-test/status") == ["online", "offline"], 5)
    # 'offline' came from the daemon itself (clean DISCONNECT suppresses the Will)
    assert any(e.get("event") == "mqtt disconnected" and e.get("offline_published") is True
               for e in c.log_events())
