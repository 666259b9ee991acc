"""Decoder speed against the memory-bandwidth bound: eager vs static path, float32 / bfloat16 /
int8 / int4 weights, side by side in one run.

    python bench/bench_decoder_paths.py [--release 0.5B] [--new-tokens 16] [--variants ...]

Random weights at the released LM dims (never 3B on a shared CPU), a 5-minute memory (30 windows,
1920 tokens), a 15-token prompt, greedy decoding with EOS disabled. For each variant: tokens/s of
the eager reference loop and of the static path, the bytes a step reads (weights + cross K/V),
and tokens/s x bytes as a fraction of this machine's measured read bandwidth (a 1-GiB float32
reduction, measured right before each variant because other processes share the machine). Also
the quantized variants' deviation from float32: greedy-id agreement and logit error on the same
prompt, and the change of a yes/no `AF2.score` (the fixture tokenizer's prompt on the same memory).
Writes bench/results/decoder_paths.json (bench/results/decoder_paths-t<N>.json with --threads N).
"""

from __future__ import annotations

import argparse
import gc

import _common as C  # puts the repo on sys.path
import torch
from _decode_paths import decoder_only_model, measure, read_bandwidth

from edge.model import AF2Config
from edge.model.config import TOKENS_PER_CLIP

VARIANTS = {  # name -> (dtype, quantize)
    "float32": (torch.float32, "none"), "bfloat16": (torch.bfloat16, "none"),
    "int8": (torch.float32, "int8"), "int4": (torch.float32, "int4"),
    "bf16-int8": (torch.bfloat16, "int8"),
}


@torch.inference_mode()
def deviation(m, ref_logits: torch.Tensor, ids: list[int], memory, mask) -> dict:
    logits = m.logits(memory.to(m.dtype), mask, ids)
    err = float((logits - ref_logits).norm() / ref_logits.norm())
    agree = float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())
    return {"logit_rel_err": err, "teacher_forced_top1_agreement": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", default="0.5B", choices=["0.5B"], help="never 3B on a shared CPU")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--variants", default="float32,bfloat16,int8,int4")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = C.machine_info()
    cfg = AF2Config.released(args.release)
    results: dict = {"release": args.release, "windows": args.windows, "prompt_tokens": 15,
                     "new_tokens": args.new_tokens, "variants": {}}
    g = torch.Generator().manual_seed(1)
    memory = torch.randn(args.windows * TOKENS_PER_CLIP, cfg.audio_dim, generator=g)
    mask = torch.ones(args.windows)
    ref_logits = ref_ids = ref_score = None
    for name in args.variants.split(","):
        dtype, q = VARIANTS[name]
        C.log(f"[decoder-paths] {name}: building")
        m = decoder_only_model(cfg, dtype, "cpu", quantize=q, seed=0)
        bw = read_bandwidth(torch.device("cpu"))
        r = measure(m, ["eager", "static"], args.windows, 15, args.new_tokens, bw)
        r["read_bandwidth_gb_s"] = bw / 1e9
        r["loadavg"] = C._loadavg()
        ids = r["paths"]["static"]["token_ids"]
        if ref_logits is None:  # the first variant (float32) is the reference
            ref_ids = r["prompt"] + ids
            ref_logits = m.logits(memory, mask, ref_ids)
            ref_score = r.get("score")
        elif dtype == torch.float32:  # quantized from the same float32 weights (bf16 variants
            # draw their own random weights, so a deviation would compare different models)
            r["deviation_vs_first"] = deviation(m, ref_logits, ref_ids, memory, mask)
            r["greedy_agreement_vs_first"] = sum(
                a == b for a, b in zip(ids, ref_ids[15:])) / len(ids)
            sc = r.get("score", {})
            if ref_score and "probs" in sc and "probs" in ref_score:
                r["score_vs_first"] = {
                    "p_yes_abs_diff": abs(sc["probs"]["yes"] - ref_score["probs"]["yes"]),
                    "max_abs_logprob_diff": max(abs(sc["logprobs"][o] - ref_score["logprobs"][o])
                                                for o in sc["logprobs"])}
                C.log(f"[decoder-paths] {name} vs {args.variants.split(',')[0]}: "
                      f"{r['deviation_vs_first']}, greedy {r['greedy_agreement_vs_first']:.2f}, "
                      f"score {r['score_vs_first']}")
        for p, x in r["paths"].items():
            C.log(f"[decoder-paths] {name} {p}: {x['tokens_per_s']:.2f} tok/s, "
                  f"{x['achieved_gb_s']:.1f} GB/s = {100 * x['fraction_of_bandwidth']:.0f}% of "
                  f"{bw / 1e9:.1f} GB/s; prefill {x['prefill_s']:.2f} s, cross K/V {x['cross_kv_s']:.2f} s")
        results["variants"][name] = r
        del m
        gc.collect()
        path = C.write_result(C.result_name("decoder_paths", args.threads), results, machine)
    C.log(f"[decoder-paths] wrote {path}")


if __name__ == "__main__":
    main()
