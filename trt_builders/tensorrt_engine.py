"""TensorRT engine build and runtime for the encoder (TensorRT 10 Python API; 11 ready).

Nothing here imports `tensorrt` at module import time: `trt_status()` says whether TensorRT and a
CUDA device are usable, and every function that needs TensorRT imports it inside. The decisions
(metadata, staleness, profile, per-layer precision) are pure functions in `metadata.py`.

Build (`build_engine`):
* network from the ONNX (`trt.OnnxParser.parse_from_file`), one optimisation profile over the
  batch axis (min:opt:max);
* FP16, strongly typed (the default on TensorRT 10 and later): the network is created
  `STRONGLY_TYPED` from the "fp16-mixed" ONNX, whose Casts carry the precision policy, so layers
  the parser adds (`ONNXTRT_*` shuffles around the 1-D STFT conv) inherit float32 instead of
  drifting into fp16;
* FP16, TensorRT 10 weak typing on request (`strongly_typed=False`): `BuilderFlag.FP16` +
  `OBEY_PRECISION_CONSTRAINTS` with every LayerNorm / softmax / reduce layer and the mel front
  end pinned to float32 (`keep_fp32`);
* TF32 cleared in every build (fp32 engines and the fp32 islands of fp16 ones), and the built
  engine checked with `IEngineInspector`: a front-end / LayerNorm / softmax layer running in
  half precision fails the build (`fp32_violations`);
* TensorRT older than 10 (JetPack 6.0 ships 8.6) is refused in one line by `trt_status`;
* a timing cache loaded from and saved to disk, one per TensorRT version and GPU architecture;
* the serialised engine and its metadata JSON written atomically side by side.

Runtime (`TRTEncoder`): deserialise with `trt.Runtime`, named I/O tensors, torch-allocated CUDA
buffers, `set_input_shape` + `set_tensor_address` for every I/O tensor, then `execute_async_v3` on
a torch-created non-default stream that waits on (and is waited on by) torch's current stream.
No pycuda.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable

from edge.constants import CLIP_SAMPLES

from .metadata import (
    ENGINE_FORMAT,
    BuildTarget,
    EngineMeta,
    Profile,
    engine_problems,
    fp32_violations,
    keep_fp32,
    meta_path,
    timing_cache_name,
)

DEFAULT_WORKSPACE_GIB = 4.0


class TensorRTUnavailable(RuntimeError):
    """TensorRT or CUDA is missing; the message is one line, fit for a fallback notice."""


class EngineBuildError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------
def trt_status() -> str | None:
    """None when TensorRT can run here, else a one-line reason (never raises)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "python package 'tensorrt' is not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
    except Exception as e:  # noqa: BLE001 - a broken torch install is a reason, not a crash
        return f"torch CUDA check failed ({type(e).__name__})"
    try:
        import tensorrt
    except Exception as e:  # noqa: BLE001 - e.g. libnvinfer missing behind the python wheel
        return f"'import tensorrt' failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    version = str(getattr(tensorrt, "__version__", "?"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TRT_MAJOR:
        return (f"TensorRT {version} is not supported (needs {MIN_TRT_MAJOR}.x or later for strongly "
                f"typed networks; JetPack 6.0 ships 8.6): use JetPack 6.1+ or the onnxruntime/torch "
                f"encoder backend")
    return None


MIN_TRT_MAJOR = 10


def trt_version() -> str:
    import tensorrt as trt

    return trt.__version__


def trt_major() -> int:
    return int(trt_version().split(".")[0])


def weak_fp16_supported() -> bool:
    """TensorRT 10 has BuilderFlag.FP16; TensorRT 11 removes weak typing."""
    import tensorrt as trt

    return hasattr(trt.BuilderFlag, "FP16") and trt_major() < 11


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of a CUDA device, via torch."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def default_strongly_typed(precision: str) -> bool:
    """The policy: fp16 engines are strongly typed (from the fp16-mixed ONNX) on TensorRT >= 10."""
    return precision == "fp16" and trt_major() >= MIN_TRT_MAJOR


def current_target(onnx_sha256: str, precision: str, profile: Profile,
                   strongly_typed: bool | None = None, device: int = 0) -> BuildTarget:
    """The BuildTarget an engine must match on this machine (needs TensorRT and CUDA)."""
    if strongly_typed is None:
        strongly_typed = default_strongly_typed(precision)
    name, cc = gpu_identity(device)
    return BuildTarget(trt_version(), name, cc, precision, bool(strongly_typed), profile, onnx_sha256)


# ------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------
def _logger():
    import tensorrt as trt

    level = trt.Logger.VERBOSE if os.environ.get("FLAMINGO_TRT_VERBOSE") else trt.Logger.WARNING
    return trt.Logger(level)


def _dtype_name(dt) -> str:
    return str(dt).rsplit(".", 1)[-1].upper()  # DataType.HALF -> "HALF"


def apply_precision_policy(network) -> int:
    """Pin LayerNorm / softmax / reduce / front-end layers to float32. Returns how many."""
    import tensorrt as trt

    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        types = [_dtype_name(o.dtype) for o in outs]
        if keep_fp32(layer.name, _dtype_name(layer.type), types):
            layer.precision = trt.float32
            for j, t in enumerate(types):
                if t in ("FLOAT", "HALF", "BF16"):
                    layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(onnx_path: str | Path, engine_path: str | Path, target: BuildTarget, *,
                 timing_cache_dir: str | Path | None = None,
                 workspace_gib: float = DEFAULT_WORKSPACE_GIB,
                 log: Callable[[str], None] = print) -> EngineMeta:
    """Build `engine_path` (+ metadata JSON) from `onnx_path` for `target`. Needs TensorRT + CUDA."""
    reason = trt_status()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    logger = _logger()
    builder = trt.Builder(logger)
    flags = 0
    if target.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and trt_major() < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: ONNX parse failed: " + " | ".join(errors[:3]))
    inp = network.get_input(0)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    pinned = 0
    if target.precision == "fp16" and not target.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = apply_precision_policy(network)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # float32 layers compute in float32, not TF32
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for IEngineInspector
    profile = builder.create_optimization_profile()
    p = target.profile
    profile.set_shape(inp.name, (p.min, CLIP_SAMPLES), (p.opt, CLIP_SAMPLES), (p.max, CLIP_SAMPLES))
    config.add_optimization_profile(profile)

    cache_file = None
    if timing_cache_dir is not None:
        cache_file = Path(timing_cache_dir) / timing_cache_name(target.trt_version, target.compute_capability)
        blob = cache_file.read_bytes() if cache_file.is_file() else b""
        # create_timing_cache(b"") makes a new cache; a corrupt blob may give None, and
        # set_timing_cache returns False when the header (device / version) does not match.
        try:
            cache = config.create_timing_cache(blob) if blob else None
        except Exception:  # noqa: BLE001 - an unreadable cache only costs build time
            cache = None
        if blob and (cache is None or not config.set_timing_cache(cache, ignore_mismatch=False)):
            log(f"timing cache {cache_file.name} rejected; starting an empty one")
            cache = None
        if cache is None:
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    from .progress import BuildProgress, trt_monitor

    monitor = trt_monitor(trt, BuildProgress(log), log)
    if monitor is not None:
        config.progress_monitor = monitor  # kept alive by `monitor` until the build returns
    log(f"building TensorRT {target.trt_version} engine: {target.precision}"
        f"{' strongly typed' if target.strongly_typed else ''}, batch {p}, "
        f"{network.num_layers} layers ({pinned} pinned to fp32) on {target.gpu_name}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    data = bytes(memoryview(serialized))
    inspected = inspect_precision(data, logger)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_file, bytes(memoryview(config.get_timing_cache().serialize())))

    import hashlib

    meta = EngineMeta(
        format=ENGINE_FORMAT, target=target, engine_bytes=len(data),
        engine_sha256=hashlib.sha256(data).hexdigest(), input_name=inp.name,
        output_name=network.get_output(0).name, num_features=int(network.get_output(0).shape[-1]),
        onnx_path=str(onnx_path), timing_cache=str(cache_file or ""),
        build_seconds=round(time.perf_counter() - t0, 1),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={"layers": network.num_layers, "fp32_pinned_layers": pinned,
               "workspace_gib": workspace_gib, "inspector": inspected},
    )
    _atomic_write(engine_path, data)
    _atomic_write(meta_path(engine_path), meta.to_json().encode())
    log(f"engine written: {engine_path} ({len(data) / 2**20:.0f} MiB, {meta.build_seconds:.0f} s)")
    return meta


def inspect_precision(data: bytes, logger) -> str:
    """Check the built engine's per-layer precision with IEngineInspector. -> a summary for the
    metadata; raises EngineBuildError if a layer that must stay float32 runs in half."""
    import json

    import tensorrt as trt

    if not hasattr(trt, "LayerInformationFormat"):
        return "unavailable (no IEngineInspector in this TensorRT)"
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None or not hasattr(engine, "create_engine_inspector"):
        return "unavailable (engine not inspectable)"
    info = json.loads(engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON))
    bad = fp32_violations(info)
    if bad:
        raise EngineBuildError(f"TensorRT put {len(bad)} float32 layer(s) in half precision: "
                               + ", ".join(bad[:3]))
    return f"checked {len(info.get('Layers', []))} layers: front end / norms / softmax in float32"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


@dataclass
class EnsureResult:
    engine_path: Path
    built: bool
    reasons: list[str]  # why it was (re)built; [] if the existing engine was reused


def ensure_engine(onnx_path: str | Path, engine_path: str | Path, target: BuildTarget, *,
                  force: bool = False, timing_cache_dir: str | Path | None = None,
                  workspace_gib: float = DEFAULT_WORKSPACE_GIB,
                  log: Callable[[str], None] = print) -> EnsureResult:
    """Reuse `engine_path` if its metadata and bytes match `target`, otherwise (re)build it."""
    from edge.files import sha256_file

    engine_path = Path(engine_path)
    reasons = ["rebuild requested"] if force else engine_problems(
        engine_path, target, sha256_file(engine_path) if engine_path.is_file() else None)
    if not reasons:
        return EnsureResult(engine_path, False, [])
    log(f"engine {engine_path.name} is stale: {'; '.join(reasons)}")
    build_engine(onnx_path, engine_path, target, timing_cache_dir=timing_cache_dir,
                 workspace_gib=workspace_gib, log=log)
    return EnsureResult(engine_path, True, reasons)


# ------------------------------------------------------------------------------------------
# runtime
# ------------------------------------------------------------------------------------------
def _torch_dtype(trt_dtype):
    import tensorrt as trt
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[trt_dtype]


class TRTEncoder:
    """A deserialised encoder engine. `__call__((B,160000) float32) -> (B,64,D) float32` on CUDA.

    Call `engine_problems` (or `ensure_engine`) first: this class loads whatever it is given.
    Batches above the profile's max are split; one execution context, so not thread-safe.
    """

    def __init__(self, engine_path: str | Path, device: int = 0) -> None:
        reason = trt_status()
        if reason:
            raise TensorRTUnavailable(reason)
        import tensorrt as trt
        import torch

        self.device = torch.device("cuda", device)
        self._logger = _logger()
        self.runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise RuntimeError(f"{engine_path}: TensorRT could not deserialise the engine")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)  # non-default: see _run
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise RuntimeError(f"{engine_path}: expected one input and one output, got {ins} -> {outs}")
        self.input_name, self.output_name = ins[0], outs[0]
        self.in_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.out_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        shapes = self.engine.get_tensor_profile_shape(self.input_name, 0)  # [min, opt, max]
        self.min_batch, self.max_batch = int(shapes[0][0]), int(shapes[2][0])

    def _run(self, x):
        """One execute_async_v3 on the engine's own stream, ordered after and before torch's
        current stream (TensorRT's docs warn that the default stream makes it add
        cudaDeviceSynchronize calls; torch's current stream is usually that default stream)."""
        import torch

        ctx = self.context
        if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
            raise RuntimeError(f"TensorRT rejected input shape {tuple(x.shape)} for {self.input_name!r} "
                               f"(profile batch {self.min_batch}..{self.max_batch})")
        out_shape = tuple(ctx.get_tensor_shape(self.output_name))
        y = torch.empty(out_shape, dtype=self.out_dtype, device=self.device)
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        ctx.set_tensor_address(self.output_name, y.data_ptr())
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # x was written on the current stream
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        # the caching allocator must not hand x / y to other work before TensorRT is done with them
        x.record_stream(self.stream)
        y.record_stream(self.stream)
        current.wait_stream(self.stream)  # later torch ops on the current stream see y
        return y

    def __call__(self, clips):
        import torch

        x = clips.to(self.device, self.in_dtype).contiguous()
        outs = []
        for i in range(0, x.shape[0], self.max_batch):
            chunk = x[i:i + self.max_batch]
            if chunk.shape[0] < self.min_batch:  # pad up to the profile's min batch
                pad = chunk.new_zeros((self.min_batch - chunk.shape[0], chunk.shape[1]))
                outs.append(self._run(torch.cat([chunk, pad]))[: chunk.shape[0]])
            else:
                outs.append(self._run(chunk.contiguous()))
        return torch.cat(outs).float()
