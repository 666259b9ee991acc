"""Weight-only quantization of the decoder (`model.quantize: none | int8 | int4`).

Decoding one token reads every decoder weight once; on CPUs (and on the Orin) that read is the
whole cost, so fewer bytes per weight is the only speed-up left. Activations stay in the model
dtype; only the stored weights are narrow:

* int8: one scale per output channel, ``w ~= q * s`` (q in [-127, 127]).
* int4: asymmetric groups of `group` inputs, ``w ~= (q - 8) * scale + zero`` (q in [0, 15]),
  the convention of PyTorch's int4 weight-pack kernels.
* the token embedding (also the tied output projection) is int8 per row in both modes: a
  lookup dequantizes one row, the output projection uses the int8 kernel.

Kernels: on the CPU PyTorch's own weight-pack matmuls (`aten._weight_int8pack_mm`,
`aten._weight_int4pack_mm_for_cpu` on `_convert_weight_to_int4pack_for_cpu`'s layout). On other
devices our own reference code dequantizes the weight per call (correct, not yet fast: torchao /
the CUDA int4 kernel are not wired in; see docs/PERFORMANCE.md). Quantization is applied while
the loader streams tensors (`quantize_from` reads a float tensor in row blocks), so peak memory
stays near the quantized model plus one block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .decoder import Decoder

log = structlog.get_logger(__name__)


def calls_per_second(fn: Callable[[], object], min_s: float) -> float:
    """How often ``fn`` runs per second, after one warm-up call (allocations, kernel
    choice), timed for at least ``min_s``: the start-up measurements' one timer."""
    import time

    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return n / dt


MODES = ("none", "int8", "int4")
ROW_BLOCK_BYTES = 64 << 20  # float32 rows read at a time while quantizing

ReadRows = Callable[[int, int], torch.Tensor]  # (start, stop) -> float rows [start, stop)

# PyTorch's CPU weight-pack kernels are fast with bfloat16 activations only (measured on this
# CPU, one thread, 1x2048 @ 2048x1024: int8 1.3 ms / int4 0.12 ms in bf16 but 12 / 23 ms in
# float32; at 64 rows of 896 -> 4864 both beat the float32 GEMM, at 256 rows of float32 they
# are ~40x slower than it). So the kernels always get bf16 activations (the result is cast back
# to the model dtype), and int8 beyond KERNEL_MAX_ROWS rows dequantizes and uses the float GEMM.
# The cross-attention `to_kv` (read once per query, never by a decode step) is not quantized.
KERNEL_MAX_ROWS = 64
KERNEL_DTYPE = torch.bfloat16
SKIP = ("to_kv",)


def _row_block(in_features: int, multiple: int = 64) -> int:
    rows = max(1, ROW_BLOCK_BYTES // (4 * in_features))
    return max(multiple, rows // multiple * multiple)


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K), float32 scales (N,): symmetric per output row."""
    w = w.float()
    s = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q, s


def quantize_int4_groups(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> q int32 (N, K) in [0, 15], scales_and_zeros float32 (K/group, N, 2)."""
    w = w.float()
    N, K = w.shape
    g = w.reshape(N, K // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    zero = lo + 8.0 * scale  # w = (q - 8) * scale + zero
    sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return q.reshape(N, K), sz


def int4_group_for(k: int) -> int | None:
    for g in (64, 32):  # 64: scale+zero add 1/8 (float32) or 1/16 (bf16) to 4-bit weights
        if k % g == 0:
            return g
    return None


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored int8, one scale per output channel."""

    DERIVED = ("scales",)
    weight: torch.Tensor  # buffers (registered in __init__)
    scales: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 reference: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.logical_shape = (out_features, in_features)
        self.reference = reference  # dequantize per call instead of the packed kernel
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None

    @torch.no_grad()
    def quantize_from(self, read_rows: ReadRows) -> None:
        n = _row_block(self.in_features)
        for i in range(0, self.out_features, n):
            q, s = quantize_int8_rows(read_rows(i, min(i + n, self.out_features)))
            self.weight[i : i + q.shape[0]] = q.to(self.weight.device)
            self.scales[i : i + q.shape[0]] = s.to(self.scales.device, self.scales.dtype)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x.device.type == "cpu" and not self.reference and x2.shape[0] <= KERNEL_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(KERNEL_DTYPE).contiguous(), self.weight,
                                                   self.scales.to(KERNEL_DTYPE)).to(x.dtype)
        else:
            y = F.linear(x2, self.dequantized(x.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W stored as 4-bit groups of `group` inputs (asymmetric)."""

    DERIVED = ("scales_and_zeros",)
    weight: torch.Tensor  # buffers (registered in __init__)
    scales_and_zeros: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 group: int, packed_cpu: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.logical_shape = (out_features, in_features)
        # packed_cpu: the layout of aten._convert_weight_to_int4pack_for_cpu (N, K/2) uint8;
        # else two values per byte, low nibble first (our reference layout), also (N, K/2)
        self.packed_cpu = packed_cpu
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros",
                             torch.empty(in_features // group, out_features, 2, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None

    @torch.no_grad()
    def quantize_from(self, read_rows: ReadRows) -> None:
        n = _row_block(self.in_features)
        for i in range(0, self.out_features, n):
            q, sz = quantize_int4_groups(read_rows(i, min(i + n, self.out_features)), self.group)
            if self.packed_cpu:
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            else:
                u = q.to(torch.uint8)
                packed = u[:, 0::2] | (u[:, 1::2] << 4)
            self.weight[i : i + q.shape[0]] = packed.to(self.weight.device)
            self.scales_and_zeros[:, i : i + q.shape[0]] = sz.to(self.scales_and_zeros.device,
                                                                self.scales_and_zeros.dtype)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        if self.packed_cpu:  # the identity through the kernel in float32: exact dequantization
            eye = torch.eye(self.in_features, dtype=torch.float32, device=self.weight.device)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                eye, self.weight, self.group, self.scales_and_zeros.float()).T.to(dtype).contiguous()
        lo = (self.weight & 0xF).to(dtype)
        hi = (self.weight >> 4).to(dtype)
        q = torch.stack([lo, hi], dim=-1).reshape(self.out_features, self.in_features)
        sz = self.scales_and_zeros.to(dtype)  # (K/g, N, 2)
        scale = sz[..., 0].T.repeat_interleave(self.group, dim=1)  # (N, K)
        zero = sz[..., 1].T.repeat_interleave(self.group, dim=1)
        return (q - 8) * scale + zero

    def _packed_mm(self, x2: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2.to(KERNEL_DTYPE).contiguous(), self.weight, self.group,
            self.scales_and_zeros.to(KERNEL_DTYPE)).to(x2.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.packed_cpu and x.device.type == "cpu":
            y = self._packed_mm(x2)
        else:
            y = F.linear(x2, self.dequantized(x.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Int8Embedding(Int8Linear):
    """The token embedding, also the tied output projection: int8 rows, one scale each.
    State names stay `embed_tokens.weight` (+ `embed_tokens.scales`)."""

    def __init__(self, vocab: int, dim: int, dtype: torch.dtype, reference: bool = False) -> None:
        super().__init__(dim, vocab, False, dtype, reference)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).to(self.scales.dtype) * self.scales[ids].unsqueeze(-1)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(h)


QUANTIZED = (Int8Linear, Int4Linear)


def quantized_modules(root: nn.Module) -> dict[str, Int8Linear | Int4Linear]:
    """name of the weight in `root.state_dict()` -> the quantized module that owns it."""
    return {f"{n}.weight": m for n, m in root.named_modules() if isinstance(m, QUANTIZED)}


def derived_names(root: nn.Module) -> set[str]:
    """State names the quantizer computes (scales ...): not read from a checkpoint."""
    return {f"{n}.{d}" for n, m in root.named_modules() if isinstance(m, QUANTIZED)
            for d in m.DERIVED}


def swap_linears(decoder: Decoder, mode: str, dtype: torch.dtype, device: torch.device | str,
                 reference: bool = False) -> int:
    """Replace the decoder's nn.Linear layers (and the tied embedding) by quantized modules with
    empty storage (on the meta device while loading). -> number of modules replaced."""
    if mode not in MODES:
        raise ValueError(f"unknown quantize mode {mode!r}; use none, int8 or int4")
    if mode == "none":
        return 0
    dev = torch.device(device)
    packed_cpu = dev.type in ("cpu", "meta") and not reference
    count = 0
    targets = [(n, m) for n, m in decoder.named_modules()
               if isinstance(m, nn.Linear) and n.rpartition(".")[2] not in SKIP]
    for name, lin in targets:
        parent = decoder.get_submodule(name.rpartition(".")[0]) if "." in name else decoder
        attr = name.rpartition(".")[2]
        bias = lin.bias is not None
        with torch.device(lin.weight.device):
            group = int4_group_for(lin.in_features) if mode == "int4" else None
            if packed_cpu and lin.out_features % 16:  # the CPU pack kernel's row tiling
                group = None
            if mode == "int4" and group is not None:
                new: nn.Module = Int4Linear(lin.in_features, lin.out_features, bias, dtype, group,
                                            packed_cpu)
            else:
                if mode == "int4":
                    log.info("fits no int4 layout; int8 instead", layer=name,
                             shape=f"{lin.out_features}x{lin.in_features}")
                new = Int8Linear(lin.in_features, lin.out_features, bias, dtype, reference)
        setattr(parent, attr, new)
        count += 1
    emb = decoder.embed_tokens
    with torch.device(emb.weight.device):
        # the same interface as TokenEmbedding (forward, project), int8 rows
        decoder.register_module("embed_tokens", Int8Embedding(emb.weight.shape[0], emb.weight.shape[1],
                                                              dtype, reference))
    return count + 1


@torch.no_grad()
def quantize_model(decoder: Decoder, mode: str, reference: bool = False) -> int:
    """Quantize an already built float decoder in place (random-weight benchmarks, tests),
    one module at a time so at most one float weight is held twice."""
    if mode == "none":
        return 0
    p = decoder.norm.weight
    old: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {
        n: (m.weight, m.bias) for n, m in decoder.named_modules()
        if isinstance(m, nn.Linear) and n.rpartition(".")[2] not in SKIP}
    old["embed_tokens"] = (decoder.embed_tokens.weight, None)
    n = swap_linears_like(decoder, mode, p.dtype, p.device, reference)
    for name, mod in quantized_modules(decoder).items():
        w, b = old.pop(name[: -len(".weight")])
        mod.quantize_from(_rows_of(w))
        if mod.bias is not None and b is not None:
            mod.bias.copy_(b)
        del w, b
    return n


def _rows_of(w: torch.Tensor) -> ReadRows:
    return lambda i, j: w[i:j]


def swap_linears_like(decoder: Decoder, mode: str, dtype: torch.dtype, device: torch.device,
                      reference: bool) -> int:
    """`swap_linears` allocating real (uninitialised) storage on `device`."""
    with torch.device(device):
        return swap_linears(decoder, mode, dtype, device, reference)


def weight_bytes(decoder: nn.Module) -> int:
    """Bytes of decoder weights a one-token step reads (parameters and quantized buffers; not
    the cross-attention `to_kv`, which only computes the cross K/V once per query)."""
    seen, total = set(), 0
    skip = {t.data_ptr() for n, m in decoder.named_modules() if n.rpartition(".")[2] in SKIP
            for t in list(m.parameters()) + list(m.buffers())}
    for t in list(decoder.parameters()) + list(decoder.buffers()):
        if t.data_ptr() in seen or t.data_ptr() in skip:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


# ---- the encoder: dynamic int8 on CPUs (model.encoder.quantize: int8) -----------------------
# Encoding is matrix-matrix work (4096 tokens x 256 wide in stage 0, 256 x 1024 in stage 2), so
# unlike the decode step its cost is arithmetic, not bytes: int8 helps only where the CPU's int8
# GEMM is faster than its float GEMM. PyTorch's dynamic quantized Linear (fbgemm / oneDNN on
# x86) does exactly that: int8 weights per output channel, activations quantized per call (one
# scale per tensor), int32 accumulation, float32 out. Everything else (mel front end, patch
# convolution, LayerNorms, the windowed attention products) stays float32. Measured on the
# released dims (docs/PERFORMANCE.md "Encoder int8"): ~1.9x faster on an AVX2-only EPYC, token
# error ~4e-2 vs float32 (bfloat16: ~1e-2).
ENCODER_INT8_MIN_SPEEDUP = 1.2  # below this the measured gain does not pay for the error


def encoder_int8(enc: nn.Module) -> nn.Module:
    """A float32 copy of `enc` whose nn.Linear layers run PyTorch's dynamic int8 kernels (CPU)."""
    import copy
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # copy everything but the float weights of the linear layers (only read while quantizing)
    keep = {id(m.weight): m.weight for m in enc.modules()
            if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32}
    q = copy.deepcopy(enc, memo=keep).float().cpu()
    with warnings.catch_warnings():  # torch.ao's deprecation notices (kept in torch 2.13)
        warnings.simplefilter("ignore")
        return quantize_dynamic(q, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                inplace=True)


@torch.inference_mode()
def encoder_int8_speedup(dtype: torch.dtype = torch.float32, min_s: float = 0.05) -> float:
    """How much faster a dynamic int8 Linear is than one in `dtype` on this CPU, measured on an
    encoder-like shape (256 tokens x 512 -> 2048, both ways warmed up). > 1: int8 is faster."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(512, 2048)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02, generator=g)
    x = torch.randn(256, 512, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig},
                             dtype=torch.qint8)[0]
    ref = nn.Linear(512, 2048).to(dtype).requires_grad_(False)
    xr = x.to(dtype)

    # interleaved, best of 3: another process taking the CPU slows one side less often
    q_rate = f_rate = 0.0
    for _ in range(3):
        q_rate = max(q_rate, calls_per_second(lambda: q(x), min_s))
        f_rate = max(f_rate, calls_per_second(lambda: ref(xr), min_s))
    return q_rate / f_rate
