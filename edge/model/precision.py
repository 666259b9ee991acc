"""The precision policy, stated once.

* float32 means float32: wherever a float32 result is promised (the reference model on CUDA,
  the float32 islands of a TensorRT engine) TF32 is off (`fp32_on_cuda`, and the engine
  builder clears `BuilderFlag.TF32`, trt_builders/tensorrt_engine.py).
* `model.dtype: auto` (the default) is decided per machine from a measurement, per stage:

  - CUDA: bfloat16 where the GPU supports it (sm80+), else float16, for every stage.
  - CPU: bfloat16 for matrix-matrix work (encoder, audio transformer, cross K/V, prefill) only
    where it measures at least as fast as float32 (native AVX512-BF16 or AMX; on AVX2-only CPUs
    it is emulated and several times slower). The decode step reads every weight once per
    token, so it is fastest in the narrowest dtype the matrix-vector product measures faster
    in. One model holds one copy of its weights, so the stages share a dtype unless the
    matrix-matrix stages would pay more than the decode step gains: then float32, and the log
    line points at `model.quantize: int8` (weight-only; the CPU kernel takes bf16 activations, so
    its speed there is unmeasured) for the decode step. Where the float32 encoder stays and
    PyTorch's dynamic int8 linears measure faster, it points at `model.encoder.quantize: int8`
    (an accuracy trade, so offered in the log, never chosen by `auto`).

The choice and the numbers behind it are logged once at load (logger `edge.model.precision`).
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field

import structlog
import torch

from .quant import calls_per_second

log = structlog.get_logger(__name__)


def fp32_on_cuda() -> None:
    """Float32 on CUDA is float32: no TF32 in matmuls or convolutions."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def cpu_flags() -> list[str]:
    """The CPU's SIMD/matrix feature flags that matter here (Linux /proc/cpuinfo)."""
    want = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in want if f in have]
    return []


@torch.inference_mode()
def measure_cpu(min_s: float = 0.05) -> dict[str, float]:
    """bfloat16 / float32 speed ratios of a matrix-matrix product (prefill/encoder-like) and a
    matrix-vector product (decode-step-like, larger than the caches). > 1: bf16 is faster."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 1024, generator=g)
    b = torch.randn(1024, 1024, generator=g)
    w = torch.randn(4096, 4096, generator=g)  # 64 MiB float32: read from memory, not cache
    x = torch.randn(1, 4096, generator=g)
    ab, bb, wb, xb = a.bfloat16(), b.bfloat16(), w.bfloat16(), x.bfloat16()
    mm32 = calls_per_second(lambda: a @ b, min_s)
    mm16 = calls_per_second(lambda: ab @ bb, min_s)
    mv32 = calls_per_second(lambda: torch.nn.functional.linear(x, w), min_s)
    mv16 = calls_per_second(lambda: torch.nn.functional.linear(xb, wb), min_s)
    out = {"bf16_matmul_speedup": mm16 / mm32, "bf16_matvec_speedup": mv16 / mv32}
    try:  # what model.encoder.quantize: int8 would buy over a float32 encoder (a hint only)
        from .quant import encoder_int8_speedup

        out["encoder_int8_speedup"] = encoder_int8_speedup(torch.float32, min_s)
    except Exception as e:  # noqa: BLE001 - no dynamic int8 engine in this torch build: no hint
        log.debug("encoder int8 not measurable", error=f"{type(e).__name__}: {e}")
    return out


@dataclass(frozen=True)
class Choice:
    dtype: str  # the model's dtype: audio transformer, cross K/V, prefill and decode step
    encoder: str  # the encoder backend's dtype (a converted copy when it differs)
    stages: dict[str, str] = field(default_factory=dict)  # stage -> dtype it measured best in
    reason: str = ""
    measured: dict[str, float] = field(default_factory=dict)


def decide_cpu(measured: dict[str, float]) -> Choice:
    """The CPU rule on measured bf16/float32 speed ratios (pure: unit-tested for both kinds of
    CPU). The decode step dominates a query (one step per token), so it decides the model's
    dtype among those its matrix-matrix stages can afford; the encoder decides on its own."""
    mm, mv = measured["bf16_matmul_speedup"], measured["bf16_matvec_speedup"]
    matmul = "bfloat16" if mm >= 1.0 else "float32"
    step = "bfloat16" if mv >= 1.0 else "float32"
    stages = {"encoder": matmul, "cross_kv_prefill": matmul, "decode_step": step}
    nums = f"bf16 vs float32: matrix-matrix {mm:.2f}x, matrix-vector {mv:.2f}x"
    if matmul == "bfloat16" and step == "bfloat16":
        return Choice("bfloat16", "bfloat16", stages, f"native bf16 ({nums})", measured)
    if matmul == "bfloat16":
        return Choice("float32", "bfloat16", stages,
                      f"bf16 matrix products are native but the decode step is not faster in "
                      f"bf16 ({nums}): decoder float32, encoder bfloat16", measured)
    why = f"bf16 matrix products are emulated here ({nums})"
    if step == "bfloat16":
        why += "; for narrow decode-step weights try model.quantize: int8 (measure it first)"
    from .quant import ENCODER_INT8_MIN_SPEEDUP

    q = measured.get("encoder_int8_speedup", 0.0)
    if q >= ENCODER_INT8_MIN_SPEEDUP:  # int8 changes the tokens (~4e-2): offered, not chosen
        why += (f"; a cheaper encoder: model.encoder.quantize: int8 (dynamic int8 linears "
                f"measure {q:.2f}x float32 here; token error ~4e-2)")
    return Choice("float32", "float32", stages, why, measured)


def choose(device: str | torch.device, measured: dict[str, float] | None = None) -> Choice:
    """Resolve `dtype: auto` for this machine (measures on CPUs unless `measured` is given)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        dt = "bfloat16" if bf16 else "float16"
        c = Choice(dt, dt, dict.fromkeys(("encoder", "cross_kv_prefill", "decode_step"), dt),
                   "CUDA: bf16 supported" if bf16 else "CUDA: no bf16 on this GPU")
    else:
        c = decide_cpu(measured if measured is not None else measure_cpu())
    log.info("model.dtype auto", dtype=c.dtype, encoder=c.encoder, reason=c.reason,
             cpu_flags=" ".join(cpu_flags()) if dev.type == "cpu" else "-")
    return c


def resolve(dtype: str, device: str | torch.device) -> Choice:
    """`model.dtype` as configured -> the concrete choice."""
    if dtype != "auto":
        if dtype == "float32" and torch.device(device).type == "cuda":
            fp32_on_cuda()
        return Choice(dtype, dtype, reason="configured")
    return choose(device)
