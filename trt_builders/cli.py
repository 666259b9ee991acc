"""`flamingo-edge engines ...`: export the encoder to ONNX, build / inspect TensorRT engines,
check a backend against PyTorch. torch and friends are imported only inside the commands."""

from __future__ import annotations

import json
import sys
import time

import click

from edge.constants import CLIP_SAMPLES

DEFAULT_CACHE_HELP = "where the daemon looks: model.encoder.cache_dir, else <data_dir>/engines"
CACHE_HELP = "Engines, ONNX exports and the timing cache live here."


def _cache_options(f):
    """--cache-dir, and the daemon's --config / --data-dir it defaults from."""
    f = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     show_default="data_dir of the config, else $XDG_DATA_HOME/flamingo-edge",
                     help="The daemon's data directory (the cache is <data_dir>/engines).")(f)
    f = click.option("--config", "config", type=click.Path(dir_okay=False, exists=True), default=None,
                     show_default="none: the built-in defaults and the environment",
                     help="The daemon's config: its data_dir and model.encoder.cache_dir.")(f)
    f = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     show_default=DEFAULT_CACHE_HELP, help=CACHE_HELP)(f)
    return f


def _cache_dir(value: str | None, config: str | None, data_dir: str | None) -> str:
    """--cache-dir, or where the daemon run with this --config / --data-dir looks
    (`edge.config.Settings.engine_cache_dir`, the one rule both use)."""
    if value:
        return value
    from edge.config import ConfigError, command_settings

    try:
        return str(command_settings(config, data_dir).engine_cache_dir())
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _model_options(f):
    f = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
                     default="float32", show_default=True,
                     help="dtype the checkpoint is loaded in (exports are traced in float32).")(f)
    f = click.option("--random-released", is_flag=True,
                     help="No checkpoint: released encoder dims with random weights (benchmarks).")(f)
    f = click.option("--model", "model_dir", type=click.Path(file_okay=False),
                     show_default="none: give --model or --random-released",
                     help="AF2 checkpoint directory (official or compact layout).")(f)
    return f


def _load(model_dir, random_released, dtype):
    if bool(model_dir) == bool(random_released):
        raise click.UsageError("give exactly one of --model DIR or --random-released")
    if random_released:
        from trt_builders.engines import random_released_model

        return random_released_model()
    from edge.model import AF2, CheckpointError

    try:
        return AF2.load(model_dir, dtype=dtype, device="cpu", encoder_only=True)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


@click.group("engines")
def engines() -> None:
    """Encoder acceleration: ONNX export, TensorRT engines, backend checks (docs/ENGINES.md)."""


@engines.command("export")
@_model_options
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True,
              help="Where to write the .onnx (a .onnx.json sidecar is written next to it).")
@click.option("--precision", type=click.Choice(["fp32", "fp16-mixed"]), default="fp32",
              show_default=True, help="fp16-mixed: for TensorRT strongly typed builds.")
@click.option("--opset", type=click.IntRange(17), default=17, show_default=True,
              help="ONNX opset version.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run ONNX Runtime (CPU) on 2 random clips, batch 1 and 2, against PyTorch.")
def export_cmd(model_dir, random_released, dtype, out, precision, opset, verify):
    """Export the encoder (clips -> tokens, mel front end inside) to ONNX and check it."""
    from trt_builders.export import ExportError, export_onnx

    model = _load(model_dir, random_released, dtype)
    t = time.perf_counter()
    try:
        info = export_onnx(model, out, precision=precision, opset=opset)
    except ExportError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"exported {out} ({precision}, opset {opset}, D={info.num_features}) in "
               f"{time.perf_counter() - t:.1f} s; onnx.checker and TensorRT op allow-list passed")
    if verify:
        err = verify_onnx(model, out)
        tol = 1e-4 if precision == "fp32" else 2e-2
        click.echo(f"ONNX Runtime CPU vs PyTorch: max relative error {err:.2e} (tolerance {tol:g})")
        if err > tol:
            raise click.ClickException("ONNX Runtime output differs from PyTorch beyond tolerance")


def verify_onnx(model, onnx_path, n: int = 2, seed: int = 0) -> float:
    """Largest relative error (Frobenius) of ORT CPU vs `model.encode` over batches 1 and n."""
    import torch

    from edge.encoder_backends import OnnxRuntimeBackend

    g = torch.Generator().manual_seed(seed)
    clips = (torch.rand(n, CLIP_SAMPLES, generator=g) * 2 - 1) * 0.8
    ref = model.encode(clips).float().cpu()
    ort = OnnxRuntimeBackend(onnx_path, "cpu", max_batch=n)
    worst = 0.0
    for b in (1, n):
        out = torch.cat([ort.encode(clips[i:i + b]) for i in range(0, n, b)])
        worst = max(worst, float((out - ref).norm() / ref.norm()))
    return worst


@engines.command("build")
@_model_options
@_cache_options
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Engine precision.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Largest batch of clips the engine takes.")
@click.option("--profile", default=None, show_default="from --max-batch",
              help="Batch profile MIN:OPT:MAX (overrides --max-batch).")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              show_default="export the model's encoder",
              help="Build from this ONNX instead of exporting the model's encoder.")
@click.option("--strongly-typed/--weakly-typed", default=None,
              help="Default: strongly typed FP16 from the fp16-mixed ONNX (TensorRT 10+); weakly typed = FP16 flag + per-layer FP32 (TensorRT 10 only).")
@click.option("--workspace-gib", type=click.FloatRange(0.25), default=4.0, show_default=True,
              help="TensorRT builder workspace.")
@click.option("--force", is_flag=True, help="Rebuild even if the cached engine is current.")
def build_cmd(model_dir, random_released, dtype, cache_dir, config, data_dir, precision, max_batch,
              profile, onnx_path, strongly_typed, workspace_gib, force):
    """Build (or reuse, if current) the TensorRT engine of the encoder for this GPU."""
    from trt_builders.metadata import Profile, one_line
    from trt_builders.tensorrt_engine import trt_status

    try:
        prof = Profile.parse(profile) if profile else Profile.for_max(max_batch)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None
    cache_dir = _cache_dir(cache_dir, config, data_dir)
    reason = trt_status()
    if reason:
        click.echo(f"TensorRT unavailable: {reason}. {_next_best()}", err=True)
        sys.exit(2)
    model = _load(model_dir, random_released, dtype)
    from trt_builders.engines import prepare_engine

    try:
        res = prepare_engine(model, cache_dir=cache_dir, precision=precision, profile=prof,
                             onnx_path=onnx_path, force=force, strongly_typed=strongly_typed,
                             workspace_gib=workspace_gib, log=click.echo)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        raise click.ClickException(f"engine build failed: {one_line(e)}") from None
    state = "built" if res.built else "current, reused"
    click.echo(f"{res.engine_path}: {state}")


def _next_best() -> str:
    from edge.encoder_backends import Environment, fallback_chain, unavailable_reason

    env = Environment.probe()
    for c in fallback_chain("tensorrt")[1:]:
        if unavailable_reason(c, env) is None:
            return f"Next best encoder backend here: {c}."
    return "No other encoder backend is available."


@engines.command("info")
@_cache_options
@click.option("--json", "as_json", is_flag=True, help="The cache entries as JSON.")
def info_cmd(cache_dir, config, data_dir, as_json):
    """Show the backends available here and the exports / engines in the cache directory."""
    from edge.encoder_backends import Candidate, Environment, unavailable_reason
    from trt_builders.engines import describe_cache, entries_json

    env = Environment.probe()
    cache_dir = _cache_dir(cache_dir, config, data_dir)
    entries = describe_cache(cache_dir)
    if as_json:
        click.echo(entries_json(entries))
        return
    click.echo("backends on this machine:")
    for c in (Candidate("tensorrt", "cuda", "float16"), Candidate("onnxruntime", "cuda", "float32"),
              Candidate("onnxruntime", "cpu", "float32"), Candidate("torch", "cuda", "float16"),
              Candidate("torch", "cpu", "float32")):
        r = unavailable_reason(c, env)
        click.echo(f"  {c!s:24s} {'available' if r is None else 'no: ' + r}")
    click.echo(f"cache {cache_dir}:" + ("" if entries else " (empty)"))
    for e in entries:
        status = ("" if e.problems is None else
                  "  [current]" if not e.problems else "  [STALE: " + "; ".join(e.problems) + "]")
        click.echo(f"  {e.path.name}: {e.summary}{status}")


@engines.command("check")
@_model_options
@click.option("--backend", "kind", type=click.Choice(["torch", "onnxruntime", "tensorrt"]),
              required=True, help="The backend to start and compare.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              show_default="the backend's (tensorrt: cuda)", help="Where the backend runs.")
@click.option("--backend-dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="torch compute dtype / tensorrt precision (float16 default for tensorrt).")
@_cache_options
@click.option("--clips", "n", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Random clips compared.")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
def check_cmd(model_dir, random_released, dtype, kind, device, backend_dtype, cache_dir, config,
              data_dir, n, as_json):
    """Start a backend (with fallback) and compare it with the PyTorch float32 encoder."""
    import torch

    from edge.encoder_backends import select_backend

    model = _load(model_dir, random_released, dtype)
    cache_dir = _cache_dir(cache_dir, config, data_dir)
    sel = select_backend(kind, model, device=device, dtype=backend_dtype, max_batch=n,
                         cache_dir=cache_dir, log_fn=lambda s: click.echo(s, err=True))
    b = sel.backend
    g = torch.Generator().manual_seed(0)
    clips = (torch.rand(n, CLIP_SAMPLES, generator=g) * 2 - 1) * 0.8
    ref = model.encode(clips).float().cpu()
    t = time.perf_counter()
    out = b.encode(clips).float().cpu()
    dt = time.perf_counter() - t
    rel = float((out - ref).norm() / ref.norm())
    res = {"requested": str(sel.requested), "backend": b.describe(), "fallback": b.fallback_reason,
           "clips": n, "rel_error_vs_torch_fp32": rel, "seconds": round(dt, 3)}
    if as_json:
        click.echo(json.dumps(res))
    else:
        click.echo(f"{b.describe()}: {n} clips in {dt:.2f} s, relative error vs torch float32 {rel:.2e}")
