"""Real-time factor of the streaming pipeline on this machine, released encoder dims.

    python bench/bench_pipeline.py [--streams 2] [--seconds 60] [--out bench/results/pipeline.json]

The model is `AF2.random` with the released HTS-AT (AF-CLAP, 2048-wide tokens) and audio
transformer; the decoder is shrunk to a stub because queries are measured elsewhere
(docs/PERFORMANCE.md) and the 3B decoder at random weights does not fit next to the
benchmark in RAM. What is measured:

- per clip: gate (level + novelty), loudness policy + int16 round trip, AF-CLAP encode
  (alone and in a batch of 4), the audio transformer over 3 and 30 clips (one query's memory);
- the whole pipeline: N streams of the demo recording written into their rings, the real
  `InferenceWorker` (gate, batched encode, memory, a model-free monitor) run to completion;
  wall and CPU time per second of audio, and how many 16-kHz streams keep up in real time;
- memory per stream: ring buffer + 30 clip encodings + gate state (bytes held).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.config import load_settings  # noqa: E402
from edge.demo import generate_demo  # noqa: E402
from edge.gate import Gate  # noqa: E402
from edge.metrics import Metrics  # noqa: E402
from edge.model import AF2, AF2Config  # noqa: E402
from edge.model.config import LMDims  # noqa: E402
from edge.worker import InferenceWorker, StreamState  # noqa: E402
from edge.windows import prepare_clip  # noqa: E402

SR = 16000
CLIP = 160000


def timeit(fn, repeat=3):
    best, total = float("inf"), 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total = min(best, dt), total + dt
    return best, total / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0, help="audio per stream")
    ap.add_argument("--release", default="3B")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    load0 = os.getloadavg()[0]
    stub_lm = LMDims(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2)
    cfg = AF2Config.released(a.release).with_lm(stub_lm)
    model = AF2.random(cfg, dtype=torch.float32)
    enc_params = sum(p.numel() for p in model.modules.encoder.parameters())
    at_params = sum(p.numel() for p in model.modules.audio_transformer.parameters())

    audio = generate_demo(max(a.seconds, 30.0))
    clips = np.stack([prepare_clip(audio[i * CLIP:(i + 1) * CLIP]) for i in range(3)])
    one = torch.from_numpy(clips[:1])
    four = torch.from_numpy(np.concatenate([clips, clips[:1]]))
    model.encode(one)  # warm up
    enc1_best, enc1_mean = timeit(lambda: model.encode(one), 3)
    enc4_best, _ = timeit(lambda: model.encode(four), 1)
    g = Gate()
    gate_best, _ = timeit(lambda: g.process(audio[:CLIP]), 5)
    prep_best, _ = timeit(lambda: prepare_clip(audio[:CLIP]), 5)
    tok3 = model.encode(torch.from_numpy(clips))
    tok30 = tok3.repeat(10, 1, 1)
    mem3_best, _ = timeit(lambda: model.memory(tok3, torch.ones(3)), 3)
    mem30_best, _ = timeit(lambda: model.memory(tok30, torch.ones(30)), 2)

    # ---- the whole pipeline, real worker, N streams
    ids = [f"s{i}" for i in range(a.streams)]
    s = load_settings(data={
        "streams": [{"id": i, "source": "mqtt"} for i in ids],
        "monitors": [{"name": "novel", "kind": "gate", "triggers": ["novelty > 2.5"]}],
        "audio": {"max_pending_clips": 1000, "encode_batch": 8},
    })
    streams = {i: StreamState(c, s) for i, c in zip(ids, s.streams)}
    n = int(a.seconds * SR) // CLIP * CLIP
    frame = 1600
    t_ingest = time.perf_counter()
    for st in streams.values():
        for j in range(0, n, frame):
            st.ring.append(j, audio[j:j + frame])
    ingest_s = time.perf_counter() - t_ingest
    w = InferenceWorker(streams, s, model=model, metrics=Metrics(), lossless=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    while w.step():
        pass
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    audio_s = a.streams * n / SR
    rtf = wall / audio_s  # wall seconds per second of audio (all streams)
    ring_bytes = streams[ids[0]].ring._buf.nbytes
    mem_tokens = 30 * 64 * cfg.audio_dim * 4
    res = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(),
                    "load_avg_before": round(load0, 2), "load_avg_after": round(os.getloadavg()[0], 2),
                    "note": "shared CI box: other processes may compete for the 2 cores; "
                            "cpu_s < 2 x wall_s means the run did not get both cores"},
        "model": {"encoder": f"HTS-AT released dims ({a.release} config), random weights, float32",
                  "encoder_params_M": round(enc_params / 1e6, 1),
                  "audio_transformer_params_M": round(at_params / 1e6, 1),
                  "token_dim": cfg.audio_dim},
        "per_clip_s": {
            "gate_level_novelty": round(gate_best, 4),
            "loudness_int16": round(prep_best, 4),
            "encode_1_clip": round(enc1_best, 3),
            "encode_1_clip_mean": round(enc1_mean, 3),
            "encode_4_clips_per_clip": round(enc4_best / 4, 3),
        },
        "per_query_s": {"audio_transformer_3_clips": round(mem3_best, 3),
                        "audio_transformer_30_clips": round(mem30_best, 3)},
        "pipeline": {
            "streams": a.streams, "audio_s_per_stream": n / SR,
            "ingest_s": round(ingest_s, 4),
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "clips": w.clips_processed,
            "rtf": round(rtf, 4),
            "cpu_s_per_audio_s": round(cpu / audio_s, 4),
            "streams_real_time": int(1.0 / rtf),
            "streams_real_time_note": "streams whose encoding keeps up with real time, no "
                                      "queries; each AF2 query takes the worker away from "
                                      "encoding (memory + decoding, see PERFORMANCE.md)",
        },
        "memory_per_stream_MB": {
            "ring": round(ring_bytes / 2**20, 1),
            "clip_encodings_30": round(mem_tokens / 2**20, 1),
            "total": round((ring_bytes + mem_tokens) / 2**20, 1),
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
