"""Full query over 5 minutes of audio: this project vs the official approach.

    python bench/bench_query.py [--new-tokens 32] [--dtypes float32,bfloat16]

Random weights at the released encoder + 0.5B LM dims; 30 clips of 10 s; a 15-token prompt;
N greedy tokens with EOS disabled.

  * official  encode all 30 clips, run the audio transformer, then generate with every layer's
              cross-attention K/V recomputed at every forward pass (bench_decoder.official_generate);
  * ours      the clips were already encoded as they streamed in: audio transformer over the
              stored tokens, cross K/V once, cached generation (`AF2.memory`, `AF2.cross_kv`,
              `AF2.generate`).
Both produce the same token ids (asserted). Writes bench/results/query.json.
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import _common as C  # puts the repo on sys.path
import torch
from bench_decoder import PROMPT_LEN, WINDOWS, official_generate, ours_generate
from bench_encoder import ensure_encoder_runs

from edge.model.af2 import AF2
from edge.constants import CLIP_SAMPLES
from edge.model.config import AF2Config


def official_query(m: AF2, clips, mask, prompt, n):
    c0 = time.process_time()
    t0 = time.perf_counter()
    tokens = m.encode(clips)
    t_enc = time.perf_counter() - t0
    memory = m.memory(tokens, mask)
    t_mem = time.perf_counter() - t0 - t_enc
    ids, gen = official_generate(m, prompt, memory, mask, n)
    total = time.perf_counter() - t0
    return ids, tokens, {"cpu_total_s": time.process_time() - c0, "encode_s": t_enc, "audio_transformer_s": t_mem,
                         "generate_s": total - t_enc - t_mem, "total_s": total,
                         "decode_tokens_per_s": gen["tokens_per_s"]}


def our_query(m: AF2, tokens, mask, prompt, n):
    c0 = time.process_time()
    t0 = time.perf_counter()
    memory = m.memory(tokens, mask)
    t_mem = time.perf_counter() - t0
    ids, gen = ours_generate(m, prompt, memory, mask, n)
    total = time.perf_counter() - t0
    return ids, {"cpu_total_s": time.process_time() - c0, "audio_transformer_s": t_mem, "cross_kv_s": gen["cross_kv_s"],
                 "generate_s": total - t_mem, "total_s": total,
                 "decode_tokens_per_s": gen["tokens_per_s"]}


class Setup(NamedTuple):
    cfg: AF2Config
    m: AF2
    notes: list[str]  # what ensure_encoder_runs had to do
    g: torch.Generator  # seeded; drawn from for clips and prompt, callers draw on from it
    clips: torch.Tensor  # (WINDOWS, CLIP_SAMPLES) noise
    mask: torch.Tensor
    prompt: list[int]  # PROMPT_LEN random token ids


def released_setup(dtype: torch.dtype, tag: str) -> Setup:
    """The released encoder + 0.5B LM with random weights, a 5-minute window of noise clips
    and a random prompt: what the query and score benchmarks measure on (same seeds)."""
    cfg = AF2Config.released("0.5B")
    C.log(f"[{tag}] {str(dtype).replace('torch.', '')}: released encoder + 0.5B LM, random weights")
    m = AF2.random(cfg, dtype, seed=0)
    notes = ensure_encoder_runs(m)
    g = torch.Generator().manual_seed(2)
    clips = (torch.rand(WINDOWS, CLIP_SAMPLES, generator=g) * 2 - 1) * 0.5
    prompt = torch.randint(0, cfg.lm.vocab_size, (PROMPT_LEN,), generator=g).tolist()
    return Setup(cfg, m, notes, g, clips, torch.ones(WINDOWS), prompt)


def bench_dtype(dtype: torch.dtype, new_tokens: int, repeats: int) -> dict:
    name = str(dtype).replace("torch.", "")
    _, m, notes, _, clips, mask, prompt = released_setup(dtype, "query")

    # warm-up: a short query of each kind on 2 clips
    _, tok_w, _ = official_query(m, clips[:2], mask[:2], prompt, 2)
    our_query(m, tok_w, mask[:2], prompt, 2)

    ids_off, tokens, t_off = official_query(m, clips, mask, prompt, new_tokens)
    C.log(f"[query] {name} official {t_off['total_s']:.1f} s (encode {t_off['encode_s']:.1f} s, "
          f"generate {t_off['generate_s']:.1f} s)")
    ours = []
    for _ in range(repeats):
        ids_ours, t = our_query(m, tokens, mask, prompt, new_tokens)
        ours.append(t)
        C.log(f"[query] {name} ours     {t['total_s']:.2f} s (audio transformer "
              f"{t['audio_transformer_s']:.2f} s, generate {t['generate_s']:.2f} s)")
        if ids_ours != ids_off:
            raise AssertionError(f"token ids differ: ours {ids_ours} vs official {ids_off}")
    best = min(ours, key=lambda r: r["total_s"])
    return {
        "dtype": name,
        "notes": notes,
        "windows": WINDOWS,
        "prompt_tokens": PROMPT_LEN,
        "new_tokens": new_tokens,
        "same_token_ids": True,
        "official": t_off,
        "ours": {"runs": ours, **best},
        "speedup": t_off["total_s"] / best["total_s"],
        "speedup_cpu_time": t_off["cpu_total_s"] / min(r["cpu_total_s"] for r in ours),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="runs of our query (best kept); "
                    "the official one runs once")
    C.add_model_args(ap)
    args = ap.parse_args()
    C.apply_threads(args)
    machine = C.machine_info()
    results = {"release": "0.5B", "dtypes": {}}
    for name in args.dtypes.split(","):
        r = bench_dtype(getattr(torch, name), args.new_tokens, args.repeats)
        C.log(f"[query] {name}: official {r['official']['total_s']:.1f} s vs ours "
              f"{r['ours']['total_s']:.2f} s = {r['speedup']:.1f}x (CPU time {r['speedup_cpu_time']:.1f}x)")
        results["dtypes"][name] = r
    path = C.write_result(C.result_name("query", args.threads), results, machine)
    C.log(f"[query] wrote {path}")


if __name__ == "__main__":
    main()
