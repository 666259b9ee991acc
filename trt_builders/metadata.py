"""Engine metadata and staleness: pure functions, no TensorRT or CUDA needed (tested on the CPU).

A TensorRT engine is only valid for the TensorRT version, GPU (compute capability) and ONNX it was
built from, and for the precision and batch profile it was built with. Every engine we write has
a JSON file next to it (`<engine>.json`); before an engine is deserialised, `engine_problems`
compares that file and the engine bytes against what the current machine and request need. Any
difference makes the engine stale (or foreign: copied from another box, hand-edited, truncated)
and the caller rebuilds it; a stale engine is never loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.files import default_data_dir, engine_cache_dir

ENGINE_FORMAT = "flamingo-edge-trt/1"
ENGINE_PRECISIONS = ("fp16", "fp32")
MAX_PROFILE_BATCH = 256

# TensorRT layer types kept in float32 in a (weakly typed) FP16 build; names as in trt.LayerType.
FP32_LAYER_TYPES = frozenset({"NORMALIZATION", "SOFTMAX", "REDUCE"})
# Layer-name fragments kept in float32: the mel front end (ONNX scope /front/) and the pieces of a
# LayerNorm / softmax if a TensorRT version decomposes them into elementwise + reduce layers.
FP32_NAME_FRAGMENTS = ("/front/", "LayerNormalization", "Softmax")
FLOAT_TYPES = frozenset({"FLOAT", "HALF", "BF16"})
NEVER_CONSTRAIN = frozenset({"CONSTANT", "SHAPE", "CAST", "ASSERTION", "IDENTITY"})


def cache_dir_or_default(cache_dir: str | Path | None) -> Path:
    """``cache_dir``, or the daemon's engine cache without a config: <default data dir>/engines
    (the daemon and the ``engines`` commands pass `edge.config.Settings.engine_cache_dir`)."""
    return Path(cache_dir) if cache_dir is not None else engine_cache_dir(default_data_dir())


@dataclass(frozen=True)
class Profile:
    """Optimisation profile over the batch axis: min <= opt <= max."""

    min: int = 1
    opt: int = 4
    max: int = 8

    def __post_init__(self) -> None:
        for k in ("min", "opt", "max"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"profile {k} must be an integer, got {v!r}")  # noqa: TRY004 - one error type for every bad profile
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"profile needs 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")
        if self.max > MAX_PROFILE_BATCH:
            raise ValueError(f"profile max batch {self.max} exceeds {MAX_PROFILE_BATCH}")

    @classmethod
    def parse(cls, text: str | int) -> Profile:
        """`8` -> 1:min(4,8):8 ; `1:4:8` -> min:opt:max ; `2:8` -> 2:8:8."""
        if isinstance(text, int):
            return cls.for_max(text)
        parts = str(text).strip().split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"bad batch profile {text!r}: use MAX, MIN:MAX or MIN:OPT:MAX") from None
        if len(nums) == 1:
            return cls.for_max(nums[0])
        if len(nums) == 2:
            return cls(nums[0], nums[1], nums[1])
        if len(nums) == 3:
            return cls(*nums)
        raise ValueError(f"bad batch profile {text!r}: use MAX, MIN:MAX or MIN:OPT:MAX")

    @classmethod
    def for_max(cls, max_batch: int) -> Profile:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max batch must be a positive integer, got {max_batch!r}")
        return cls(1, min(4, max_batch), max_batch)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class BuildTarget:
    """What an engine must match to be loadable here: the identity of a build."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str  # "fp16" | "fp32"
    strongly_typed: bool
    profile: Profile
    onnx_sha256: str

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise ValueError(f"precision must be one of {ENGINE_PRECISIONS}, got {self.precision!r}")
        if not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise ValueError(f"compute capability must look like '8.7', got {self.compute_capability!r}")


@dataclass(frozen=True)
class EngineMeta:
    """The JSON file written next to every engine."""

    format: str
    target: BuildTarget
    engine_bytes: int
    engine_sha256: str
    input_name: str = "clips"
    output_name: str = "tokens"
    num_features: int = 0
    onnx_path: str = ""
    timing_cache: str = ""
    build_seconds: float = 0.0
    built_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["target"]["profile"] = str(self.target.profile)
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineMeta:
        d = json.loads(text)
        t = dict(d["target"])
        t["profile"] = Profile.parse(t["profile"])
        d["target"] = BuildTarget(**t)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def meta_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def engine_file_name(precision: str, profile: Profile) -> str:
    return f"encoder-{precision}-b{profile.max}.engine"


def timing_cache_name(trt_version: str, compute_capability: str) -> str:
    """Timing caches are only valid for one TensorRT version on one GPU architecture."""
    cc = compute_capability.replace(".", "")
    return f"timing-trt{trt_version}-sm{cc}.cache"


def target_differences(found: BuildTarget, wanted: BuildTarget) -> list[str]:
    """Human-readable reasons why an engine built for `found` cannot serve `wanted`."""
    out = []
    names = {
        "trt_version": "TensorRT version", "gpu_name": "GPU", "compute_capability":
        "compute capability", "precision": "precision", "strongly_typed": "strongly typed",
        "profile": "batch profile", "onnx_sha256": "ONNX hash",
    }
    for key, label in names.items():
        a, b = getattr(found, key), getattr(wanted, key)
        if a != b:
            if key == "onnx_sha256":
                a, b = str(a)[:12], str(b)[:12]
            out.append(f"{label} {a} != {b}")
    return out


def engine_problems(engine_path: str | Path, wanted: BuildTarget,
                    engine_sha256: str | None = None) -> list[str]:
    """Why the engine at `engine_path` must not be loaded for `wanted`; [] when it may be.

    `engine_sha256` is the hash of the engine file, computed by the caller (skip with None to
    check only its size). Reads only the metadata file (and stats the engine).
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return [f"no engine at {engine_path}"]
    mp = meta_path(engine_path)
    if not mp.is_file():
        return [f"no metadata file {mp.name} (foreign or partial engine)"]
    try:
        meta = EngineMeta.from_json(mp.read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"unreadable metadata {mp.name}: {type(e).__name__}: {e}"]
    problems = []
    if meta.format != ENGINE_FORMAT:
        problems.append(f"metadata format {meta.format!r} != {ENGINE_FORMAT!r}")
    size = engine_path.stat().st_size
    if size != meta.engine_bytes:
        problems.append(f"engine size {size} != {meta.engine_bytes} recorded (foreign or truncated)")
    elif engine_sha256 is not None and engine_sha256 != meta.engine_sha256:
        problems.append("engine sha256 differs from the recorded one (foreign engine)")
    problems += target_differences(meta.target, wanted)
    return problems


def keep_fp32(layer_name: str, layer_type: str, output_types: list[str] | tuple[str, ...]) -> bool:
    """Per-layer precision rule of the weakly typed FP16 build.

    True for layers that produce floating-point tensors and are a LayerNorm, softmax or reduction,
    or belong to the mel front end. Constants, shape arithmetic and casts are never constrained.
    """
    if layer_type in NEVER_CONSTRAIN:
        return False
    if not any(t in FLOAT_TYPES for t in output_types):
        return False
    if layer_type in FP32_LAYER_TYPES:
        return True
    return any(f in layer_name for f in FP32_NAME_FRAGMENTS)


def fp32_violations(engine_info: dict) -> list[str]:
    """Layers of a built engine (IEngineInspector JSON, ProfilingVerbosity.DETAILED) that must
    compute in float32 but output half/bf16: the mel front end, LayerNorm, softmax. A fused
    layer is named after all its parts ("/front/Conv + /front/Log"), so a fragment anywhere in
    the name counts."""
    bad = []
    for layer in engine_info.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        name = str(layer.get("Name", ""))
        if not any(f in name for f in FP32_NAME_FRAGMENTS):
            continue
        for out in layer.get("Outputs", []):
            fmt = str(out.get("Format/Datatype", "")) if isinstance(out, dict) else ""
            if "Half" in fmt or "BFloat16" in fmt or "FP16" in fmt:
                bad.append(name)
                break
    return bad


def one_line(exc: BaseException) -> str:
    """First line of an exception, prefixed by its type: for one-line fallback messages."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
