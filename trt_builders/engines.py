"""High-level engine management: model -> ONNX -> (cached, validated) TensorRT engine.

    res = prepare_engine(model, cache_dir=settings.engine_cache_dir(), precision="fp16", max_batch=8)
    res.engine_path, res.built, res.reasons

Cache directory layout::

    encoder-<weights fingerprint>.onnx (+ .onnx.json)    float32 export (TensorRT 10, ORT)
    encoder-<weights fingerprint>-fp16-mixed.onnx        strongly typed export (TensorRT >= 11)
    encoder-fp16-b8.engine (+ .engine.json)              engine + metadata (metadata.py)
    timing-trt<version>-sm<cc>.cache                     TensorRT timing cache
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from .metadata import EngineMeta, Profile, engine_file_name, meta_path


def random_released_model(seed: int = 0, dtype=None, device: str = "cpu"):
    """AF2 with the released encoder dims (random weights) and a tiny language model: for
    benchmarks and device checks without the real checkpoint (the encoder costs the same)."""
    import torch

    from edge.model.af2 import AF2
    from edge.model.config import AF2Config, LMDims

    lm = LMDims(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2)
    return AF2.random(AF2Config().with_lm(lm), dtype or torch.float32, device, seed)


def onnx_precision_for(precision: str, strongly_typed: bool) -> str:
    """Which ONNX an engine is built from: strongly typed FP16 needs the fp16-mixed graph."""
    return "fp16-mixed" if (precision == "fp16" and strongly_typed) else "fp32"


def prepare_engine(model, *, cache_dir: str | Path, precision: str = "fp16",
                   profile: str | Profile | None = None, max_batch: int = 8,
                   onnx_path: str | Path | None = None, force: bool = False,
                   strongly_typed: bool | None = None, workspace_gib: float = 4.0,
                   log: Callable[[str], None] | None = None):
    """Export (if needed) and build (if stale) the engine for `model`'s encoder on this GPU."""
    from .export import ensure_onnx, onnx_sha256, read_sidecar
    from .tensorrt_engine import (
        TensorRTUnavailable,
        current_target,
        default_strongly_typed,
        ensure_engine,
        trt_status,
    )

    log = log or print
    reason = trt_status()
    if reason:
        raise TensorRTUnavailable(reason)
    prof = profile if isinstance(profile, Profile) else (
        Profile.parse(profile) if profile else Profile.for_max(max_batch))
    if strongly_typed is None:
        strongly_typed = default_strongly_typed(precision)
    want = onnx_precision_for(precision, strongly_typed)
    onnx = ensure_onnx(model, cache_dir, want, onnx_path, log)
    info = read_sidecar(onnx)
    if info is not None and info.precision != want:
        raise ValueError(f"{onnx} is a {info.precision} export; this build needs a {want} export")
    target = current_target(onnx_sha256(onnx), precision, prof, strongly_typed)
    engine = Path(cache_dir) / engine_file_name(precision, prof)
    return ensure_engine(onnx, engine, target, force=force, timing_cache_dir=cache_dir,
                         workspace_gib=workspace_gib, log=log)


@dataclass
class CacheEntry:
    path: Path
    kind: str  # "engine" | "onnx"
    summary: str
    problems: list[str] | None  # None: not checked (no TensorRT here)


def describe_cache(cache_dir: str | Path) -> list[CacheEntry]:
    """What lies in a cache directory, and for engines whether they load on this machine."""
    from .export import onnx_sha256, read_sidecar, sidecar_path
    from .metadata import engine_problems
    from .tensorrt_engine import current_target, trt_status

    cache_dir = Path(cache_dir)
    entries: list[CacheEntry] = []
    if not cache_dir.is_dir():
        return entries
    can_check = trt_status() is None
    for p in sorted(cache_dir.glob("*.onnx")):
        info = read_sidecar(p)
        s = (f"{info.precision} opset {info.opset}, D={info.num_features}, weights "
             f"{info.weights_fingerprint[:12]}, {p.stat().st_size / 2**20:.0f} MiB") if info \
            else f"no sidecar {sidecar_path(p).name}"
        entries.append(CacheEntry(p, "onnx", s, None))
    for p in sorted(cache_dir.glob("*.engine")):
        try:
            meta = EngineMeta.from_json(meta_path(p).read_text())
        except (OSError, ValueError, KeyError, TypeError) as e:
            entries.append(CacheEntry(p, "engine", f"no readable metadata ({type(e).__name__})",
                                      ["no readable metadata"]))
            continue
        t = meta.target
        s = (f"TensorRT {t.trt_version}, {t.gpu_name} (sm {t.compute_capability}), {t.precision}"
             f"{' strongly typed' if t.strongly_typed else ''}, batch {t.profile}, "
             f"ONNX {t.onnx_sha256[:12]}, built {meta.built_at}")
        problems = None
        if can_check:
            onnx = Path(meta.onnx_path)
            sha = onnx_sha256(onnx) if onnx.is_file() else "(onnx missing)"
            problems = engine_problems(p, current_target(sha, t.precision, t.profile, t.strongly_typed))
        entries.append(CacheEntry(p, "engine", s, problems))
    return entries


def entries_json(entries: list[CacheEntry]) -> str:
    return json.dumps([{"path": str(e.path), "kind": e.kind, "summary": e.summary,
                        "problems": e.problems} for e in entries], indent=1)
