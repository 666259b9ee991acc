"""Encoder backends: the AF-CLAP encoder behind one interface, chosen per deployment.

    backend = make_backend("tensorrt", model, max_batch=8, cache_dir=settings.engine_cache_dir())
    tokens = backend.encode(clips)        # (B, 160000) float -> (B, 64, D) float32

Kinds (see docs/ENGINES.md):

* ``torch``        the PyTorch encoder of `model`, on cpu or cuda, float32 / bfloat16 / float16;
* ``onnxruntime``  the exported ONNX graph on ONNX Runtime: CPU provider, or CUDA / TensorRT
                   providers when the installed onnxruntime has them (device="cuda");
* ``tensorrt``     our own TensorRT engine, built from the ONNX and cached with its metadata.

Contract of `EncoderBackend.encode(clips)`:
* `clips` is a (B, 160000) float tensor of *raw* samples (any device, any float dtype). Every
  backend applies the official int16 round trip itself, exactly like `AF2.encode`, so callers
  never do it (doing it twice is harmless: the round trip is idempotent);
* it returns a (B, 64, D) **float32** tensor on `backend.output_device` (cpu for onnxruntime,
  the model's device for torch, cuda for tensorrt); `AF2.memory` moves tokens where it needs them;
* `B` may exceed `max_batch`: the work is split into chunks of at most `max_batch` clips.

`make_backend` never raises because an accelerator is missing: it walks a fallback chain
(`fallback_chain`) and returns the first backend that starts, with `backend.fallback_reason` set
to one line that says what was skipped and why (also logged as a warning).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import structlog
import torch

from edge.dtypes import DTYPES, dtype_name
from edge.model.audio import int16_roundtrip_torch
from edge.model.config import CLIP_SAMPLES, TOKENS_PER_CLIP
from edge.model.htsat import converted_copy
from trt_builders.metadata import cache_dir_or_default

log = structlog.get_logger(__name__)

KINDS = ("torch", "onnxruntime", "tensorrt")
ENCODER_QUANTIZE = ("none", "int8")  # model.encoder.quantize (torch backend on CPUs)


# ------------------------------------------------------------------------------------------
# the interface
# ------------------------------------------------------------------------------------------
class EncoderBackend(ABC):
    kind: str = ""

    def __init__(self, max_batch: int, num_features: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.num_features = num_features
        self.fallback_reason: str | None = None

    @property
    @abstractmethod
    def output_device(self) -> torch.device: ...

    @abstractmethod
    def describe(self) -> str:
        """e.g. 'torch cuda float16', 'onnxruntime CPUExecutionProvider'."""

    @abstractmethod
    def _run(self, clips: torch.Tensor) -> torch.Tensor:
        """(b <= max_batch, 160000) float32, already int16-round-tripped -> (b, 64, D)."""

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 2 or clips.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"encode expects clips of shape (B, {CLIP_SAMPLES}), got {tuple(clips.shape)}")
        if clips.shape[0] == 0:
            return torch.empty(0, TOKENS_PER_CLIP, self.num_features, device=self.output_device)
        x = int16_roundtrip_torch(clips.float())
        outs = [self._run(x[i:i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
        return torch.cat(outs).to(self.output_device, torch.float32)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} max_batch={self.max_batch}>"


class TorchBackend(EncoderBackend):
    """The PyTorch encoder. With `batch_invariant` (default) each clip runs alone, so a clip's
    tokens are bit-identical whatever else is in the batch (as `AF2.encode` guarantees).

    `quantize="int8"` (CPU only): the encoder's linear layers run PyTorch's dynamic int8 kernels
    (`edge.model.quant.encoder_int8`; activations quantized per clip, so batch invariance holds),
    but only where a measurement at start shows them faster than the float dtype they replace;
    otherwise, and on CUDA, the float encoder runs and `quantize_reason` says why (logged)."""

    kind = "torch"

    def __init__(self, model, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, max_batch: int = 8,
                 batch_invariant: bool = True, quantize: str = "none") -> None:
        enc = model.modules.encoder
        cur_dev, cur_dt = enc.patch_embed.proj.weight.device, enc.patch_embed.proj.weight.dtype
        dev = torch.device(device) if device is not None else cur_dev
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        dt = DTYPES[dtype_name(dtype, "encoder dtype")] if dtype is not None else cur_dt
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        if (dev, dt) != (cur_dev, cur_dt):
            enc = converted_copy(enc, dt, dev).eval().requires_grad_(False)
        super().__init__(max_batch, enc.d.num_features)
        self.encoder, self.device, self.dtype = enc, dev, dt
        self.batch_invariant = batch_invariant
        self.quantize = "none"
        self.quantize_reason: str | None = None  # why int8 is (not) used, when it was asked for
        if quantize not in ENCODER_QUANTIZE:
            raise ValueError(f"unknown encoder quantize mode {quantize!r}; use none or int8")
        if quantize == "int8":
            self._try_int8(model.modules.encoder)

    def _try_int8(self, source) -> None:
        """Swap in the dynamic-int8 encoder where it measures faster (see the class doc)."""
        from edge.model.quant import ENCODER_INT8_MIN_SPEEDUP, encoder_int8, encoder_int8_speedup

        if self.device.type != "cpu":
            why = (f"model.encoder.quantize int8 is for CPUs; the {self.device.type} encoder "
                   f"keeps {dtype_name(self.dtype)}")
        else:
            try:
                x = encoder_int8_speedup(self.dtype)
            except Exception as e:  # noqa: BLE001 - no int8 engine in this torch build
                x, why = 0.0, f"dynamic int8 is not available here ({type(e).__name__}: {e})"
            else:
                why = (f"encoder int8 measured {x:.2f}x {dtype_name(self.dtype)} on this CPU "
                       f"(needs >= {ENCODER_INT8_MIN_SPEEDUP}x)")
            if x >= ENCODER_INT8_MIN_SPEEDUP:
                # quantized from the model's own weights (not from a bf16/fp16 copy of them)
                self.encoder = encoder_int8(source).eval().requires_grad_(False)
                self.dtype, self.quantize = torch.float32, "int8"
                self.quantize_reason = why + ": using it"
                log.info("encoder int8", used=True, reason=self.quantize_reason)
                return
            why += f": keeping {dtype_name(self.dtype)}"
        self.quantize_reason = why
        log.warning("encoder int8", used=False, reason=why)

    @property
    def output_device(self) -> torch.device:
        return self.device

    def describe(self) -> str:
        if self.quantize == "int8":
            return f"torch {self.device.type} int8 (dynamic, float32 elsewhere)"
        return f"torch {self.device.type} {dtype_name(self.dtype)}"

    @torch.inference_mode()
    def _run(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.to(self.device)
        if self.batch_invariant:
            return torch.cat([self.encoder(x[i:i + 1]) for i in range(x.shape[0])])
        return self.encoder(x)


ORT_CPU = "CPUExecutionProvider"
ORT_CUDA = "CUDAExecutionProvider"
ORT_TRT = "TensorrtExecutionProvider"


def ort_providers_for(device: str, available: list[str] | tuple[str, ...],
                      use_trt_provider: bool = False) -> list[str]:
    """The provider list for a session: GPU providers first when asked for and installed."""
    if device == "cpu":
        return [ORT_CPU]
    chosen = [p for p in ((ORT_TRT,) if use_trt_provider else ()) + (ORT_CUDA,) if p in available]
    if not chosen:
        raise RuntimeError(f"onnxruntime has no {ORT_CUDA} (install onnxruntime-gpu)")
    return chosen + [ORT_CPU]


def ort_trt_options(max_batch: int, cache_dir: str | Path | None = None) -> dict[str, object]:
    """TensorrtExecutionProvider options (onnxruntime.ai, TensorRT EP "Configurations").

    * float32 only: `trt_fp16_enable` is left off. It lets TensorRT pick FP16 for *any* layer, with
      no per-layer constraint; the mel front end's power spectrum reaches ~2.6e5 > 65504 (float16
      max), which is why our own engines pin it to float32 (metadata.keep_fp32). Use the
      `tensorrt` backend for FP16.
    * one explicit profile over the batch axis (`trt_profile_{min,opt,max}_shapes`,
      "name:d0xd1"), so a new batch size within 1..max_batch does not rebuild the engine;
    * the engine cache under `<cache_dir>/ort-trt` (created here) when a cache directory is given.
    """
    from trt_builders.export import INPUT_NAME

    shape = lambda b: f"{INPUT_NAME}:{b}x{CLIP_SAMPLES}"  # noqa: E731
    opts: dict[str, object] = {
        "trt_fp16_enable": False,
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(max_batch),
        "trt_profile_max_shapes": shape(max_batch),
    }
    if cache_dir is not None:
        path = Path(cache_dir) / "ort-trt"
        path.mkdir(parents=True, exist_ok=True)
        opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(path)})
    return opts


class OnnxRuntimeBackend(EncoderBackend):
    kind = "onnxruntime"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", max_batch: int = 8,
                 threads: int | None = None, use_trt_provider: bool = False,
                 cache_dir: str | Path | None = None) -> None:
        import onnxruntime as ort

        from trt_builders.export import read_sidecar

        info = read_sidecar(onnx_path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        providers = ort_providers_for(device, ort.get_available_providers(), use_trt_provider)
        if ORT_TRT in providers:
            providers = [(ORT_TRT, ort_trt_options(max_batch, cache_dir)) if p == ORT_TRT else p  # type: ignore[misc]
                         for p in providers]  # onnxruntime takes names or (name, options) pairs
        self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        self.providers = self.session.get_providers()
        if device != "cpu" and self.providers[0] == ORT_CPU:
            raise RuntimeError("onnxruntime fell back to the CPU provider (CUDA provider failed to start)")
        out = self.session.get_outputs()[0]
        d = out.shape[-1] if isinstance(out.shape[-1], int) else (info.num_features if info else 0)
        super().__init__(max_batch, int(d))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = out.name
        self.onnx_path = Path(onnx_path)

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")

    def describe(self) -> str:
        return f"onnxruntime {self.providers[0]}"

    def _run(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.detach().to("cpu", torch.float32).contiguous().numpy()
        y = self.session.run([self.output_name], {self.input_name: x})[0]
        return torch.from_numpy(y)


class TensorRTBackend(EncoderBackend):
    kind = "tensorrt"

    def __init__(self, engine_path: str | Path, max_batch: int, num_features: int,
                 device: int = 0) -> None:
        from trt_builders.tensorrt_engine import TRTEncoder

        self.runner = TRTEncoder(engine_path, device)
        super().__init__(min(max_batch, self.runner.max_batch), num_features)
        self.engine_path = Path(engine_path)

    @property
    def output_device(self) -> torch.device:
        return self.runner.device

    def describe(self) -> str:
        return f"tensorrt {self.engine_path.name}"

    def _run(self, clips: torch.Tensor) -> torch.Tensor:
        return self.runner(clips)


# ------------------------------------------------------------------------------------------
# selection with fallback
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Environment:
    """What this machine offers; `probe()` fills it, tests build it by hand."""

    cuda: bool
    tensorrt: str | None  # None = usable, else the one-line reason it is not
    onnxruntime: bool
    onnx: bool
    ort_providers: tuple[str, ...] = ()

    @classmethod
    def probe(cls) -> Environment:
        from trt_builders.tensorrt_engine import trt_status

        ort_ok = importlib.util.find_spec("onnxruntime") is not None
        providers: tuple[str, ...] = ()
        if ort_ok:
            try:
                import onnxruntime

                providers = tuple(onnxruntime.get_available_providers())
            except Exception:  # noqa: BLE001 - a broken install counts as absent
                ort_ok = False
        return cls(cuda=torch.cuda.is_available(), tensorrt=trt_status(), onnxruntime=ort_ok,
                   onnx=importlib.util.find_spec("onnx") is not None, ort_providers=providers)


@dataclass(frozen=True)
class Candidate:
    kind: str
    device: str  # "cpu" | "cuda"
    dtype: str  # for torch; "float32" otherwise (tensorrt: its engine precision)

    def __str__(self) -> str:
        if self.kind == "torch":
            return f"torch {self.device} {self.dtype}"
        if self.kind == "onnxruntime":
            return f"onnxruntime {'CPU' if self.device == 'cpu' else 'CUDA'}"
        return f"tensorrt {self.dtype}"


def fallback_chain(kind: str, device: str = "cuda", dtype: str = "float16") -> list[Candidate]:
    """Ordered candidates for a requested backend: the request first, then the next best.

    tensorrt     -> onnxruntime CUDA -> torch cuda (same dtype) -> onnxruntime CPU -> torch cpu fp32
    onnxruntime  -> (CUDA: onnxruntime CPU) -> torch on the same device -> torch cpu fp32
    torch        -> torch cpu float32
    """
    if kind not in KINDS:
        raise ValueError(f"unknown encoder backend {kind!r}; expected one of {', '.join(KINDS)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    dtype = dtype_name(dtype, "encoder dtype")
    cpu_torch = Candidate("torch", "cpu", "float32")
    if kind == "tensorrt":
        trt_prec = "float32" if dtype == "float32" else "float16"
        chain = [Candidate("tensorrt", "cuda", trt_prec), Candidate("onnxruntime", "cuda", "float32"),
                 Candidate("torch", "cuda", dtype), Candidate("onnxruntime", "cpu", "float32"), cpu_torch]
    elif kind == "onnxruntime":
        chain = [Candidate("onnxruntime", device, "float32")]
        if device == "cuda":
            chain += [Candidate("torch", "cuda", dtype), Candidate("onnxruntime", "cpu", "float32")]
        chain.append(cpu_torch)
    else:
        chain = [Candidate("torch", device, dtype), cpu_torch]
    out: list[Candidate] = []
    for c in chain:  # drop duplicates, keep order
        if c not in out:
            out.append(c)
    return out


def unavailable_reason(c: Candidate, env: Environment, have_onnx_file: bool = False) -> str | None:
    """Why candidate `c` cannot run in `env` (one line), or None if it may."""
    if c.kind == "tensorrt":
        if env.tensorrt:
            return env.tensorrt
        if not env.onnx and not have_onnx_file:
            return "the 'onnx' package is needed to export the encoder (pip install 'flamingo-edge[onnx]')"
        return None
    if c.kind == "onnxruntime":
        if not env.onnxruntime:
            return "onnxruntime is not installed (pip install 'flamingo-edge[onnx]')"
        if not env.onnx and not have_onnx_file:
            return "the 'onnx' package is needed to export the encoder (pip install 'flamingo-edge[onnx]')"
        if c.device == "cuda" and ORT_CUDA not in env.ort_providers:
            return f"onnxruntime has no {ORT_CUDA} (install onnxruntime-gpu)"
        return None
    if c.device == "cuda" and not env.cuda:
        return "no CUDA device is visible to torch"
    return None


@dataclass
class Selection:
    backend: EncoderBackend
    requested: Candidate
    skipped: list[tuple[Candidate, str]] = field(default_factory=list)

    def message(self) -> str | None:
        """One line, None when the request was honoured."""
        if not self.skipped:
            return None
        why = "; ".join(f"{c}: {r}" for c, r in self.skipped)
        return f"encoder backend {self.requested} unavailable ({why}); using {self.backend.describe()}"


def _start(c: Candidate, model, *, max_batch: int, cache_dir, onnx_path, threads,
           profile, rebuild: bool, use_trt_provider: bool, log_fn,
           quantize: str = "none") -> EncoderBackend:
    if c.kind == "torch":
        return TorchBackend(model, c.device, c.dtype, max_batch=max_batch, quantize=quantize)
    if c.kind == "onnxruntime":
        from trt_builders.export import ensure_onnx

        path = ensure_onnx(model, cache_dir, "fp32", onnx_path, log_fn)
        return OnnxRuntimeBackend(path, c.device, max_batch=max_batch, threads=threads,
                                  use_trt_provider=use_trt_provider, cache_dir=cache_dir_or_default(cache_dir))
    from trt_builders.engines import prepare_engine

    res = prepare_engine(model, cache_dir=cache_dir_or_default(cache_dir),
                         precision="fp16" if c.dtype == "float16" else "fp32",
                         profile=profile, max_batch=max_batch, onnx_path=onnx_path,
                         force=rebuild, log=log_fn)
    return TensorRTBackend(res.engine_path, max_batch, model.modules.encoder.d.num_features)


def make_backend(kind: str, model, *, device: str | None = None, dtype: str | torch.dtype | None = None,
                 max_batch: int = 8, cache_dir: str | Path | None = None,
                 onnx_path: str | Path | None = None, threads: int | None = None,
                 profile: str | None = None, rebuild_engine: bool = False,
                 use_trt_provider: bool = False, env: Environment | None = None,
                 log_fn: Callable[[str], None] | None = None,
                 quantize: str = "none") -> EncoderBackend:
    """The requested encoder backend, or the next best one that starts (see `fallback_chain`).

    device: "cpu" | "cuda" (default: cuda for tensorrt, the model's device type otherwise).
    dtype:  torch compute dtype (default: the model's; tensorrt: float16 unless float32 given).
    quantize: "int8" = the torch backend on a CPU with dynamic int8 linears where that measures
            faster (`TorchBackend`); other backends run unquantized (logged).
    Returns a backend whose `fallback_reason` is None, or the one-line reason it is not the one
    asked for (logged as a warning). Raises only if even torch on the CPU cannot start.
    """
    return select_backend(kind, model, device=device, dtype=dtype, max_batch=max_batch,
                          cache_dir=cache_dir, onnx_path=onnx_path, threads=threads,
                          profile=profile, rebuild_engine=rebuild_engine,
                          use_trt_provider=use_trt_provider, env=env, log_fn=log_fn,
                          quantize=quantize).backend


def select_backend(kind: str, model, *, device: str | None = None,
                   dtype: str | torch.dtype | None = None, max_batch: int = 8,
                   cache_dir: str | Path | None = None, onnx_path: str | Path | None = None,
                   threads: int | None = None, profile: str | None = None,
                   rebuild_engine: bool = False, use_trt_provider: bool = False,
                   env: Environment | None = None,
                   log_fn: Callable[[str], None] | None = None,
                   quantize: str = "none") -> Selection:
    """Like `make_backend`, but returns the whole `Selection` (what was skipped and why)."""
    from trt_builders.metadata import one_line

    model_dev = model.modules.encoder.patch_embed.proj.weight.device.type
    if device is None:
        device = "cuda" if kind == "tensorrt" else model_dev
    if dtype is None:
        dtype = "float16" if kind == "tensorrt" else dtype_name(model.dtype)
    chain = fallback_chain(kind, device, dtype_name(dtype, "encoder dtype"))
    env = env or Environment.probe()
    skipped: list[tuple[Candidate, str]] = []
    for c in chain:
        reason = unavailable_reason(c, env, onnx_path is not None)
        if reason is None:
            try:
                backend = _start(c, model, max_batch=max_batch, cache_dir=cache_dir,
                                 onnx_path=onnx_path, threads=threads, profile=profile,
                                 rebuild=rebuild_engine, use_trt_provider=use_trt_provider,
                                 log_fn=log_fn, quantize=quantize)
            except Exception as e:
                if c == chain[-1]:
                    raise
                reason = one_line(e)
            else:
                sel = Selection(backend, chain[0], skipped)
                backend.fallback_reason = sel.message()
                if backend.fallback_reason:
                    log.warning("encoder backend fallback", reason=backend.fallback_reason)
                if quantize != "none" and c.kind != "torch":
                    log.warning("encoder quantize ignored", quantize=quantize,
                                backend=backend.describe(),
                                reason="model.encoder.quantize applies to the torch backend on CPUs")
                return sel
        skipped.append((c, reason))
    raise RuntimeError("no encoder backend could start: " +
                       "; ".join(f"{c}: {r}" for c, r in skipped))
