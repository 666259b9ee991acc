"""Why a weight format decodes as fast as it does on this CPU: the decode step's matrix-vector
product (one token x a 0.5B MLP weight, 4864 x 896) in every kernel the decoder can use, as read
rate of the weight bytes, side by side in one run.

    python bench/bench_matvec_kernels.py [--threads 1] [--min-s 0.5]

24 different weights (as many as the 0.5B decoder's layers, ~420 MB in float32: read from memory,
not from the caches), timed in CPU seconds (robust to other processes taking the CPU):

  float32 linear / bfloat16 linear      F.linear on float weights
  int8pack (bf16 activations)           aten._weight_int8pack_mm, what model.quantize: int8 runs
  int8pack (float32 activations)        the same kernel fed float32 (not used: see the numbers)
  int4pack (bf16 activations)           aten._weight_int4pack_mm_for_cpu, model.quantize: int4
  fbgemm dynamic int8 (per-tensor act.) torch.ao's dynamic quantized Linear: quantizes the
                                        activation to 8 bits too (not used by the decoder)

A kernel whose GB/s is far below the float32 linear's is compute-bound here, not memory-bound:
narrower weights then buy less than their byte ratio. Writes bench/results/matvec_kernels.json.
"""

from __future__ import annotations

import argparse
import time
import warnings

import _common as C  # puts the repo on sys.path
import torch
import torch.nn.functional as F

from edge.model.quant import quantize_int4_groups, quantize_int8_rows

N, K, LAYERS = 4864, 896, 24


def rate(fn, nbytes: int, min_s: float) -> dict:
    fn()
    c0, t0, n = time.process_time(), time.perf_counter(), 0
    while time.process_time() - c0 < min_s:
        fn()
        n += 1
    cpu = (time.process_time() - c0) / n / LAYERS
    wall = (time.perf_counter() - t0) / n / LAYERS
    return {"ms_per_matvec_cpu": cpu * 1e3, "ms_per_matvec_wall": wall * 1e3,
            "weight_bytes": nbytes, "gb_s_cpu": nbytes / cpu / 1e9}


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-s", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = C.machine_info()
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(N, K, generator=g) for _ in range(LAYERS)]
    x = torch.randn(1, K, generator=g)
    xb = x.bfloat16()
    wb = [w.bfloat16() for w in ws]
    q8 = [(q, s.bfloat16(), s.float()) for q, s in map(quantize_int8_rows, ws)]
    q4 = []
    for w in ws:
        q, sz = quantize_int4_groups(w, 64)
        q4.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), sz.bfloat16()))
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    dyn = []
    for w in ws:
        lin = torch.nn.Linear(K, N, bias=False)
        lin.weight.data.copy_(w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn.append(quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                        dtype=torch.qint8)[0])
    kernels = {
        "float32 linear": (lambda: [F.linear(x, w) for w in ws], N * K * 4),
        "bfloat16 linear": (lambda: [F.linear(xb, w) for w in wb], N * K * 2),
        "int8pack (bf16 activations)": (
            lambda: [torch.ops.aten._weight_int8pack_mm(xb, q, s) for q, s, _ in q8], N * K),
        "int8pack (float32 activations)": (
            lambda: [torch.ops.aten._weight_int8pack_mm(x, q, s) for q, _, s in q8], N * K),
        "int4pack (bf16 activations)": (
            lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(xb, q, 64, sz) for q, sz in q4],
            N * K // 2 + N * (K // 64) * 2 * 2),
        "fbgemm dynamic int8 (per-tensor activations)": (lambda: [m(x) for m in dyn], N * K),
    }
    out: dict = {"shape": [N, K], "layers": LAYERS, "threads": args.threads, "kernels": {}}
    for name, (fn, nbytes) in kernels.items():
        r = rate(fn, nbytes, args.min_s)
        out["kernels"][name] = r
        C.log(f"[matvec] {name:46s} {r['ms_per_matvec_cpu']:6.3f} ms CPU  {r['gb_s_cpu']:5.1f} GB/s")
    base = out["kernels"]["float32 linear"]["ms_per_matvec_cpu"]
    for r in out["kernels"].values():
        r["speedup_vs_float32"] = base / r["ms_per_matvec_cpu"]
    out["loadavg_at_end"] = C._loadavg()
    path = C.write_result("matvec_kernels", out, machine)
    C.log(f"[matvec] wrote {path}")


if __name__ == "__main__":
    main()
