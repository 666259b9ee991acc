#!/usr/bin/env python3
"""Check the MQTT interface against a real Home Assistant core (outside the test run).

    python3 scripts/ha_check.py [--ha-venv /opt/ha-venv] [--keep DIR]

Needs Home Assistant core installed in its own virtual environment (the newest release
for this Python; for 3.11 that is 2024.3.x) with the requirements of the integrations it
loads (the pip command is in docs/MQTT.md, "Checking against Home Assistant"), and
mosquitto (as for the tests). The script starts mosquitto on a free port, a fresh
Home Assistant in a temporary config directory, onboards it through its REST API
(owner user, core config, analytics), adds the MQTT integration through the config-flow
API, loads the automation examples of docs/MQTT.md, and then runs the daemon's alert
pipeline (tests/alerts/child_pipeline.py, in its own process, through a TCP proxy that
can cut the network at an exact MQTT packet) through these scenarios, reading Home
Assistant's state machine, entity/device registries and events over its websocket API:

1. phantom ON: an alarm is ON when the daemon is SIGKILLed; the next run must take the
   binary sensor unavailable -> off, never through on;
2. double event: the uplink dies right after the broker acknowledged one copy of an
   alert, the daemon is SIGKILLed, the next run replays: each alert must fire the event
   entity once, and the documented automation must run once per alert;
3. colliding names (a.b / a_b, x + y_z / x_y + z): distinct entities and devices;
4. removal: monitors and streams dropped from the config disappear from Home Assistant;
5. score sensor: a scored monitor (``answer: yes_no``) gets a ``sensor`` next to its binary
   sensor, in %, ``state_class: measurement``, whose state follows every score; turned
   back into an unscored monitor, the sensor leaves the entity registry.

Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.alerts.helpers import fast_config  # noqa: E402
from tests.alerts.test_process import Child  # noqa: E402
from tests.mqtt_broker import Mosquitto, free_port  # noqa: E402
from tests.mqtt_proxy import MqttProxy  # noqa: E402

NODE = "hacheck"
PREFIX = "fe-ha"
BIN = f"binary_sensor.s1_{NODE}_knock"
EVENT = f"event.s1_{NODE}_alert"
INPUT = f"sensor.s1_{NODE}_input"  # per stream: why audio is (not) arriving

# The automation examples of docs/MQTT.md ("Automations that stay correct across restarts"),
# with a test event as the action; plus the naive trigger the docs used to suggest.
AUTOMATIONS = f"""
- id: documented_event
  alias: documented event automation
  mode: queued
  trigger:
    - platform: state
      entity_id: {EVENT}
  condition:
    - condition: template
      value_template: >-
        {{{{ trigger.from_state is not none and trigger.to_state is not none
           and trigger.from_state.state != 'unavailable'
           and trigger.to_state.state not in ['unavailable', 'unknown']
           and trigger.from_state.attributes.get('id') != trigger.to_state.attributes.get('id') }}}}
    - condition: template
      value_template: "{{{{ trigger.to_state.attributes.event_type == 'knock' }}}}"
  action:
    - event: flamingo_check
      event_data:
        automation: documented_event
        alert_id: "{{{{ trigger.to_state.attributes.id }}}}"
- id: documented_on
  alias: documented binary sensor automation
  mode: queued
  trigger:
    - platform: state
      entity_id: {BIN}
      from: "off"
      to: "on"
  action:
    - event: flamingo_check
      event_data: {{automation: documented_on}}
- id: naive_event
  alias: naive event automation
  mode: queued
  trigger:
    - platform: state
      entity_id: {EVENT}
  action:
    - event: flamingo_check
      event_data: {{automation: naive_event}}
"""

CONFIGURATION = """
homeassistant:
  name: flamingo-edge check
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
websocket_api:
onboarding:
automation: !include automations.yaml
logger:
  default: warning
"""


class HomeAssistant:
    def __init__(self, venv: Path, directory: Path) -> None:
        self.venv, self.dir = venv, directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.proc: subprocess.Popen | None = None
        self.watch: subprocess.Popen | None = None
        self.messages: list[dict[str, Any]] = []
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- process
    def start(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)  # a fresh, not yet onboarded instance
        self.dir.mkdir(parents=True)
        (self.dir / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))
        (self.dir / "automations.yaml").write_text(AUTOMATIONS)
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "hass"), "-c", str(self.dir), "--log-file", str(self.dir / "ha.log"),
             ],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        end = time.monotonic() + 240
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"Home Assistant exited with {self.proc.returncode}; see {self.dir / 'ha.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise SystemExit("Home Assistant did not answer on its HTTP port within 240 s")

    def stop(self) -> None:
        if self.watch is not None and self.watch.poll() is None:
            self.watch.stdin.close()  # type: ignore[union-attr]
            self.watch.terminate()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # ---------------------------------------------------------------- REST
    def rest(self, method: str, path: str, body: Any = None, form: dict[str, str] | None = None) -> Any:
        data, headers = None, {}
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=180) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None
        return json.loads(raw) if raw else None

    def onboard(self) -> None:
        client_id = self.url + "/"
        user = self.rest("POST", "/api/onboarding/users", {
            "client_id": client_id, "name": "Check", "username": "check", "password": "check-pass-123",
            "language": "en"})
        tok = self.rest("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id})
        self.token = tok["access_token"]
        self.rest("POST", "/api/onboarding/core_config")
        self.rest("POST", "/api/onboarding/analytics")
        self.rest("POST", "/api/onboarding/integration", {"client_id": client_id, "redirect_uri": client_id})
        done = {s["step"]: s["done"] for s in self.rest("GET", "/api/onboarding")} if self.rest(
            "GET", "/api/onboarding") else {}
        assert all(done.values()), done

    def add_mqtt(self, host: str, port: int) -> dict[str, Any]:
        flow = self.rest("POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False})
        if flow.get("step_id") != "broker":
            raise SystemExit(f"unexpected MQTT config flow: {flow}")
        res = self.rest("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": host, "port": port})
        if res.get("type") != "create_entry":
            raise SystemExit(f"MQTT config flow did not create an entry: {res}")
        return res

    # ---------------------------------------------------------------- websocket
    def start_watch(self) -> None:
        self.watch = subprocess.Popen(
            [str(self.venv / "bin" / "python"), str(ROOT / "scripts" / "ha_watch.py"),
             f"ws://127.0.0.1:{self.port}/api/websocket", self.token, "state_changed", "flamingo_check"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

        def read() -> None:
            assert self.watch is not None and self.watch.stdout is not None
            for line in self.watch.stdout:
                d = json.loads(line)
                if "ref" in d:
                    self.results.put(d)
                else:
                    with self._lock:
                        self.messages.append(d)

        threading.Thread(target=read, daemon=True).start()

    def ws(self, cmd: dict[str, Any], timeout: float = 30) -> Any:
        assert self.watch is not None and self.watch.stdin is not None
        ref = f"r{time.monotonic_ns()}"
        self.watch.stdin.write(json.dumps({**cmd, "ref": ref}) + "\n")
        self.watch.stdin.flush()
        end = time.monotonic() + timeout
        while True:
            d = self.results.get(timeout=max(0.01, end - time.monotonic()))
            if d["ref"] == ref:
                if not d.get("success"):
                    raise SystemExit(f"websocket {cmd}: {d.get('error')}")
                return d["result"]

    def mark(self) -> int:
        with self._lock:
            return len(self.messages)

    def changes(self, entity_id: str, since: int = 0) -> list[tuple[str | None, str | None, dict]]:
        """(from, to, to-attributes) of every state change of ``entity_id``."""
        with self._lock:
            msgs = self.messages[since:]
        out = []
        for m in msgs:
            ev = m.get("event", {})
            if ev.get("event_type") != "state_changed" or ev["data"]["entity_id"] != entity_id:
                continue
            old, new = ev["data"].get("old_state"), ev["data"].get("new_state")
            out.append((old and old["state"], new and new["state"], (new or {}).get("attributes", {})))
        return out

    def fired(self, automation: str, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            msgs = self.messages[since:]
        return [m["event"]["data"] for m in msgs if m.get("event", {}).get("event_type") == "flamingo_check"
                and m["event"]["data"].get("automation") == automation]

    def state(self, entity_id: str) -> str | None:
        for s in self.ws({"type": "get_states"}):
            if s["entity_id"] == entity_id:
                return s["state"]
        return None

    def full_state(self, entity_id: str) -> dict[str, Any] | None:
        for s in self.ws({"type": "get_states"}):
            if s["entity_id"] == entity_id:
                return s
        return None

    def entities(self) -> list[dict[str, Any]]:
        return [e for e in self.ws({"type": "config/entity_registry/list"})
                if e.get("platform") == "mqtt" and str(e.get("unique_id", "")).startswith(NODE + "_")]

    def devices(self) -> list[dict[str, Any]]:
        return [d for d in self.ws({"type": "config/device_registry/list"})
                if any(i[0] == "mqtt" and str(i[1]).startswith(f"flamingo_edge_{NODE}_") for i in d["identifiers"])]


def wait(pred, timeout: float = 30.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str, detail: Any = "") -> None:
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {what}" + (f"  [{detail}]" if detail != "" else ""), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ha-venv", type=Path, default=Path(os.environ.get("HA_VENV", "/opt/ha-venv")))
    ap.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it (logs)")
    args = ap.parse_args()
    if not (args.ha_venv / "bin" / "hass").exists():
        print(f"no Home Assistant at {args.ha_venv} (see this script's docstring)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="ha-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ver = subprocess.run([str(args.ha_venv / "bin" / "python"), "-c",
                          "import homeassistant.const as c; print(c.__version__)"],
                         check=False, capture_output=True, text=True).stdout.strip()
    print(f"Home Assistant core {ver}, work dir {work}", flush=True)
    shutil.rmtree(work / "data", ignore_errors=True)
    broker = Mosquitto(work).start()
    proxy = MqttProxy(broker.host, broker.port).start()
    ha = HomeAssistant(args.ha_venv, work / "ha")
    children: list[Child] = []
    rep = Report()

    def daemon(boot: str, configured: dict[str, list[str]], scored: dict[str, list[str]] | None = None) -> Child:
        env = {"FE_CONFIGURED": json.dumps(configured)}
        if scored is not None:
            env["FE_SCORED"] = json.dumps(scored)
        c = Child(cfg_path, work / "data", boot, env=env)
        children.append(c)
        c.send("wait_connected")
        c.expect("connected", 30)
        return c

    try:
        t0 = time.monotonic()
        ha.start()
        ha.onboard()
        entry = ha.add_mqtt(broker.host, broker.port)
        print(f"Home Assistant up, onboarded, MQTT entry {entry['result']['title']!r} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
        ha.start_watch()
        ha.ws({"type": "ping"}, timeout=60)  # the websocket is up and subscribed

        d = fast_config(broker).model_dump(mode="json")
        d["node_id"] = NODE
        d["mqtt"].update(host=proxy.host, port=proxy.port, topic_prefix=PREFIX)
        cfg_path = work / "daemon.json"
        cfg_path.write_text(json.dumps(d))

        # ---------------------------------------------------------- 1. phantom ON
        c1 = daemon("boot-1", {"s1": ["knock"]})
        wait(lambda: ha.state(BIN) == "off" and ha.state(EVENT) is not None, 60, "discovered entities")
        c1.send("positive s1 knock")
        wait(lambda: ha.state(BIN) == "on", 20, "binary sensor on")
        wait(lambda: len(ha.fired("documented_event")) == 1, 20, "documented event automation")
        mark = ha.mark()
        c1.kill()
        wait(lambda: ha.state(BIN) == "unavailable", 20, "unavailable after SIGKILL")
        c2 = daemon("boot-2", {"s1": ["knock"]})
        wait(lambda: ha.state(BIN) == "off", 20, "binary sensor off after restart")
        time.sleep(2.0)
        seq = [to for _f, to, _a in ha.changes(BIN, mark)]
        rep.check("on" not in seq, "1 phantom ON: restart after a crash while ON never shows on", " -> ".join(
            map(str, ["on"] + seq)))
        ev_seq = [to for _f, to, _a in ha.changes(EVENT, mark)]
        rep.check(len(ha.fired("documented_event")) == 1,
                  "1 documented event automation not re-run by the restart",
                  f"event entity: {' -> '.join(map(str, ev_seq))}; naive trigger ran "
                  f"{len(ha.fired('naive_event'))}x for 1 alert")
        rep.check(len(ha.fired("documented_on")) == 1,
                  "1 documented binary sensor automation (from off to on) ran once")

        # ---------------------------------------------------------- 2. double event
        c2.proc.send_signal(signal.SIGTERM)
        c2.proc.wait(30)
        mark = ha.mark()
        before = len(ha.fired("documented_event"))
        proxy.blackhole_after(3, lambda t: t in (f"{PREFIX}/events", f"{PREFIX}/s1/event"))
        c3 = daemon("boot-3", {"s1": ["knock"]})
        c3.send("alerts 3")
        if not proxy.acked.wait(30):
            raise SystemExit(f"proxy never saw the 3 alert publishes acknowledged: {proxy.published_topics}")
        time.sleep(0.5)
        c3.kill()
        proxy.passthrough()
        c4 = daemon("boot-4", {"s1": ["knock"]})
        c4.send("wait_sent")
        c4.expect("sent", 60)
        time.sleep(3.0)
        fires: dict[str, set[str]] = {}
        trace = [f"{f}->{to}:{str(a.get('id'))[:8]}{'(r)' if a.get('replayed') else ''}"
                 for f, to, a in ha.changes(EVENT, mark)]
        for _f, to, attrs in ha.changes(EVENT, mark):
            if to not in (None, "unavailable", "unknown") and attrs.get("boot_id") == "boot-3":
                fires.setdefault(attrs["id"], set()).add(to)  # the state is the time the event fired
        counts = {k[:8]: len(v) for k, v in fires.items()}
        rep.check(len(fires) == 3 and all(n == 1 for n in counts.values()),
                  "2 outage + SIGKILL + replay: each alert fired the event entity once", counts)
        print("      event entity: " + "  ".join(trace), flush=True)
        replayed = [a.get("replayed") for _f, to, a in ha.changes(EVENT, mark) if to not in ("unavailable",)]
        rep.check(True in replayed, "2 replayed alerts carry replayed: true as an attribute", replayed)
        rep.check(len(ha.fired("documented_event")) - before == 3,
                  "2 documented event automation ran once per alert",
                  f"{len(ha.fired('documented_event')) - before} runs for 3 alerts: "
                  + " ".join(str(f.get("alert_id"))[:8] for f in ha.fired("documented_event")[before:]))

        # ---------------------------------------------------------- 3. collisions
        c4.proc.send_signal(signal.SIGTERM)
        c4.proc.wait(30)
        colliding = {"s1": ["knock"], "a.b": ["m"], "a_b": ["m"], "x": ["y_z"], "x_y": ["z"]}
        c5 = daemon("boot-5", colliding)
        wait(lambda: len(ha.entities()) >= 20, 60, "20 entities")
        time.sleep(2.0)
        ents = ha.entities()
        devs = ha.devices()
        rep.check(len(ents) == 20 and len({e["unique_id"] for e in ents}) == 20,
                  "3 colliding names: 20 announcements (4 per stream) -> 20 distinct entities", len(ents))
        rep.check(len(devs) == 5, "3 colliding names: 5 streams -> 5 devices", len(devs))
        bins = sorted(e["entity_id"] for e in ents if e["entity_id"].startswith("binary_sensor."))
        rep.check(len(bins) == 5, "3 five binary sensors", ", ".join(bins))

        # ---------------------------------------------------------- 4. removal
        c5.proc.send_signal(signal.SIGTERM)
        c5.proc.wait(30)
        daemon("boot-6", {"s1": ["knock"]})
        wait(lambda: len(ha.entities()) <= 4, 60, "entities removed")
        time.sleep(2.0)
        ents = ha.entities()
        rep.check(sorted(e["entity_id"] for e in ents) == sorted([BIN, EVENT, f"sensor.s1_{NODE}_level", INPUT]),
                  "4 removed streams/monitors are gone from the entity registry", [e["entity_id"] for e in ents])
        rep.check(len(ha.devices()) == 1, "4 their devices are gone too", len(ha.devices()))
        rep.check(ha.state("binary_sensor.x_hacheck_y_z") is None, "4 and from the state machine")

        # ---------------------------------------------------------- 5. score sensor
        children[-1].proc.send_signal(signal.SIGTERM)
        children[-1].proc.wait(30)
        c7 = daemon("boot-7", {"s1": ["knock"]}, scored={"s1": ["knock"]})
        score_id = f"sensor.s1_{NODE}_knock_score"
        wait(lambda: any(e["entity_id"] == score_id for e in ha.entities()), 60, "score sensor discovered")
        rep.check(len(ha.entities()) == 5, "5 a scored monitor adds one sensor (5 entities)",
                  [e["entity_id"] for e in ha.entities()])
        seen = []
        mark5 = ha.mark()
        for p in (0.12, 0.87, 0.31, 0.2):
            c7.send(f"score s1 knock {p}")
            want = f"{100 * p:.2f}"
            wait(lambda w=want: ha.state(score_id) == w, 20, f"score sensor at {want}")  # type: ignore[misc]
            seen.append(ha.state(score_id))
        rep.check(seen == ["12.00", "87.00", "31.00", "20.00"], "5 the score sensor follows every score, in %", seen)
        st = ha.full_state(score_id) or {}
        attrs = st.get("attributes", {})
        rep.check(attrs.get("unit_of_measurement") == "%" and attrs.get("state_class") == "measurement",
                  "5 the score sensor is a % measurement (graphable in HA's history)", attrs)
        wait(lambda: ha.state(BIN) == "off", 20, "binary sensor off after two scores below 0.5")
        # the states it went through (an attribute update fires state_changed with the same state)
        went: list[str | None] = []
        for _f, t, _a in ha.changes(BIN, mark5):
            if t in ("on", "off") and (not went or went[-1] != t):
                went.append(t)
        rep.check(went in (["on", "off"], ["off", "on", "off"]),
                  "5 the binary sensor follows the scores' verdicts (ON at 0.87, OFF after 2 below 0.5)",
                  [t for _f, t, _a in ha.changes(BIN, mark5)])
        c7.proc.send_signal(signal.SIGTERM)
        c7.proc.wait(30)
        daemon("boot-8", {"s1": ["knock"]}, scored={"s1": []})
        wait(lambda: not any(e["entity_id"] == score_id for e in ha.entities()), 60, "score sensor removed")
        rep.check(ha.state(BIN) is not None and len(ha.entities()) == 4,
                  "5 unscored again: the score sensor leaves, the binary sensor stays",
                  [e["entity_id"] for e in ha.entities()])
    finally:
        for c in children:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
                try:
                    c.proc.wait(20)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
        ha.stop()
        proxy.stop()
        broker.stop()
        if args.keep is None and not rep.failed:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'all checks passed' if not rep.failed else f'{rep.failed} check(s) FAILED'}"
          + ("" if args.keep is None and not rep.failed else f"; logs in {work}"), flush=True)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
