"""Device check of the encoder backends on a CUDA machine (run through scripts/gpu_check.sh).

For each backend that exists on the machine: parity against the PyTorch float32 encoder on the
same GPU (TF32 off) and throughput at batch `--batch`. Prints a short table and writes JSON.

    torch cuda float32 / float16 / bfloat16      always (needs CUDA)
    onnxruntime CUDA                             if onnxruntime has CUDAExecutionProvider
    tensorrt fp16 (and --trt-fp32)               if `import tensorrt` works: builds the engine,
                                                 then checks that a second build is a cache hit

The encoder has the released dims with random weights unless --model DIR is given. Exit code 1 if
any parity bound is exceeded, 0 otherwise (missing optional backends are reported, not failures).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

FLOP_FLOOR_GFLOP = 121.4
# relative-error bounds vs torch float32 on the same GPU
BOUNDS = {"float32": 1e-4, "onnxruntime": 1e-3, "float16": 2e-2, "bfloat16": 5e-2,
          "tensorrt fp16": 2e-2, "tensorrt fp32": 1e-3}


class Deadline(BaseException):
    """SIGTERM (scripts/gpu_check.sh's `timeout`): stop measuring, still print the table.
    A BaseException so `record`'s per-backend `except Exception` does not swallow it."""


def _on_sigterm(signum, frame):
    raise Deadline()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(backend, clips, batch, reps):
    backend.encode(clips[:batch])
    _sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        for i in range(0, clips.shape[0], batch):
            backend.encode(clips[i:i + batch])
    _sync()
    return clips.shape[0] * reps / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="AF2 checkpoint dir (default: random released dims)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--trt-fp32", action="store_true", help="also build and check an fp32 engine")
    ap.add_argument("--cache-dir", default=None, help="engine cache (default: a temp dir)")
    ap.add_argument("--device", default="cuda",
                    help="cuda; 'cpu' only to dry-run this script's flow on a CPU box")
    ap.add_argument("--out", default=str(ROOT / "bench/results/gpu_check.json"))
    args = ap.parse_args()

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing to check")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from edge.encoder_backends import Environment, OnnxRuntimeBackend, TensorRTBackend, TorchBackend
    from trt_builders.engines import prepare_engine, random_released_model

    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)"
    cc = "%d.%d" % torch.cuda.get_device_capability(0) if dev == "cuda" else "-"
    env = Environment.probe()
    print(f"GPU {gpu} (sm {cc}); torch {torch.__version__}; tensorrt: {env.tensorrt or 'available'}; "
          f"onnxruntime providers: {', '.join(env.ort_providers) or 'none'}", flush=True)

    if args.model:
        from edge.model import AF2

        model = AF2.load(args.model, dtype=torch.float32, device=dev)
    else:
        model = random_released_model(seed=0, device=dev)
    g = torch.Generator().manual_seed(1)
    clips = ((torch.rand(args.clips, 160000, generator=g) * 2 - 1) * 0.8).to(dev)
    ref_backend = TorchBackend(model, batch_invariant=False, max_batch=args.batch)
    ref = ref_backend.encode(clips).float()
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    rows, failed = [], False

    def record(name, make, bound_key):
        nonlocal failed
        t0 = time.perf_counter()
        try:
            b = make()
            setup = time.perf_counter() - t0
            out = b.encode(clips).float().to(ref.device)
            err = float((out - ref).norm() / ref.norm())
            cps = timed(b, clips, args.batch, args.reps)
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append({"backend": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
            traceback.print_exc()
            print(f"{name}: FAILED {rows[-1]['error']}", flush=True)
            return None
        ok = err <= BOUNDS[bound_key]
        failed |= not ok
        rows.append({"backend": name, "setup_s": round(setup, 1), "rel_err": float(f"{err:.3g}"),
                     "bound": BOUNDS[bound_key], "ok": ok, "clips_per_s": round(cps, 2),
                     "rtf": round(1 / cps / 10.0, 5), "gflops": round(cps * FLOP_FLOOR_GFLOP),
                     "streams_at_70pct_10s_hop": int(0.7 * cps * 10)})
        print(f"{name}: rel err {err:.2e} ({'ok' if ok else 'FAIL'}), {cps:.1f} clips/s", flush=True)
        return b

    def run_all():
        record = recording
        record(f"torch {dev} float32", lambda: ref_backend, "float32")
        for dt in ("float16", "bfloat16"):
            record(f"torch {dev} {dt}", lambda dt=dt: TorchBackend(model, dev, dt, max_batch=args.batch,
                                                                  batch_invariant=False), dt)
        if dev == "cpu" and env.onnxruntime:  # dry run: exercise the ORT path on the CPU provider
            from edge.encoder_backends import ensure_onnx

            record("onnxruntime CPU", lambda: OnnxRuntimeBackend(
                ensure_onnx(model, cache), "cpu", max_batch=args.batch), "onnxruntime")
        elif "CUDAExecutionProvider" in env.ort_providers:
            from edge.encoder_backends import ensure_onnx

            record("onnxruntime CUDA", lambda: OnnxRuntimeBackend(
                ensure_onnx(model, cache), "cuda", max_batch=args.batch), "onnxruntime")
        else:
            rows.append({"backend": "onnxruntime CUDA", "skipped": "no CUDAExecutionProvider"})
        if env.tensorrt is None:
            for prec in ("fp16",) + (("fp32",) if args.trt_fp32 else ()):
                def make(prec=prec):
                    res = prepare_engine(model, cache_dir=cache, precision=prec, max_batch=args.batch)
                    again = prepare_engine(model, cache_dir=cache, precision=prec, max_batch=args.batch)
                    assert not again.built, f"second prepare_engine rebuilt: {again.reasons}"
                    return TensorRTBackend(res.engine_path, args.batch, model.modules.encoder.d.num_features)
                record(f"tensorrt {prec}", make, f"tensorrt {prec}")
        else:
            rows.append({"backend": "tensorrt", "skipped": env.tensorrt})

    def recording(*a):
        try:
            return record(*a)
        finally:
            _write_json(rows, gpu, cc, env, args)  # partial results survive a SIGKILL

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run_all()
    except Deadline:
        rows.append({"backend": "(stopped)", "error": "time limit reached (SIGTERM); remaining "
                     "backends not measured"})
        print("gpu_check: time limit reached; printing what was measured", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _report(rows, gpu, cc, env, args)
    return 1 if failed else 0


def _write_json(rows, gpu, cc, env, args):
    out = {"gpu": gpu, "compute_capability": cc, "torch": torch.__version__,
           "tensorrt": env.tensorrt or _trt_version(), "batch": args.batch, "clips": args.clips,
           "model": args.model or "random released dims", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


def _report(rows, gpu, cc, env, args):
    print()
    print(f"{'backend':22s} {'rel err':>9s} {'clips/s':>9s} {'RTF':>9s} {'GFLOP/s':>8s} {'streams':>8s}")
    for r in rows:
        if "clips_per_s" in r:
            print(f"{r['backend']:22s} {r['rel_err']:9.2e} {r['clips_per_s']:9.1f} {r['rtf']:9.5f} "
                  f"{r['gflops']:8d} {r['streams_at_70pct_10s_hop']:8d}{'' if r['ok'] else '  FAIL'}")
        else:
            print(f"{r['backend']:22s} {r.get('skipped') or r.get('error')}")
    _write_json(rows, gpu, cc, env, args)
    print(f"written {args.out}")


def _trt_version():
    try:
        import tensorrt

        return tensorrt.__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
