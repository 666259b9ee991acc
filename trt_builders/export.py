"""ONNX export of the AF-CLAP (HTS-AT) encoder: waveform clips -> 64 tokens per clip.

The graph holds the whole encoder, mel front end included, with a dynamic batch axis::

    clips  float32 (batch, 160000)   -> tokens float32 (batch, 64, num_features)

The int16 round trip of the official pipeline is *not* in the graph (TensorRT has no int16);
every backend applies it on the host side before running the graph (edge/encoder_backends.py).

`ExportEncoder` traces the model's own `HTSAT` (edge/model/htsat.py, edge/model/mel.py): one
implementation, whose graph-friendly spelling is the model's too, so the graph matches `HTSAT` to
float rounding (tests/trt_builders/test_export.py checks it):

* STFT: a strided Conv with the windowed DFT basis; the reflect padding is two constant-index
  Gathers + Concat (no Pad op, whose reflect mode differs across TensorRT versions);
* bicubic time resize 1001 -> 1024: a MatMul with a constant (1001, 1024) matrix;
* Swin window shift / partition / reverse: Slice+Concat (roll) and Reshape/Transpose with static
  spatial sizes and -1 only on the batch axis, so the batch stays dynamic and no Shape ops remain;
* attention: traced with `Numerics(explicit_attention=True)`, softmax(q k^T + bias) v spelled out
  instead of the fused kernel; the relative position bias and the shifted-window masks fold into
  constants.

`precision="fp16-mixed"` exports a graph whose matmuls/convolutions run in float16 while the mel
front end, every LayerNorm, every softmax (and its bias/mask add) and the output stay float32,
with explicit Casts. That is what a TensorRT *strongly typed* network needs (TensorRT >= 11 drops
the weak-typing FP16 flag); for TensorRT 10 the float32 graph plus per-layer precision is used.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import structlog
import torch
from torch import nn

from edge.files import sha256_file
from edge.model.config import CLIP_SAMPLES, TOKENS_PER_CLIP
from edge.model.htsat import HTSAT, Numerics, converted_copy

from .metadata import cache_dir_or_default

log = structlog.get_logger(__name__)

INPUT_NAME = "clips"
OUTPUT_NAME = "tokens"
BATCH_DIM = "batch"
DEFAULT_OPSET = 17
PRECISIONS = ("fp32", "fp16-mixed")
SIDECAR_FORMAT = "flamingo-edge-onnx/1"
# Node-name scope of the mel front end: kept float32 by every TensorRT build (the power spectrum
# of a full-scale clip reaches ~2.6e5, beyond float16's 65504).
FRONT_SCOPE = "/front/"

# Every ONNX op the exported encoder may contain. All are supported by the TensorRT 10.3 ONNX
# parser (JetPack 6) and by ONNX Runtime's CPU provider. `check_onnx` refuses anything else, so a
# change in the model or in torch's exporter that introduces e.g. STFT/DFT, Pad(reflect), Resize,
# ScatterND, a Loop or an int16 Cast is caught on the CPU, long before a Jetson sees it.
ALLOWED_OPS = frozenset({
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Erf", "Gather", "Identity",
    "LayerNormalization", "Log", "MatMul", "Max", "Mul", "Reshape", "Slice", "Softmax",
    "Sqrt", "Sub", "Transpose", "Unsqueeze", "Squeeze", "Flatten",
})
# Element types TensorRT 10 has (no int16, no float64, no strings).
ALLOWED_ELEM_TYPES = frozenset({1, 6, 7, 9, 10, 16})  # float, int32, int64, bool, float16, bfloat16


class ExportError(RuntimeError):
    """Export or verification failed; the message says what and where."""


# ------------------------------------------------------------------------------------------
# export wrapper
# ------------------------------------------------------------------------------------------
class _Front(nn.Module):
    """The model's mel front end and Swin image step (LogMel, bn0, resize, fold) in float32, traced
    under the ONNX scope /front/ (FRONT_SCOPE), which every TensorRT build keeps in float32."""

    def __init__(self, enc: HTSAT) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.enc.image(self.enc.mel(clips))


class ExportEncoder(nn.Module):
    """The model's own `HTSAT`, traced with graph numerics (`edge.model.htsat.Numerics`).

    With precision="fp32" the parameters are shared with `enc` when it is float32 (a float32 copy
    otherwise); "fp16-mixed" works on a float16 copy whose LayerNorm and BatchNorm parameters
    stay float32 (the mel front end and the norms run in float32, the output is float32).
    """

    def __init__(self, enc: HTSAT, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.mixed = precision == "fp16-mixed"
        if self.mixed:
            front = converted_copy(enc, torch.float32)  # the front end's constants, unrounded
            enc = converted_copy(enc, torch.float16)
            for m in enc.modules():
                if isinstance(m, nn.LayerNorm):
                    m.float()
            enc.bn0 = front.bn0
        elif enc.patch_embed.proj.weight.dtype != torch.float32:
            enc = converted_copy(enc, torch.float32)
        self.encoder = enc
        self.front = _Front(enc)
        self.numerics = Numerics(explicit_attention=True, fp32_islands=self.mixed)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.encoder.forward_image(self.front(clips), self.numerics)
        return x.float() if self.mixed else x


# ------------------------------------------------------------------------------------------
# hashing / fingerprints
# ------------------------------------------------------------------------------------------
def onnx_sha256(path: str | Path) -> str:
    """Hash of an exported model: the .onnx file plus its external-data file, if any."""
    path = Path(path)
    parts = [sha256_file(path)]
    data = path.with_name(path.name + ".data")
    if data.exists():
        parts.append(sha256_file(data))
    return parts[0] if len(parts) == 1 else hashlib.sha256("".join(parts).encode()).hexdigest()


def weights_fingerprint(enc: nn.Module) -> str:
    """sha256 over every parameter/buffer of the encoder (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(enc.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------
# export + verification
# ------------------------------------------------------------------------------------------
@dataclass
class OnnxInfo:
    """The sidecar written next to an exported model (`<name>.onnx.json`)."""

    format: str
    path: str
    precision: str
    opset: int
    input_name: str
    output_name: str
    num_features: int
    tokens_per_clip: int
    clip_samples: int
    htsat: dict[str, Any]
    weights_fingerprint: str
    onnx_sha256: str
    torch_version: str
    export_seconds: float
    ops: dict[str, int]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> OnnxInfo:
        d = json.loads(text)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def sidecar_path(onnx_path: str | Path) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def read_sidecar(onnx_path: str | Path) -> OnnxInfo | None:
    try:
        return OnnxInfo.from_json(sidecar_path(onnx_path).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _htsat_of(model_or_encoder) -> HTSAT:
    if isinstance(model_or_encoder, HTSAT):
        return model_or_encoder
    enc = getattr(getattr(model_or_encoder, "modules", None), "encoder", None)
    if isinstance(enc, HTSAT):
        return enc
    raise TypeError(f"expected an AF2 model or an HTSAT encoder, got {type(model_or_encoder).__name__}")


def export_onnx(model_or_encoder, path: str | Path, *, precision: str = "fp32",
                opset: int = DEFAULT_OPSET, check: bool = True) -> OnnxInfo:
    """Export the encoder of an `AF2` (or a bare `HTSAT`) to `path`; write the sidecar JSON.

    The trace runs on the CPU in float32 (or float16 for "fp16-mixed") with a batch of 2, and the
    batch axis is declared dynamic. With `check`, `check_onnx` runs on the result.
    """
    if opset < 17:
        raise ValueError("opset must be >= 17 (LayerNormalization)")
    enc = _htsat_of(model_or_encoder)
    if enc.patch_embed.proj.weight.device.type != "cpu":
        enc = converted_copy(enc, torch.float32, "cpu")  # trace on the CPU, in float32
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fingerprint = weights_fingerprint(enc)
    wrapper = ExportEncoder(enc, precision).eval()
    dummy = torch.rand(2, CLIP_SAMPLES) * 1.8 - 0.9
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (dummy,), str(tmp), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True, export_params=True,
        )
    _set_output_shape(tmp, enc.d.num_features)
    tmp.replace(path)
    ops = check_onnx(path, num_features=enc.d.num_features) if check else {}
    info = OnnxInfo(
        format=SIDECAR_FORMAT, path=path.name, precision=precision, opset=opset,
        input_name=INPUT_NAME, output_name=OUTPUT_NAME, num_features=enc.d.num_features,
        tokens_per_clip=TOKENS_PER_CLIP, clip_samples=CLIP_SAMPLES,
        htsat={**asdict(enc.d), "depths": list(enc.d.depths), "num_heads": list(enc.d.num_heads)},
        weights_fingerprint=fingerprint, onnx_sha256=onnx_sha256(path),
        torch_version=torch.__version__, export_seconds=round(time.perf_counter() - t0, 2),
        ops=ops,
    )
    sidecar_path(path).write_text(info.to_json())
    return info


def _set_output_shape(path: Path, num_features: int) -> None:
    """The tracer leaves the token dims symbolic after the final Reshape/Transpose; state them
    (batch, 64, D) so consumers (TensorRT, ORT, our checks) see the static part of the shape."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (BATCH_DIM, TOKENS_PER_CLIP, num_features)):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    onnx.save(model, str(path))


def ensure_onnx(model, cache_dir: str | Path | None = None, precision: str = "fp32",
                onnx_path: str | Path | None = None,
                log_fn: Callable[[str], None] | None = None) -> Path:
    """The ONNX for `model`'s encoder: `onnx_path` if given, else a cached export whose sidecar
    fingerprint matches the weights (re-exported when the weights changed)."""
    if onnx_path is not None:
        p = Path(onnx_path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such ONNX file")
        return p
    enc = model.modules.encoder
    fp = weights_fingerprint(enc)
    suffix = "" if precision == "fp32" else f"-{precision}"
    path = cache_dir_or_default(cache_dir) / f"encoder-{fp[:16]}{suffix}.onnx"
    info = read_sidecar(path)
    if path.is_file() and info is not None and info.weights_fingerprint == fp \
            and info.precision == precision:
        return path
    (log_fn or log.info)(f"exporting the encoder to {path} ({precision})")
    export_onnx(model, path, precision=precision)
    return path


def check_onnx(path: str | Path, num_features: int | None = None) -> dict[str, int]:
    """onnx.checker + our own TensorRT-readiness rules. Returns the op histogram.

    Raises `ExportError` naming the first problem: an op outside `ALLOWED_OPS`, an element type
    TensorRT lacks, a non-dynamic batch axis, or a wrong input/output signature.
    """
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: onnx.checker failed: {str(e).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx", 0)) < 17:
        raise ExportError(f"{path}: opset {opsets} < 17")
    hist = _check_nodes(path, model.graph)
    _check_signature(path, model.graph, num_features)
    return dict(sorted(hist.items()))


def _check_nodes(path: Path, g) -> dict[str, int]:
    """Every op on the allow-list, every Cast and initializer of a type TensorRT has."""
    hist: dict[str, int] = {}
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            raise ExportError(f"{path}: custom-domain op {node.domain}::{node.op_type} ({node.name})")
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
        if node.op_type not in ALLOWED_OPS:
            raise ExportError(f"{path}: op {node.op_type} ({node.name}) is not on the TensorRT 10.3 "
                              "allow-list of this exporter")
        to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if to is not None and to not in ALLOWED_ELEM_TYPES:
            raise ExportError(f"{path}: Cast to element type {to} ({node.name}) that TensorRT lacks")
    bad = next((i for i in g.initializer if i.data_type not in ALLOWED_ELEM_TYPES), None)
    if bad is not None:
        raise ExportError(f"{path}: initializer {bad.name} has element type {bad.data_type}")
    return hist


def _check_signature(path: Path, g, num_features: int | None) -> None:
    """One float32 input (batch, 160000) and one float32 output (batch, 64, D)."""
    if [i.name for i in g.input] != [INPUT_NAME] or [o.name for o in g.output] != [OUTPUT_NAME]:
        raise ExportError(f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got "
                          f"{[i.name for i in g.input]} -> {[o.name for o in g.output]}")
    ish = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    osh = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    if ish != [BATCH_DIM, CLIP_SAMPLES]:
        raise ExportError(f"{path}: input shape {ish}, expected [{BATCH_DIM!r}, {CLIP_SAMPLES}]")
    want = [BATCH_DIM, TOKENS_PER_CLIP, num_features] if num_features else None
    if osh[0] != BATCH_DIM or (want and osh != want):
        raise ExportError(f"{path}: output shape {osh}, expected {want or [BATCH_DIM, '...']}")
    if g.input[0].type.tensor_type.elem_type != 1 or g.output[0].type.tensor_type.elem_type != 1:
        raise ExportError(f"{path}: input and output must be float32")
