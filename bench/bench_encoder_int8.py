"""Encoder int8 on this CPU: float32 vs bfloat16 vs dynamic int8 (`model.encoder.quantize: int8`),
side by side in one run, with the token deviation and its effect on `score`.

    python bench/bench_encoder_int8.py [--repeats 3] [--threads 1] [--dtypes float32,bfloat16,int8]

Released HTS-AT dims (270 M parameters) with random weights; per clip (`TorchBackend`, each clip
alone as the daemon runs it): wall and CPU seconds (best of `--repeats` after a warm-up, median
recorded too). Deviation vs float32 on three clips: noise, a 440-Hz tone, clip 0 of the af2-tiny
fixture recording. The effect on `score`: the af2-tiny fixture model's own (tiny) encoder in int8
vs float32, two yes/no questions on the fixture recording (P(yes) and log-probability change).
Also the start-up measurement `TorchBackend` decides with (`quant.encoder_int8_speedup`) and the
time to quantize. Records CPU flags and load averages. Writes bench/results/encoder_int8.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as C  # puts the repo on sys.path
import torch

from edge.encoder_backends import TorchBackend
from edge.model import quant

QUESTIONS = ["Is the compressor knocking?", "What sound is this? Is anything abnormal?"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def per_clip(b: TorchBackend, clip: torch.Tensor, repeats: int) -> dict:
    b.encode(clip)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        b.encode(clip)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall_s": min(wall), "cpu_s": min(cpu), "wall_median_s": statistics.median(wall),
            "cpu_median_s": statistics.median(cpu), "wall_all": wall, "cpu_all": cpu}


def probe_clips() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    t = torch.arange(160000) / 16000.0
    out = {"noise": (torch.rand(160000, generator=g) * 2 - 1) * 0.8,
           "tone_440hz": 0.5 * torch.sin(2 * torch.pi * 440.0 * t)}
    f = C.REPO_ROOT / "tests" / "fixtures" / "af2-tiny" / "expected.safetensors"
    if f.is_file():
        from safetensors.torch import load_file

        out["fixture_clip"] = load_file(str(f))["clips"][0].float()
    return out


def fixture_score_effect() -> dict | None:
    """The fixture model: its encoder in int8 vs float32 -> tokens, memory and score deviation."""
    d = C.REPO_ROOT / "tests" / "fixtures" / "af2-tiny"
    if not d.is_dir():
        return None
    from safetensors.torch import load_file

    from edge.model import AF2

    m = AF2.load(d / "checkpoint")
    clips = load_file(str(d / "expected.safetensors"))["clips"]
    f32 = TorchBackend(m, "cpu", "float32")
    q = TorchBackend(m, "cpu", "float32")
    q.encoder = quant.encoder_int8(f32.encoder)
    t32, t8 = f32.encode(clips), q.encode(clips)
    mask = torch.ones(len(clips))
    m32, m8 = m.memory(t32, mask), m.memory(t8, mask)
    out: dict = {"tokens_rel_err": rel(t8, t32), "memory_rel_err": rel(m8, m32), "questions": {}}
    for question in QUESTIONS:
        a = m.score(m32, mask, question, ["yes", "no"])
        b = m.score(m8, mask, question, ["yes", "no"])
        out["questions"][question] = {
            "p_yes_float32": a.probs["yes"], "p_yes_int8": b.probs["yes"],
            "max_abs_logprob_change": max(abs(a.logprobs[o] - b.logprobs[o]) for o in a.options)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16,int8")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = C.machine_info()
    from trt_builders.engines import random_released_model

    m = random_released_model(seed=0)
    clips = probe_clips()
    probe = torch.stack(list(clips.values()))
    res: dict = {"threads": args.threads, "repeats": args.repeats, "variants": {}}
    t0 = time.perf_counter()
    res["startup_measurement_int8_vs_float32"] = quant.encoder_int8_speedup(torch.float32)
    res["startup_measurement_int8_vs_bfloat16"] = quant.encoder_int8_speedup(torch.bfloat16)
    res["startup_measurement_s"] = time.perf_counter() - t0
    C.log(f"[encoder-int8] start-up measurement: int8 {res['startup_measurement_int8_vs_float32']:.2f}x "
          f"float32, {res['startup_measurement_int8_vs_bfloat16']:.2f}x bfloat16")
    ref = None
    for name in args.dtypes.split(","):
        if name == "int8":
            b = TorchBackend(m, "cpu", "float32")
            t0 = time.perf_counter()
            b.encoder = quant.encoder_int8(b.encoder)
            setup = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            b = TorchBackend(m, "cpu", name)
            setup = time.perf_counter() - t0
        r = per_clip(b, probe[:1], args.repeats)
        r["setup_s"] = setup
        r["loadavg"] = C._loadavg()
        tokens = b.encode(probe)
        if ref is None:
            ref = tokens
        r["tokens_rel_err_vs_first"] = {k: rel(tokens[i], ref[i]) for i, k in enumerate(clips)}
        res["variants"][name] = r
        C.log(f"[encoder-int8] {name}: {r['wall_s']:.3f} s/clip wall, {r['cpu_s']:.3f} s CPU "
              f"(median {r['wall_median_s']:.3f} / {r['cpu_median_s']:.3f}); rel err "
              + ", ".join(f"{k} {v:.1e}" for k, v in r["tokens_rel_err_vs_first"].items())
              + f"; load {r['loadavg']}")
        del b
    v = res["variants"]
    if "float32" in v:
        for r in v.values():
            r["cpu_speedup_vs_float32"] = v["float32"]["cpu_s"] / r["cpu_s"]
            r["wall_speedup_vs_float32"] = v["float32"]["wall_s"] / r["wall_s"]
    res["fixture_score_effect"] = fixture_score_effect()
    C.log(f"[encoder-int8] fixture score effect: {res['fixture_score_effect']}")
    res["loadavg_at_end"] = C._loadavg()
    path = C.write_result(C.result_name("encoder_int8", None), res, machine)
    C.log(f"[encoder-int8] wrote {path}")


if __name__ == "__main__":
    main()
