"""Where the worker's per-cycle budget puts the line between encoding and queries.

    python bench/bench_budget.py [--minutes 15] [--streams 1,2,3,4,5,6] [--monitors 1,3]
                                 [--budgets 1:1,2:1,4:1,8:1,1:2] [--profile epyc-f32-t1]

The **real** `edge.worker.InferenceWorker` (collection, round-robin encoding, gate, memory,
earliest-deadline query queue, the ``worker.encode_turns`` / ``worker.query_turns`` budget)
is stepped against a **simulated clock**: a stand-in model (`tests/edge/fakes.FakeModel`) whose
encode and query calls cost no CPU but move the clock by the time the real model takes on
this project's CPU (``--profile``: measured in docs/PERFORMANCE.md). Before every step each
stream's ring gets the audio that arrived up to the clock's time (live streams at real
time, clip ends staggered across streams); when the worker is idle the clock jumps to the
next clip end. So an hour of overload runs in seconds, deterministically, with the worker's
own code deciding every turn.

Each stream has ``M`` yes/no monitors (scored, 5-min window, every 60 s, default deadline
60 s): per stream-minute 6 clips to encode and one query group (one audio-transformer pass
over the window + one scored prefill per monitor). Swept: streams x monitors x
(encode_turns, query_turns). Recorded per point:

- **clips**: slots that elapsed, encoded, dropped (``fe_clips_dropped``: ``behind`` when more
  than ``max_pending_clips`` wait, ``overwritten``), the **encode backlog** (most clips
  pending at once, in all and on one stream) and the **encode lag** (clip end to its tokens in
  memory, max and p95);
- **queries**: periods expected (streams x monitors x minutes), answered, missed
  (``fe_queries_missed``: not started by the deadline), collapsed (periods that never fell due
  because their clips were dropped: `edge.monitors` folds missed periods into one run), and
  **lateness** = answer time minus the end of the window's audio (p50, p95, max); an answer
  is **late** when that exceeds the monitor's deadline (60 s: the next period's audio is in);
- worker busy share (model time / simulated time) and the bench's own wall time.

Written to ``bench/results/budget.json`` (``--name``); docs/PERFORMANCE.md ("Scheduling budget")
has the table and why the default budget is what it is.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from typing import Any

import _common as C  # puts the repo on sys.path
import numpy as np
import structlog

from edge.config import load_settings
from edge.metrics import Metrics
from edge.worker import InferenceWorker, StreamState
from streams.timeline import Piece
from tests.edge.fakes import FakeModel

SR = 16000
T0 = 1_800_000_000.0  # simulated UTC of the first sample (the clock and the timeline agree)

# seconds of the real model per call, float32, 1 torch thread (docs/PERFORMANCE.md)
PROFILES: dict[str, dict[str, float]] = {
    # AMD EPYC of the soak and score runs: encode ~2 s/clip ("Largest N"), audio transformer
    # over 30 slots 5.26 s, folded scored prefill 1.23 s (score-f32-t1.json)
    "epyc-f32-t1": {"encode": 2.0, "memory30": 5.26, "prefill": 1.23, "token": 0.5},
    # the Xeon of "Encoder"/"Streaming pipeline", 2 threads: encode 0.58 s, audio transformer
    # over 30 clips 1.67 s; prefill scaled from the EPYC's prefill/transformer ratio
    "xeon-f32": {"encode": 0.58, "memory30": 1.67, "prefill": 0.39, "token": 0.15},
}


class SimClock:
    def __init__(self, t: float) -> None:
        self.t = t
        self.busy = 0.0  # model seconds spent

    def __call__(self) -> float:
        return self.t

    def spend(self, s: float) -> None:
        self.t += s
        self.busy += s


class CostModel(FakeModel):
    """The tests' stand-in for `edge.model.AF2`; each call moves the simulated clock by what
    the real model takes. Scores say "no", so no monitor turns ON and asks for words."""

    def __init__(self, clock: SimClock, costs: dict[str, float]) -> None:
        super().__init__(logprobs={"no": math.log(0.9), "No": math.log(0.05),
                                   "yes": math.log(0.03), "Yes": math.log(0.02)})
        self.clock = clock
        self.costs = costs

    def encode(self, clips):
        out = super().encode(clips)
        self.clock.spend(self.costs["encode"] * clips.shape[0])  # no batch gain on a CPU
        return out

    def memory(self, tokens, mask):
        self.clock.spend(self.costs["memory30"] * tokens.shape[0] / 30)  # all slots, masked or not
        return super().memory(tokens, mask)

    def score_batch_kv(self, queries):
        self.clock.spend(self.costs["prefill"] * len(queries))
        return super().score_batch_kv(queries)

    def ask_batch(self, queries, sampling, max_new_tokens=None):
        n = max(max_new_tokens or [sampling.max_new_tokens])
        self.clock.spend(self.costs["token"] * n)
        return super().ask_batch(queries, sampling, max_new_tokens)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def run_point(n_streams: int, n_monitors: int, budget: tuple[int, int], minutes: float,
              costs: dict[str, float], audio: dict[str, Any] | None = None) -> dict[str, Any]:
    ids = [f"s{i}" for i in range(n_streams)]
    every, deadline = 60.0, 60.0
    settings = load_settings(data={
        "audio": dict(audio or {}),
        "worker": {"encode_turns": budget[0], "query_turns": budget[1]},
        "streams": [{"id": i, "source": "mqtt"} for i in ids],
        "monitors": [{"name": f"m{k}", "question": f"is there event {k}?", "every": "60s",
                      "window": "5m"} for k in range(n_monitors)],
    })
    clock = SimClock(T0)
    metrics = Metrics()
    answers: list[tuple[str, str, float]] = []  # (stream, monitor, lateness)

    class Sink:
        def submit(self, r, audio, sr):
            answers.append((r.stream, r.monitor, clock() - r.end.timestamp()))

        def publish_level(self, stream, dbfs):
            pass

    streams = {i: StreamState(c, settings) for i, c in zip(ids, settings.streams)}
    w = InferenceWorker(streams, settings, model=CostModel(clock, costs), sink=Sink(),
                        metrics=metrics, clock=clock)
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal(SR * 60)).astype(np.float32)
    clip_s = settings.audio.clip
    assert settings.audio.hop == clip_s  # `expected` below counts contiguous 10-s slots
    # stream j starts j/N of a clip later: clip ends spread over the cycle, as live streams do
    starts = {i: T0 + j * clip_s / n_streams for j, i in enumerate(ids)}
    for i, s in streams.items():
        s.timeline.add(Piece(0, starts[i]))
    end = T0 + minutes * 60.0
    lags: list[float] = []
    seen = {i: -1 for i in ids}  # newest slot remembered per stream
    max_pending = max_pending_one = 0

    def feed() -> None:
        for i, s in streams.items():
            target = int((min(clock(), end) - starts[i]) * SR)
            pos = s.ring.write_pos
            while pos < target:
                k = pos % noise.shape[0]
                n = min(target - pos, noise.shape[0] - k)
                s.ring.append(pos, noise[k:k + n])
                pos += n

    def remembered() -> None:  # encode lag of the clips the step put in memory
        for i, s in streams.items():
            clips = s.memory.clips()
            for c in clips:
                if c.index > seen[i]:
                    lags.append(clock() - (c.t_end or 0.0))
            if clips:
                seen[i] = max(seen[i], clips[-1].index)

    t_wall = time.perf_counter()
    while clock() < end:
        feed()
        w.collect()
        pend = [len(s.pending) for s in streams.values()]
        max_pending, max_pending_one = max(max_pending, sum(pend)), max(max_pending_one, *pend)
        worked = w.step()
        remembered()
        if not worked:  # idle: on to the next clip end of any stream
            nxt = min(starts[i] + s.clips.bounds(s.clips.next_index)[1] / SR
                      for i, s in streams.items())
            clock.t = max(clock.t, min(nxt, end))
    # the audio ends: the worker finishes what waits (the last partial clips too), so every
    # period that fell due is answered, missed or failed by the end of the point
    feed()  # the audio up to the end that arrived during the last step
    for s in streams.values():
        s.ended = True
    while True:
        worked = w.step()
        remembered()
        if not worked:
            break
    wall = time.perf_counter() - t_wall

    def total(metric, *label_sets) -> int:
        return int(sum(metric.labels(*ls)._value.get() for ls in label_sets))

    dropped = {r: total(metrics.clips_dropped, *[(i, r) for i in ids])
               for r in ("behind", "overwritten", "encoder_error")}
    mon = [f"m{k}" for k in range(n_monitors)]
    pairs = [(i, m) for i in ids for m in mon]
    answered = total(metrics.queries, *pairs)
    missed = total(metrics.queries_missed, *pairs)
    failed = total(metrics.queries_failed, *pairs)
    # a scheduled monitor falls due on the first clip ending at or after each multiple of
    # `every` (edge.monitors); slots are contiguous here, so the periods of a stream are
    # (slots x hop) // every. A period whose clip was dropped folds into the next one heard.
    hop_s = settings.audio.hop
    expected = sum(math.floor(s.clips.next_index * hop_s / every + 1e-9)
                   for s in streams.values()) * n_monitors
    late = [x for _, _, x in answers]
    slots = sum(s.clips.next_index for s in streams.values())
    encoded = total(metrics.clips_encoded, *[(i,) for i in ids])
    return {
        "streams": n_streams, "monitors": n_monitors,
        "encode_turns": budget[0], "query_turns": budget[1],
        "clips": {"slots": slots, "encoded": encoded, "dropped": dropped,
                  "dropped_total": sum(dropped.values()),
                  "backlog_max": max_pending, "backlog_max_one_stream": max_pending_one,
                  "encode_lag_p95_s": _pct(lags, 0.95),
                  "encode_lag_max_s": round(max(lags), 2) if lags else None},
        "queries": {"expected": expected, "answered": answered, "missed": missed,
                    "failed": failed, "collapsed": expected - answered - missed - failed,
                    "late": sum(1 for x in late if x > deadline),
                    "lateness_p50_s": _pct(late, 0.5), "lateness_p95_s": _pct(late, 0.95),
                    "lateness_max_s": round(max(late), 2) if late else None},
        "worker_busy": round(clock.busy / (clock() - T0), 3),
        "sim_s": round(clock() - T0, 1), "wall_s": round(wall, 2),
    }


def per_stream_minute(costs: dict[str, float], n_monitors: int) -> float:
    """Model seconds one stream costs per minute of audio (6 clips, one query group)."""
    return 6 * costs["encode"] + costs["memory30"] + n_monitors * costs["prefill"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="simulated audio per point")
    ap.add_argument("--streams", default="1,2,3,4,5,6")
    ap.add_argument("--monitors", default="1,3")
    ap.add_argument("--budgets", default="1:1,2:1,4:1,8:1,1:2",
                    help="encode_turns:query_turns pairs")
    ap.add_argument("--profile", default="epyc-f32-t1", choices=sorted(PROFILES))
    ap.add_argument("--name", default="budget")
    args = ap.parse_args()
    # the worker logs every missed query; the counts are what this bench reports
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    costs = PROFILES[args.profile]
    budgets = [(int(e), int(q)) for e, q in (b.split(":") for b in args.budgets.split(","))]
    machine = C.machine_info()
    points = []
    t0 = time.perf_counter()
    for n in (int(x) for x in args.streams.split(",")):
        for m in (int(x) for x in args.monitors.split(",")):
            load = n * per_stream_minute(costs, m) / 60
            for b in budgets:
                p = run_point(n, m, b, args.minutes, costs)
                p["offered_load"] = round(load, 2)
                points.append(p)
                c, q = p["clips"], p["queries"]
                C.log(f"N={n} M={m} load={load:.2f} budget {b[0]}:{b[1]}: clips dropped "
                      f"{c['dropped_total']}/{c['slots']}, backlog {c['backlog_max']}, lag max "
                      f"{c['encode_lag_max_s']} s | queries {q['answered']}/{q['expected']} "
                      f"missed {q['missed']} collapsed {q['collapsed']} late {q['late']} "
                      f"lateness max {q['lateness_max_s']} s | busy {p['worker_busy']} "
                      f"({p['wall_s']} s)")
    settings = load_settings(data={})
    path = C.write_result(args.name, {
        "profile": args.profile, "costs_s": costs, "minutes": args.minutes,
        "audio": {"encode_batch": settings.audio.encode_batch,
                  "max_pending_clips": settings.audio.max_pending_clips,
                  "query_streams": settings.worker.query_streams},
        "monitor": {"answer": "yes_no (scored)", "every_s": 60, "window_s": 300, "deadline_s": 60},
        "points": points, "bench_wall_s": round(time.perf_counter() - t0, 1),
    }, machine)
    C.log(f"wrote {path}")


if __name__ == "__main__":
    main()
