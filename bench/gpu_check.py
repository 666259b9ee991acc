"""Device check on a CUDA machine (run through scripts/gpu_check.sh): preflight, the encoder,
the encoder backends and the decoder. Needs torch and this working tree only (every other
package is optional and reported).

Sections (`--sections`, all by default):

    preflight   GPU, driver, torch/CUDA, which optional packages import
    encoder     torch encoder at released dims, float16/bfloat16 x batch 8/32/128, CUDA events,
                >= 1.5 s per point; parity vs float32 (TF32 off) on noise, a full-scale tone and
                the fixture clip (when tests/fixtures or ../shared holds it)
    decoder     3B dims, bfloat16 (+ int8/int4 weight-only), 5-min memory, 15-token prompt, 128
                greedy tokens: eager vs static vs CUDA graph, identical ids, tok/s, achieved GB/s
                and % of the measured read bandwidth, prefill and cross-K/V time, peak memory
    backends    the encoder backends, as below

`--tiny` runs every section's logic at tiny dims on the CPU in seconds (CI runs it:
tests/edge/model/test_gpu_check.py), so a broken check is caught before a GPU box is lent.

Backends: for each that exists on the machine, parity against the PyTorch float32 encoder on the
same GPU (TF32 off) and throughput at batch `--batch`.

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

sys.path.insert(0, str(ROOT / "bench"))
FLOP_FLOOR_GFLOP = 121.4
OPTIONAL = ("onnxruntime", "tensorrt", "onnx", "soundfile", "sounddevice", "torchao", "soxr")
SECTIONS = ("preflight", "encoder", "decoder", "backends")
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


def _events_rate(fn, n_items: int, min_s: float, device: torch.device) -> float:
    """Items per second of `fn`, timed with CUDA events (wall clock on a CPU), >= min_s."""
    fn()
    cuda = device.type == "cuda"
    reps, elapsed = 0, 0.0
    start = torch.cuda.Event(enable_timing=True) if cuda else None
    end = torch.cuda.Event(enable_timing=True) if cuda else None
    t0 = time.perf_counter()
    if cuda:
        start.record()
    while elapsed < min_s:
        fn()
        reps += 1
        if cuda:
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            elapsed = time.perf_counter() - t0
    return reps * n_items / elapsed


def preflight() -> dict:
    import importlib
    import platform

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "optional": {}}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}",
                   memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                   bf16=torch.cuda.is_bf16_supported())
        out["driver"] = _nvidia_driver()
    for name in OPTIONAL:
        try:
            mod = importlib.import_module(name)
            out["optional"][name] = str(getattr(mod, "__version__", "present"))
        except Exception as e:  # noqa: BLE001 - absent or broken: reported, not fatal
            out["optional"][name] = f"absent ({type(e).__name__})"
    return out


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi; torch does not report it), or None."""
    import subprocess

    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def fixture_clip() -> torch.Tensor | None:
    """Clip 0 of the fixture recording as the official preparation made it (expected.safetensors
    of the af2-tiny fixture, in tests/fixtures or ../shared), or None where neither exists."""
    from safetensors.torch import load_file

    for d in (ROOT / "tests" / "fixtures" / "af2-tiny", ROOT.parent / "shared" / "fixtures" / "af2-tiny"):
        f = d / "expected.safetensors"
        if f.is_file():
            return load_file(str(f))["clips"][0].float()
    return None


def encoder_sweep(model, dev: str, batches: list[int], min_s: float) -> list[dict]:
    from edge.encoder_backends import TorchBackend

    device = torch.device(dev)
    g = torch.Generator().manual_seed(2)
    t = torch.arange(160000) / 16000.0
    signals = {"noise": (torch.rand(160000, generator=g) * 2 - 1) * 0.8,
               "tone_full_scale": torch.sin(2 * torch.pi * 1000.0 * t)}
    clip = fixture_clip()
    if clip is not None:
        signals["fixture_clip"] = clip
    probe = torch.stack(list(signals.values())).to(device)
    ref_b = TorchBackend(model, dev, "float32", max_batch=max(batches), batch_invariant=False)
    ref = ref_b.encode(probe).float()
    rows = []
    for dt in ("float16", "bfloat16"):
        try:
            b = TorchBackend(model, dev, dt, max_batch=max(batches), batch_invariant=False)
            got = b.encode(probe).float()
            parity = {k: float((got[i] - ref[i]).norm() / ref[i].norm()) for i, k in enumerate(signals)}
            for n in batches:
                clips = ((torch.rand(n, 160000, generator=g) * 2 - 1) * 0.8).to(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                cps = _events_rate(lambda b=b, clips=clips: b.encode(clips), n, min_s, device)
                row = {"dtype": dt, "batch": n, "clips_per_s": round(cps, 2), "rel_err": parity,
                       "bound": BOUNDS[dt], "ok": all(e <= BOUNDS[dt] for e in parity.values())}
                if device.type == "cuda":
                    row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                rows.append(row)
                print(f"encoder {dt} batch {n}: {cps:.1f} clips/s, parity "
                      + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()), flush=True)
        except Deadline:
            raise
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            first = str(e).splitlines()[0] if str(e) else ""
            rows.append({"dtype": dt, "error": f"{type(e).__name__}: {first}"})
    return rows


def decoder_check(dev: str, tiny: bool, new_tokens: int, variants: list[str]) -> dict:
    from _decode_paths import decoder_only_model, measure, read_bandwidth

    from edge.model.config import AF2Config

    device = torch.device(dev)
    cfg = tiny_config() if tiny else AF2Config.released("3B")
    bw = read_bandwidth(device, gib=0.25 if tiny else 2.0, min_s=0.2 if tiny else 1.0)
    out = {"dims": "tiny" if tiny else "3B", "read_bandwidth_gb_s": bw / 1e9, "variants": {}}
    paths = ["eager", "static"] + (["graph"] if device.type == "cuda" or tiny else [])
    dtype = torch.bfloat16
    ref: dict = {}  # the first variant's (bf16's) greedy ids and score: what int8/int4 deviate from
    for v in variants:
        try:
            m = decoder_only_model(cfg, dtype, dev, quantize=v if v != "bf16" else "none")
            # quantized weights on CUDA run our reference kernels (dequantized per call): fewer tokens
            n = new_tokens if v == "bf16" or device.type != "cuda" else min(new_tokens, 32)
            r = measure(m, paths, 30 if not tiny else 3, 15, n, bw)
            r["new_tokens"] = n
            paths_ok = [p for p, x in r["paths"].items() if "tokens_per_s" in x]
            r["identical_ids"] = all(r["paths"][p]["same_ids_as_eager"] for p in paths_ok)
            _vs_reference(ref, v, r)
            for p, x in r["paths"].items():
                x.pop("token_ids", None)
                if "tokens_per_s" in x:
                    print(f"decoder {out['dims']} {v} {p}: {x['tokens_per_s']:.1f} tok/s, "
                          f"{x['achieved_gb_s']:.0f} GB/s = {100 * x['fraction_of_bandwidth']:.0f}% "
                          f"of {bw / 1e9:.0f} GB/s; prefill {x['prefill_s'] * 1e3:.0f} ms, "
                          f"cross K/V {x['cross_kv_s'] * 1e3:.0f} ms", flush=True)
                else:
                    print(f"decoder {out['dims']} {v} {p}: {x.get('error')}", flush=True)
            sc = r.get("score", {})
            if "probs" in sc:
                print(f"decoder {out['dims']} {v} score {sc['question']!r}: P(yes) "
                      f"{sc['probs']['yes']:.4f}, coverage {sc['coverage']:.3f}, "
                      f"{sc['seconds'] * 1e3:.0f} ms", flush=True)
            else:
                print(f"decoder {out['dims']} {v} score: {sc.get('error')}", flush=True)
            r.pop("prompt", None)
            out["variants"][v] = r
            del m
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Deadline:
            raise
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            out["variants"][v] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return out


def _vs_reference(ref: dict, variant: str, r: dict) -> None:
    """int8/int4 are quantized from the same random bf16 weights as the first variant: their
    greedy ids (static path) and yes/no score against it (the deviation of the weight format)."""
    static = r["paths"].get("static", {})
    ids, score = static.get("token_ids"), r.get("score", {})
    if not ref:
        ref.update(variant=variant, ids=ids, score=score)
        return
    dev: dict = {"reference": ref["variant"]}
    if ids is not None and ref["ids"] is not None:
        n = min(len(ids), len(ref["ids"]))
        same = [a == b for a, b in zip(ids[:n], ref["ids"][:n])]
        dev["greedy_agreement"] = sum(same) / max(n, 1)
        dev["first_divergence"] = same.index(False) if False in same else None
    if "probs" in score and "probs" in ref["score"]:
        dev["p_yes_abs_diff"] = abs(score["probs"]["yes"] - ref["score"]["probs"]["yes"])
        dev["max_abs_logprob_diff"] = max(abs(score["logprobs"][o] - ref["score"]["logprobs"][o])
                                          for o in score["logprobs"])
    r["deviation"] = dev


def tiny_config():
    from edge.model.config import AF2Config, AudioTransformerDims, HTSATDims, LMDims

    return AF2Config(htsat=HTSATDims(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
                     audio_transformer=AudioTransformerDims(n_head=4, d_inner=512),
                     lm=LMDims(vocab_size=512, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))


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
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--tiny", action="store_true",
                    help="tiny dims on the CPU, seconds: checks this script's logic (CI)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--decoder-variants", default="bf16,int8,int4")
    args = ap.parse_args()
    sections = [x for x in args.sections.split(",") if x]
    for x in sections:
        if x not in SECTIONS:
            ap.error(f"unknown section {x!r}; choose from {', '.join(SECTIONS)}")
    if args.tiny:
        args.device = "cpu"
        args.new_tokens = min(args.new_tokens, 6)
        args.clips, args.batch, args.reps = 2, 2, 1

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing to check")
        return 0
    from edge.model.precision import fp32_on_cuda

    fp32_on_cuda()  # every parity reference below is float32 with TF32 off
    extra: dict = {}
    EXTRA.clear()
    EXTRA.update(extra)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if "preflight" in sections:
            EXTRA["preflight"] = preflight()
            print("preflight:", json.dumps(EXTRA["preflight"]), flush=True)
            _write_extra(args)
        if "encoder" in sections:
            model = (random_tiny_encoder_model(dev) if args.tiny else _released_encoder(dev))
            EXTRA["encoder"] = encoder_sweep(model, dev, [1, 2] if args.tiny else [8, 32, 128],
                                             0.05 if args.tiny else 1.5)
            del model
            _write_extra(args)
        if "decoder" in sections:
            EXTRA["decoder"] = decoder_check(dev, args.tiny, args.new_tokens,
                                             args.decoder_variants.split(","))
            _write_extra(args)
    except Deadline:
        EXTRA["stopped"] = "time limit reached (SIGTERM) before every section ran"
        print("gpu_check: time limit reached; printing what was measured", flush=True)
        _write_extra(args)
        _tables(args, _report_extra)
        return 1 if _extra_failed() else 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if "backends" not in sections:
        _write_extra(args)
        _tables(args, _report_extra)
        return 1 if _extra_failed() else 0
    from edge.encoder_backends import Environment, OnnxRuntimeBackend, TensorRTBackend, TorchBackend
    from trt_builders.engines import prepare_engine, random_released_model

    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)"
    cc = "{}.{}".format(*torch.cuda.get_device_capability(0)) if dev == "cuda" else "-"
    env = Environment.probe()
    print(f"GPU {gpu} (sm {cc}); torch {torch.__version__}; tensorrt: {env.tensorrt or 'available'}; "
          f"onnxruntime providers: {', '.join(env.ort_providers) or 'none'}", flush=True)

    if args.model:
        from edge.model import AF2

        model = AF2.load(args.model, dtype=torch.float32, device=dev)
    elif args.tiny:
        model = random_tiny_encoder_model(dev)
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
            from trt_builders.export import ensure_onnx

            record("onnxruntime CPU", lambda: OnnxRuntimeBackend(
                ensure_onnx(model, cache), "cpu", max_batch=args.batch), "onnxruntime")
        elif "CUDAExecutionProvider" in env.ort_providers:
            from trt_builders.export import ensure_onnx

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
    _tables(args, lambda: _report(rows, gpu, cc, env, args), _report_extra)
    return 1 if (failed or _extra_failed()) else 0


EXTRA: dict = {}  # the preflight / encoder / decoder sections, written beside the backend rows


def _released_encoder(dev):
    from trt_builders.engines import random_released_model

    return random_released_model(seed=0, device=dev)


def random_tiny_encoder_model(dev):
    from edge.model import AF2

    return AF2.random(tiny_config(), torch.float32, device=dev, seed=0)


def _write_extra(args) -> None:
    path = Path(args.out)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(EXTRA)
    data["tiny"] = bool(args.tiny)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def _extra_failed() -> bool:
    bad = any(not r.get("ok", True) for r in EXTRA.get("encoder", []))
    for v in EXTRA.get("decoder", {}).get("variants", {}).values():
        bad |= v.get("identical_ids") is False
    return bad


def _tables(args, *reports) -> None:
    """Print the result tables and write them beside the JSON (`gpu_check.txt`)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        for report in reports:
            report()
    text = buf.getvalue()
    print(text, end="", flush=True)
    path = Path(args.out).with_suffix(".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"tables written to {path}", flush=True)


def _report_extra() -> None:
    enc = EXTRA.get("encoder")
    if enc:
        print()
        print(f"{'encoder':10s} {'batch':>5s} {'clips/s':>9s} {'max rel err':>11s} {'peak GiB':>8s}")
        for r in enc:
            if "clips_per_s" in r:
                print(f"{r['dtype']:10s} {r['batch']:5d} {r['clips_per_s']:9.1f} "
                      f"{max(r['rel_err'].values()):11.2e} {r.get('peak_gpu_memory_gib', '-')!s:>8s}"
                      f"{'' if r['ok'] else '  FAIL'}")
            else:
                print(f"{r['dtype']:10s} {r.get('error')}")
    dec = EXTRA.get("decoder")
    if dec:
        print()
        print(f"decoder {dec['dims']}: read bandwidth {dec['read_bandwidth_gb_s']:.0f} GB/s")
        print(f"{'variant':8s} {'path':7s} {'tok/s':>8s} {'GB/s':>7s} {'% bw':>5s} {'prefill ms':>10s} "
              f"{'xkv ms':>7s} {'same ids':>8s}")
        for v, r in dec["variants"].items():
            if "error" in r:
                print(f"{v:8s} {r['error']}")
                continue
            for p, x in r["paths"].items():
                if "tokens_per_s" in x:
                    print(f"{v:8s} {p:7s} {x['tokens_per_s']:8.1f} {x['achieved_gb_s']:7.1f} "
                          f"{100 * x['fraction_of_bandwidth']:5.0f} {x['prefill_s'] * 1e3:10.1f} "
                          f"{x['cross_kv_s'] * 1e3:7.1f} {x['same_ids_as_eager']!s:>8s}")
                else:
                    print(f"{v:8s} {p:7s} {x.get('error')}")
            sc = r.get("score", {})
            if "probs" in sc:
                print(f"{v:8s} score   P(yes) {sc['probs']['yes']:.4f} coverage {sc['coverage']:.3f} "
                      f"in {sc['seconds'] * 1e3:.1f} ms + the cross K/V ({sc['prompt_tokens']}-token prompt)")
            d = r.get("deviation")
            if d:
                print(f"{v:8s} vs {d['reference']}: greedy agreement {d.get('greedy_agreement', 0):.2f} "
                      f"(first divergence {d.get('first_divergence')}), |dP(yes)| "
                      f"{d.get('p_yes_abs_diff', float('nan')):.4f}, max |d logprob| "
                      f"{d.get('max_abs_logprob_diff', float('nan')):.3f}")
            if "peak_gpu_memory_bytes" in r:
                print(f"{v:8s} peak GPU memory {r['peak_gpu_memory_bytes'] / 2**30:.1f} GiB")


def _write_json(rows, gpu, cc, env, args):
    out = {"gpu": gpu, "compute_capability": cc, "torch": torch.__version__,
           "tensorrt": env.tensorrt or _trt_version(), "batch": args.batch, "clips": args.clips,
           "model": args.model or "random released dims", "rows": rows, **EXTRA,
           "tiny": bool(args.tiny)}
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
