"""Soak: N live streams over MQTT through a real mosquitto into the whole daemon.

    python bench/bench_soak.py --streams 2 --audio-s 600 --speed 4 --model 0.5B --dtype float32 \
        --outage 200:120 --outage 420:20 [--name soak-2]

What runs: a private mosquitto; one publisher thread per stream sending 100-ms int16 frames
(`streams.protocol.encode_frame`) on the publisher's own clock, paced at ``--speed`` x real time
(the capture times are the publisher's clock, so at speed > 1 they run ahead of this machine's:
the MQTT source is built with ``max_skew_s=None`` to trust them; at speed 1 without
history the default 30-s skew check stays on); the daemon (`edge.daemon.Daemon`)
with its real MQTT source, worker, alert pipeline and MQTT sink on the same broker; a subscriber
on the alert and answer topics. Monitors per stream: ``scene`` (AF2, yes/no, every ``--every``
over a ``--window`` window: scheduled), ``burst`` (AF2, triggered by a loud burst the publisher
plays every 90 s of audio, 30-s window) and ``loud`` (gate, the same trigger, raises alerts).
``--outage START:LEN`` stops a publisher at publisher-clock START for LEN seconds and restarts
it with seq 0 (a publisher restart; LEN > 60 s is a long gap, a new timeline piece).

Every frame carries a time code: 8 samples of sync (+-0.9 alternating) and the frame's
capture time in ms as 48 samples of +-0.3. The UTC error of every result is measured against
that code: its claimed start/end minus the capture time of the audio found at those sample
positions (read through the result's `AudioSpan`). Alert latency is the wall time from the
publisher sending the last frame of the result's span to the subscriber receiving the alert
(``<prefix>/events``) or answer (``<prefix>/<stream>/<monitor>/answer``).

Reports clips dropped (by reason), queries run / missed / failed, latency p50/p95, RSS every
10 s (beside it glibc's own account, mallinfo2: in use vs free but kept), UTC errors, the
load average. Writes bench/results/<name>.json.

**Largest N** (`--find-max`): the largest number of real-time streams that keep up (no clip
dropped, no query missed or failed, nothing abandoned at the end) with one 5-min yes/no monitor
per stream every minute; trials of ``--audio-s`` (90 s) real-time audio, N doubled from
``--start`` then bisected, within ``--budget-s`` (300 s)::

    python bench/bench_soak.py --find-max --model 0.5B --dtype bfloat16 [--start 4]

Each stream first sends one clip captured 5 minutes earlier and restarts, so every query runs
over a full 5-minute window (30 slots, the empty ones masked) from the first minute: the steady
state's cost without five minutes of warm-up per trial. Writes bench/results/soak-max-*.json.
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import json
import os
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import _common as C  # puts the repo on sys.path
import numpy as np

from edge.allocator import trim

SR = 16000
FRAME = 1600  # 100 ms
CLIP = 160000  # 10 s
SYNC = np.array([0.9, -0.9] * 4, np.float32)
BITS = 48


def timecode(capture_s: float) -> np.ndarray:
    ms = round(capture_s * 1000)
    bits = [(ms >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    return np.concatenate([SYNC, np.array([0.3 if b else -0.3 for b in bits], np.float32)])


def find_codes(x: np.ndarray) -> list[tuple[int, float]]:
    """(sample position, capture time) of every time code in ``x``."""
    out = []
    cand = np.flatnonzero(np.abs(x[:-SYNC.size - BITS] - 0.9) < 0.02) if x.size > 64 else []
    for i in cand:
        if np.all(np.abs(x[i:i + SYNC.size] - SYNC) < 0.02):
            bits = x[i + SYNC.size:i + SYNC.size + BITS] > 0
            ms = 0
            for b in bits:
                ms = (ms << 1) | int(b)
            out.append((int(i), ms / 1000.0))
    return out


class Publisher(threading.Thread):
    """One stream's publisher: noise, a loud 4-s burst every 90 s of audio, a time code per
    frame; outages stop it and it restarts with seq 0."""

    def __init__(self, host: str, port: int, stream: str, audio_s: float, speed: float,
                 outages: list[tuple[float, float]], t0: float, wall0: float, seed: int,
                 history_s: float = 0.0) -> None:
        super().__init__(name=f"pub-{stream}", daemon=True)
        self.host, self.port, self.stream = host, port, stream
        self.audio_s, self.speed, self.outages = audio_s, speed, outages
        self.t0, self.wall0 = t0, wall0  # publisher clock = t0 + a; paced from wall0
        # > 0: first one 10-s clip captured history_s ago, sent at once, then a restart
        self.history_s = history_s
        self.rng = np.random.default_rng(seed)
        self.sent_capture: list[float] = []  # capture time of each frame's first sample
        self.sent_wall: list[float] = []  # wall time it was published
        self.stop_event = threading.Event()

    def _in_outage(self, a: float) -> bool:
        return any(s <= a < s + n for s, n in self.outages)

    def run(self) -> None:
        import paho.mqtt.client as mqtt

        from streams.protocol import encode_frame

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"soak-pub-{self.stream}")
        c.max_queued_messages_set(0)
        c.connect(self.host, self.port, keepalive=30)
        c.loop_start()
        topic = f"flamingo-edge/audio/{self.stream}"
        seq, a, away = 0, 0.0, False
        if self.history_s > 0:  # one clip from history_s ago, then a restart (seq 0) now
            for k in range(CLIP // FRAME):
                cap = self.t0 - self.history_s + k * FRAME / SR
                x = (0.02 * self.rng.standard_normal(FRAME)).astype(np.float32)
                c.publish(topic, encode_frame(x, SR, k, int(cap * 1e9)), qos=0)
        while a < self.audio_s and not self.stop_event.is_set():
            delay = self.wall0 + a / self.speed - time.time()
            if delay > 0:
                time.sleep(delay)
            if self._in_outage(a):
                away = True
            else:
                if away:  # the publisher restarts: its sequence numbers start again
                    seq, away = 0, False
                x = (0.02 * self.rng.standard_normal(FRAME)).astype(np.float32)
                if 45.0 <= a % 90.0 < 49.0:
                    x = self.rng.uniform(-0.9, 0.9, FRAME).astype(np.float32)
                cap = self.t0 + a
                code = timecode(cap)
                x[:code.size] = code
                c.publish(topic, encode_frame(np.clip(x, -1, 1), SR, seq, int(cap * 1e9)), qos=0)
                self.sent_capture.append(cap)
                self.sent_wall.append(time.time())
                seq = (seq + 1) & 0xFFFFFFFF
            a += FRAME / SR
        c.loop_stop()
        c.disconnect()

    def wall_of(self, capture: float) -> float | None:
        """Wall time at which the frame holding publisher time ``capture`` was sent."""
        i = bisect.bisect_right(self.sent_capture, capture - 1e-6) - 1
        if i < 0:
            return None
        return self.sent_wall[i]


def truth_span(span: Any) -> tuple[float | None, float | None]:
    """Publisher capture time of the first and one-past-last sample of a result's span."""
    head = span.reader(span.start, min(span.end, span.start + 4 * FRAME))
    tail = span.reader(max(span.start, span.end - 4 * FRAME), span.end)
    t_start = t_end = None
    if head is not None:
        codes = find_codes(head)
        if codes:
            i, cap = codes[0]
            t_start = cap - i / SR
    if tail is not None:
        codes = find_codes(tail)
        if codes:
            i, cap = codes[-1]
            t_end = cap + (tail.size - i) / SR
    return t_start, t_end


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def rss_mb() -> float:
    return C.proc_status().get("VmRSS", 0) / 2**20


def pymalloc_mb() -> tuple[float, float] | None:
    """Python's small-object allocator (pymalloc: its own 1-MiB arenas, mmapped, outside
    malloc): MB of arenas held, MB of blocks in use in them (sys._debugmallocstats, which
    writes to fd 2: caught in a file for the moment, with any other thread's line written
    then). None under --tracemalloc, whose hooks hide pymalloc from it."""
    import re
    import sys

    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    arenas = re.search(r"(\d[\d,]*) arenas \* (\d[\d,]*) bytes/arena", text)
    blocks = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    if not arenas or not blocks:
        return None
    n, size = (int(v.replace(",", "")) for v in arenas.groups())
    return round(n * size / 2**20, 1), round(int(blocks.group(1).replace(",", "")) / 2**20, 1)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]


def malloc_mb() -> tuple[float, ...] | None:
    """glibc's own account (mallinfo2, every arena): MB in use (malloc'ed and not freed,
    mmapped chunks included), MB free but kept in the arenas, MB of the arenas. In-use
    growth is a native leak; free growth is allocator retention. None without glibc 2.33+."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return None
    fn.restype = _MallInfo2
    m = fn()
    mb = 2**20
    return (round((m.uordblks + m.hblkhd) / mb, 1), round(m.fordblks / mb, 1),
            round((m.arena + m.hblkhd) / mb, 1))


def build_model(kind: str, dtype_name: str) -> Any:
    if kind == "none":
        return None
    import torch

    from edge.model import AF2, AF2Config
    from edge.model.tokenizer import AF2Tokenizer

    fixture = next(p for p in (C.REPO_ROOT / "tests" / "fixtures" / "af2-tiny",
                               C.REPO_ROOT.parent / "shared" / "fixtures" / "af2-tiny") if p.exists())
    tok = AF2Tokenizer.from_dir(fixture / "checkpoint" / "lm")
    dtype = getattr(torch, dtype_name)
    if kind == "tiny":
        return AF2.load(fixture / "checkpoint", dtype=dtype)
    return AF2.random(AF2Config.released(kind), dtype, seed=0, tokenizer=tok)


def soak_monitors(a: argparse.Namespace) -> list[dict[str, Any]]:
    dec = {"max_new_tokens": a.new_tokens}
    scene = {"name": "scene", "question": "Is a machine running?", "every": a.every,
             "window": a.window, "decoding": dec}
    if a.find_max:  # one yes/no monitor per stream, that is all
        return [scene]
    return [
        scene,
        {"name": "burst", "question": "Was there a loud burst?", "triggers": ["level_dbfs > -12"],
         "cooldown": "60s", "window": "30s", "decoding": dec},
        {"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -12"], "cooldown": 0,
         "severity": "warning"},
    ]


def run_trial(a: argparse.Namespace, model: Any, broker: Any, tmp: Path, n_streams: int,
              audio_s: float, speed: float, outages: list[tuple[float, float]],
              history_s: float = 0.0, settle_s: float = 2.0) -> dict[str, Any]:
    """One soak: ``n_streams`` publishers for ``audio_s`` of audio into a fresh daemon on
    ``broker``. ``settle_s``: after the last frame, wait up to this long for the worker to
    finish what is queued before stopping it (what is left then counts as abandoned)."""
    from edge.mqtt_client import MqttConfig
    from edge.config import load_settings
    from edge.daemon import Daemon
    from edge.metrics import Metrics
    from edge.sinks import CallbackSink
    from streams.mqtt import MqttAudioSource

    ids = [f"s{i}" for i in range(n_streams)]
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=tmp))
    settings = load_settings(data={
        "data_dir": str(data_dir),
        "streams": [{"id": i, "source": "mqtt"} for i in ids],
        "monitors": soak_monitors(a),
        "alerts": {"mqtt": {"host": broker.host, "port": broker.port}},
        **({} if a.trim_every is None else {"allocator": {"trim_every": a.trim_every}}),
    })
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_result(r: Any, span: Any, sr: int) -> None:
        t_start, t_end = truth_span(span) if span is not None else (None, None)
        with lock:
            records.append({
                "stream": r.stream, "monitor": r.monitor, "reason": r.extra.get("reason"),
                "verdict": r.verdict, "start": r.start.timestamp(), "end": r.end.timestamp(),
                "truth_start": t_start, "truth_end": t_end, "emitted_wall": time.time(),
                "slots": len(r.extra.get("clips", [])) + int(r.extra.get("masked", 0)),
            })

    received: list[tuple[str, dict, float]] = []

    def subscriber() -> Any:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"soak-sub-{data_dir.name}")

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            try:
                received.append((msg.topic, json.loads(msg.payload), time.time()))
            except ValueError:
                pass

        c.on_message = on_message
        c.connect(broker.host, broker.port)
        c.subscribe([("flamingo-edge/events", 1), ("flamingo-edge/+/+/answer", 0)])
        c.loop_start()
        return c

    sub = subscriber()
    metrics = Metrics()
    mqtt_cfg = MqttConfig(host=broker.host, port=broker.port)
    # At speed 1 the publisher's clock is this machine's: the skew check (capture times more than
    # 30 s off are not trusted) stays on. Faster than real time, or with a clip from 5 minutes
    # ago (--find-max), the capture times are meant to be far off, so the check is off.
    skew = 30.0 if speed == 1.0 and not history_s else None
    source = MqttAudioSource(ids, mqtt_cfg, metrics=metrics, max_skew_s=skew)
    d = Daemon(settings, model=model, sources=[source], metrics=metrics, log_results=False,
               sinks=[CallbackSink(on_result)], http=False)
    d.start()
    assert d.worker is not None
    busy = [0.0]  # seconds the worker spent in steps that did work (utilisation)
    step = d.worker.step

    def timed_step() -> bool:
        t = time.perf_counter()
        worked = step()
        if worked:
            busy[0] += time.perf_counter() - t
        return worked

    d.worker.step = timed_step  # type: ignore[method-assign]
    group_s: list[tuple[list[str], float]] = []  # model time of each query group
    if d.worker.execution is not None:
        run_group = d.worker.execution.run

        def timed_run(s: Any, q: Any, monitors: Any, emit: Any) -> None:
            t = time.perf_counter()
            run_group(s, q, monitors, emit)
            group_s.append(([c.name for c, _ in monitors], time.perf_counter() - t))

        d.worker.execution.run = timed_run  # type: ignore[method-assign]
    time.sleep(1.0)  # the source subscribes
    load_start = os.getloadavg()
    wall0 = time.time() + 0.5
    pubs = [Publisher(broker.host, broker.port, sid, audio_s, speed, outages,
                      t0=wall0, wall0=wall0, seed=i, history_s=history_s)
            for i, sid in enumerate(ids)]
    for p in pubs:
        p.start()
    # (wall s, RSS MB[, Python heap MB traced][, RSS MB after malloc_trim])
    rss: list[tuple[float, ...]] = []
    malloc_rows: list[tuple[float, ...]] = []  # (wall s, in use, free, arenas MB): mallinfo2
    # (wall s, snapshot): only the second one (the baseline of `heap_growth`) keeps its traces.
    # A snapshot is a copy of every trace, memory tracemalloc does not trace: keeping one a
    # minute made RSS climb a step a minute (most of the growth in soak-tiny-n4-long)
    trace_snaps: list[tuple[float, Any]] = []

    def sample() -> None:
        row: tuple[float, ...] = (round(time.time() - wall0, 1), round(rss_mb(), 1))
        if tracemalloc.is_tracing():
            row += (round(tracemalloc.get_traced_memory()[0] / 2**20, 1),)
        if a.malloc_trim:  # what glibc holds free but unreturned: RSS after malloc_trim(0)
            trim()  # edge.allocator: the daemon's own call
            row += (round(rss_mb(), 1),)
        rss.append(row)
        mi, pm = malloc_mb(), pymalloc_mb()
        if mi is not None:
            malloc_rows.append((row[0], *mi, *(pm or ())))

    while any(p.is_alive() for p in pubs):
        sample()
        if tracemalloc.is_tracing() and (not trace_snaps or time.time() - wall0
                                         >= trace_snaps[-1][0] + a.snapshot_every):
            trace_snaps.append((time.time() - wall0,
                                tracemalloc.take_snapshot() if len(trace_snaps) == 1 else None))
        until = time.time() + 10.0
        while time.time() < until and any(p.is_alive() for p in pubs):
            time.sleep(0.25)
    publish_wall = time.time() - wall0
    busy_during = busy[0]
    load_end = os.getloadavg()
    backlog = {"clips_pending": sum(len(d.streams[s].pending) for s in ids),
               "queries_queued": len(d.worker.queries)}
    settle_until = time.monotonic() + settle_s
    time.sleep(min(2.0, settle_s))
    while time.monotonic() < settle_until:
        d.worker.collect()
        if d.worker.idle():
            break
        time.sleep(0.2)
    t_stop = time.monotonic()
    left = d.stop(timeout=30)
    stop_s = time.monotonic() - t_stop
    time.sleep(1.0)
    sub.loop_stop()
    sub.disconnect()
    sample()
    heap_growth = []  # where the traced Python heap grew between the 2nd snapshot and the end
    if tracemalloc.is_tracing() and len(trace_snaps) >= 2:
        end = tracemalloc.take_snapshot()
        for st in end.compare_to(trace_snaps[1][1], "lineno")[:15]:
            heap_growth.append({"where": str(st.traceback[0]), "size_diff_kb": round(st.size_diff / 1024, 1),
                                "count_diff": st.count_diff})

    # ---- UTC error of every result
    errs = [r["start"] - r["truth_start"] for r in records if r["truth_start"] is not None]
    errs += [r["end"] - r["truth_end"] for r in records if r["truth_end"] is not None]
    unknown = sum(r["truth_start"] is None or r["truth_end"] is None for r in records)
    # ---- latency: publisher sent the last frame of the span -> subscriber got the message
    pub = {p.stream: p for p in pubs}
    truth_by_key = {(r["stream"], r["monitor"], round(r["end"], 3)): r for r in records}
    lat: dict[str, list[float]] = {"events": [], "answers": []}
    for topic, payload, t_recv in received:
        kind = "events" if topic.endswith("/events") else "answers"
        stream, monitor = payload.get("stream"), payload.get("monitor")
        if kind == "answers":
            parts = topic.split("/")
            stream, monitor = parts[1], parts[2]
        end = payload.get("end")
        if stream not in pub or end is None:
            continue
        from datetime import datetime

        end_ts = datetime.fromisoformat(end).timestamp()
        rec = truth_by_key.get((stream, monitor, round(end_ts, 3)))
        cap_end = rec["truth_end"] if rec and rec["truth_end"] is not None else end_ts
        sent = pub[stream].wall_of(cap_end - FRAME / SR / 2)
        if sent is not None:
            lat[kind].append(t_recv - sent)
    reg = metrics.registry

    def total(name: str, **labels: str) -> float:
        return sum(s.value for m in reg.collect() for s in m.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    by_monitor = {}
    for mon in [m["name"] for m in soak_monitors(a)]:
        by_monitor[mon] = {
            "results": sum(r["monitor"] == mon for r in records),
            "queries_run": total("fe_queries_total", monitor=mon),
            "queries_missed": total("fe_queries_missed_total", monitor=mon),
            "queries_failed": total("fe_queries_failed_total", monitor=mon),
        }
    clips_total = sum(d.streams[s].clips.next_index - d.streams[s].clips.skipped for s in ids)
    clips_encoded = total("fe_clips_encoded_total")
    clips_dropped = {r: total("fe_clips_dropped_total", reason=r)
                     for r in ("behind", "overwritten", "encoder_error", "shutdown")}
    return {
        "config": {"streams": n_streams, "audio_s": audio_s, "speed": speed, "model": a.model,
                   "dtype": a.dtype, "every": a.every, "window": a.window,
                   "new_tokens": a.new_tokens, "outages": outages, "history_s": history_s,
                   "max_skew_s": skew, "tracemalloc": tracemalloc.is_tracing(),
                   "malloc_trim": a.malloc_trim, "trim_every": settings.allocator.trim_every,
                   "malloc_env": {k: v for k, v in os.environ.items()
                                  if k.startswith("MALLOC_") or k == "PYTHONMALLOC"}},
        "wall_s": round(time.time() - wall0, 1),
        "loadavg": {"start": [round(x, 2) for x in load_start],
                    "end_of_audio": [round(x, 2) for x in load_end]},
        "worker_utilisation": round(busy_during / publish_wall, 3),  # busy while audio arrived
        "encode_s_per_clip": round(total("fe_encode_seconds_sum")
                                   / max(1.0, clips_encoded), 3),
        "backlog_at_end": backlog,
        "query_group_s": {mon: {"n": len(v), "p50": pct(v, 50), "mean": round(float(np.mean(v)), 3)}
                          for mon in ("scene", "burst")
                          for v in [[t for names, t in group_s if names == [mon]]] if v},
        # the slots of each scene answer's window (30 = 5 min, however many held audio)
        "scene_window_slots": sorted({r["slots"] for r in records if r["monitor"] == "scene"}),
        "frames_published": sum(len(p.sent_capture) for p in pubs),
        "frames_in": total("fe_frames_in_total"),
        "clips": clips_total,
        "clips_encoded": clips_encoded,
        "clips_gap": total("fe_clips_gap_total"),
        # cut by an outage before flush_partial of them arrived: the outage's, not overload's
        "clips_too_short": total("fe_clips_dropped_total", reason="too_short"),
        "clips_dropped": clips_dropped,
        "monitors": by_monitor,
        "timeline_pieces": {c: total("fe_timeline_pieces_total", cause=c)
                            for c in ("start", "gap", "restart", "step", "drift")},
        "alerts_raised": total("fe_alerts_raised_total"),
        "latency_s": {k: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95), "max": pct(v, 100)}
                      for k, v in lat.items()},
        "utc_error_s": {"n": len(errs), "unknown_results": unknown,
                        "max_abs": round(max((abs(e) for e in errs), default=0.0), 4),
                        "p95_abs": pct([abs(e) for e in errs], 95)},
        "rss_mb": rss,
        # (wall s, in use, free but kept, arenas: glibc's mallinfo2[, pymalloc arenas, blocks
        # in use in them])
        "malloc_mb": malloc_rows,
        # the daemon's own trimming (allocator.trim_every): calls and the time they took
        "daemon_malloc_trim": {"calls": total("fe_malloc_trim_seconds_count"),
                               "total_s": round(total("fe_malloc_trim_seconds_sum"), 3),
                               "mean_ms": round(1000 * total("fe_malloc_trim_seconds_sum")
                                                / max(1.0, total("fe_malloc_trim_seconds_count")), 2)},
        "python_heap_growth": heap_growth,
        "stop": {"seconds": round(stop_s, 2), "abandoned": left},
    }


def kept_up(r: dict[str, Any]) -> bool:
    """Nothing dropped, missed, failed or abandoned, and every stream's queries ran."""
    mons = r["monitors"].values()
    return (sum(r["clips_dropped"].values()) == 0
            and all(m["queries_missed"] == 0 and m["queries_failed"] == 0 for m in mons)
            and not any(r["stop"]["abandoned"].values())
            and all(m["queries_run"] >= r["config"]["streams"] for m in mons))


def find_max(a: argparse.Namespace, model: Any, broker: Any, tmp: Path) -> dict[str, Any]:
    """The largest N real-time streams that keep up (`kept_up`): start at ``--start``, double
    while it keeps up, then bisect, each trial ``--audio-s`` of real-time audio per stream,
    until the answer is known or the next trial would overrun ``--budget-s``.

    Every stream first sends one 10-s clip captured 5 minutes ago and restarts (a gap longer
    than ``audio.max_gap``: a new timeline piece, the slots in between masked), so each
    ``scene`` query runs over a full 5-minute window from the first minute on: the cost of
    the steady state without five minutes of warm-up per trial."""
    t_begin = time.monotonic()
    good, bad = 0, None  # largest N that kept up, smallest that did not
    n = max(1, a.start)
    trials: list[dict[str, Any]] = []
    while True:
        t0 = time.monotonic()
        r = run_trial(a, model, broker, tmp, n, a.audio_s, 1.0, [], history_s=300.0,
                      settle_s=a.settle_s)
        ok = kept_up(r)
        took = time.monotonic() - t0
        trials.append({"streams": n, "kept_up": ok, "trial_s": round(took, 1),
                       **{k: r[k] for k in ("loadavg", "worker_utilisation", "encode_s_per_clip",
                                            "query_group_s", "scene_window_slots", "clips", "clips_encoded",
                                            "clips_dropped", "monitors", "latency_s",
                                            "utc_error_s", "stop")}})
        C.log(f"[soak] N={n}: {'keeps up' if ok else 'falls behind'} "
              f"(worker {r['worker_utilisation']:.0%} busy, encode {r['encode_s_per_clip']} s/clip, "
              f"dropped {sum(r['clips_dropped'].values()):.0f}, missed "
              f"{sum(m['queries_missed'] for m in r['monitors'].values()):.0f}, "
              f"load {r['loadavg']['end_of_audio'][0]}, {took:.0f} s)")
        if ok:
            good = max(good, n)
        else:
            bad = n if bad is None else min(bad, n)
        if bad is None:
            nxt = 2 * n
        elif bad - good <= 1:
            break
        else:
            nxt = (good + bad) // 2 if good else (bad - 1 if bad > 1 else 0)
        if nxt < 1 or time.monotonic() - t_begin + took > a.budget_s:
            break
        n = nxt
    return {"largest_n": good, "smallest_failing_n": bad,
            "exact": bad is not None and bad - good <= 1,
            "search_s": round(time.monotonic() - t_begin, 1), "trials": trials}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--audio-s", type=float, default=None,
                    help="audio per stream, publisher clock (default 600; --find-max: 90)")
    ap.add_argument("--speed", type=float, default=1.0, help="publisher clock x real time")
    ap.add_argument("--model", default="0.5B", help="none | tiny (fixture) | 0.5B (random weights)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--every", default="60s")
    ap.add_argument("--window", default="5m")
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--outage", action="append", default=[], help="START:LEN publisher seconds")
    ap.add_argument("--find-max", action="store_true",
                    help="find the largest N real-time streams that keep up (one 5-min yes/no "
                         "monitor per stream every minute)")
    ap.add_argument("--start", type=int, default=1, help="--find-max: first N to try")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="--find-max: no new trial once this much time has gone")
    ap.add_argument("--settle-s", type=float, default=30.0,
                    help="--find-max: after the last frame, time for the queued work to finish")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also trace the Python heap: its size beside each RSS sample, and the "
                         "lines where it grew between the second snapshot and the end")
    ap.add_argument("--snapshot-every", type=float, default=60.0,
                    help="--tracemalloc: seconds between heap snapshots")
    ap.add_argument("--malloc-trim", action="store_true",
                    help="at each RSS sample also call glibc's malloc_trim(0) and record the RSS "
                         "after it (growth that trim returns is allocator retention, not a leak)")
    ap.add_argument("--trim-every", type=float, default=None,
                    help="the daemon's allocator.trim_every in seconds (0: off; default: the "
                         "daemon's default, 10 s)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.audio_s is None:
        a.audio_s = 90.0 if a.find_max else 600.0
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    machine = C.machine_info()
    outages = [tuple(float(v) for v in o.split(":")) for o in a.outage]

    if a.tracemalloc:
        tracemalloc.start(1)
    from tests.mqtt_broker import Mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="fe-soak-"))
    broker = Mosquitto(tmp).start()
    t_build = time.monotonic()
    model = build_model(a.model, a.dtype)
    build_s = time.monotonic() - t_build
    if a.find_max:
        C.log(f"[soak] largest N: model {a.model} {a.dtype}, {a.audio_s:.0f} s of real-time audio "
              f"per trial, budget {a.budget_s:.0f} s (model built in {build_s:.0f} s)")
        if model is not None:  # first calls pay one-time costs: not part of any trial
            import torch

            with torch.inference_mode():
                tok = model.encode(torch.zeros(1, CLIP))
                model.memory(tok.repeat(30, 1, 1), torch.ones(30))
        result = find_max(a, model, broker, tmp)
        broker.stop()
        name = a.name or f"soak-max-{a.model}-{a.dtype}"
        path = C.write_result(name, result, machine)
        C.log(f"[soak] largest N that keeps up ({a.model} {a.dtype}): {result['largest_n']}"
              + ("" if result["exact"] else f" (not exact: smallest failing "
                 f"{result['smallest_failing_n']}, budget spent)"))
        C.log(f"[soak] wrote {path}")
        os._exit(0)
    C.log(f"[soak] model {a.model} {a.dtype}, {a.streams} stream(s), {a.audio_s:.0f} s of audio "
          f"at {a.speed}x, outages {outages}")
    result = run_trial(a, model, broker, tmp, a.streams, a.audio_s, a.speed, outages)
    broker.stop()
    result["clips_unaccounted"] = (result["clips"] - result["clips_encoded"] - result["clips_gap"]
                                   - result["clips_too_short"]
                                   - sum(result["clips_dropped"].values()))
    name = a.name or f"soak-{a.model}-{a.dtype}-n{a.streams}"
    path = C.write_result(name, result, machine)
    C.log(json.dumps({k: result[k] for k in ("worker_utilisation", "encode_s_per_clip", "backlog_at_end",
                                              "query_group_s",
                                              "clips", "clips_encoded", "clips_dropped", "monitors",
                                              "latency_s", "utc_error_s", "stop")}, indent=1))
    C.log(f"[soak] wrote {path}")
    os._exit(0)  # paho / worker threads are daemons; do not wait for them


if __name__ == "__main__":
    main()
