"""Load benchmark: wall time and peak RSS of the streamed loader vs reading every chunk.

    python bench/bench_load.py [--dir /tmp/fe-synth] [--layers 4] [--remake]

On a synthetic checkpoint of several GB in the official layout (make_synthetic_checkpoint.py;
written first if --dir has none), each in a fresh child process:

  * ours     `AF2.load(dir, dtype)`: memory-mapped, only the kept tensors read, cast in place;
  * official what the official inference script does: build the model (random init), load the
             AF-CLAP pickle into the encoder, `safetensors.torch.load_file` every chunk into one
             dict, `load_state_dict(strict=False)` (then `.to(dtype)` for bfloat16).

float32 and bfloat16. Peak RSS is the kernel's high-water mark (VmHWM; it counts pages of
memory-mapped files the process touched) and, sampled every 5 ms, its anonymous part (RssAnon:
memory that cannot be dropped under pressure). Goal (issue 2 §3): ours <= 1.3x the loaded model's
size. The page cache is warmed first (every file read once) so both approaches read from RAM.
Writes bench/results/load.json.

    python bench/bench_load.py --verify-cost [--dtypes float32]

instead measures what the content hash costs at start-up: `AF2.load` with ``verify="quick"``
(headers, sizes, NaN/Inf) against the default ``verify="full"`` (every file also re-hashed
against flamingo_edge.sha256.json in a thread beside the load), each in a fresh process, warm
page cache, the manifest recorded first. Writes bench/results/load-verify.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _common as C  # puts the repo on sys.path

DTYPES = ("float32", "bfloat16")


# ---- children -----------------------------------------------------------------------------------

def model_bytes(modules) -> int:
    """Bytes of every parameter and buffer of the loaded model."""
    seen, n = set(), 0
    for t in list(modules.parameters()) + list(modules.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        n += t.numel() * t.element_size()
    return n


def child_ours(model_dir: str, dtype: str, verify: str = "full") -> dict:
    import torch

    from edge.model.af2 import AF2

    base = C.proc_status()
    with C.PeakSampler() as s, C.Clock() as c:
        m = AF2.load(model_dir, dtype=getattr(torch, dtype), verify=verify)
    return {"wall_s": c.wall, "cpu_s": c.cpu, "model_bytes": model_bytes(m.modules),
            "baseline_rss": base.get("VmRSS", 0), **_peaks(s)}


def child_official(model_dir: str, dtype: str) -> dict:
    import torch
    from safetensors.torch import load_file

    from edge.model.af2 import AF2Modules
    from edge.model.checkpoint import _numpy_safe_globals, official_candidates
    from edge.model.config import AF2Config, lm_dims_from_hf_config
    from edge.model.tokenizer import AF2Tokenizer

    d = Path(model_dir)
    base = C.proc_status()
    with C.PeakSampler() as s, C.Clock() as c:
        meta = json.loads((d / "safe_ckpt" / "metadata.json").read_text())
        # the official factory builds the whole model first (initialised), encoder from the pickle
        vocab = _embedding_rows(d, meta)
        cfg = AF2Config().with_lm(lm_dims_from_hf_config(d / "lm" / "config.json", vocab))
        mods = AF2Modules(cfg)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            clap = torch.load(d / "clap_ckpt" / "epoch_16.pt", map_location="cpu",
                              weights_only=True)["state_dict"]
        enc = {k[len("module.audio_branch."):]: v for k, v in clap.items()
               if k.startswith("module.audio_branch.")}
        mods.encoder.load_state_dict(enc, strict=False)
        del clap, enc
        # then every chunk into one dict, and load_state_dict(strict=False) on top
        state: dict = {}
        for name in meta:
            state.update(_load_whole_file(load_file, d / "safe_ckpt" / f"{name}.safetensors"))
        ours = {}
        for name in mods.state_dict():
            for key in official_candidates(name):
                if key in state:
                    ours[name] = state[key]
                    break
        mods.load_state_dict(ours, strict=False)
        del ours, state
        if dtype != "float32":
            mods = mods.to(getattr(torch, dtype))
        mods.init_buffers()
        mods.eval()
        AF2Tokenizer.from_dir(d / "lm")
    return {"wall_s": c.wall, "cpu_s": c.cpu, "model_bytes": model_bytes(mods),
            "baseline_rss": base.get("VmRSS", 0), **_peaks(s)}


def _load_whole_file(load_file, path: Path) -> dict:
    """`load_file` as the official code ran it: every tensor of the file read into memory.

    safetensors >= 0.8 serves `load_file` lazily from a memory map by default (only the tensors
    later copied get read); older versions, which the official code ran with, copied every tensor
    into process memory. `backend="pread"` restores that behaviour on new versions."""
    try:
        return load_file(str(path), backend="pread")
    except TypeError:  # safetensors < 0.8: no backend argument, and load_file copies anyway
        return load_file(str(path))


def _embedding_rows(d: Path, meta: dict) -> int:
    from safetensors import safe_open

    for name, keys in meta.items():
        if "lang_encoder.model.embed_tokens.weight" in keys:
            with safe_open(str(d / "safe_ckpt" / f"{name}.safetensors"), "pt") as h:
                return h.get_slice("lang_encoder.model.embed_tokens.weight").get_shape()[0]
    raise RuntimeError("no embedding in the checkpoint")


def _peaks(s: C.PeakSampler) -> dict:
    st = C.proc_status()
    return {"vm_hwm": st.get("VmHWM", 0), "rss_end": st.get("VmRSS", 0),
            "rss_anon_end": st.get("RssAnon", 0), "rss_file_end": st.get("RssFile", 0),
            **s.report()}


CHILDREN = {"ours": child_ours, "official": child_official}


# ---- parent ---------------------------------------------------------------------------------------

def warm_page_cache(d: Path) -> int:
    n = 0
    for f in sorted(d.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while block := fh.read(1 << 24):
                    n += len(block)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/fe-synth"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--remake", action="store_true", help="rewrite the synthetic checkpoint")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--verify", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--verify-cost", action="store_true",
                    help="measure verify=quick vs the default verify=full instead (load-verify.json)")
    args = ap.parse_args()

    if args.child:  # inside a fresh process: one load, one JSON line
        extra = (args.verify,) if args.child == "ours" else ()
        print(json.dumps(CHILDREN[args.child](str(args.dir), args.dtype, *extra)))
        return

    import make_synthetic_checkpoint as mk

    machine = C.machine_info()
    info_path = args.dir / "SYNTHETIC.json"
    if args.remake or not info_path.is_file():
        C.log(f"[load] writing a synthetic official-layout checkpoint to {args.dir}")
        info = mk.make(args.dir, args.layers, log=C.log)
    else:
        info = json.loads(info_path.read_text())
    C.log(f"[load] checkpoint: {info['safe_ckpt_bytes'] / 1e9:.2f} GB safe_ckpt in {info['chunks']} "
          f"chunks + {info['clap_ckpt_bytes'] / 1e9:.2f} GB AF-CLAP pickle")
    t0 = time.perf_counter()
    warmed = warm_page_cache(args.dir)
    C.log(f"[load] page cache warmed: {warmed / 1e9:.2f} GB read in {time.perf_counter() - t0:.1f} s")

    results: dict = {"checkpoint": info, "runs": {}}
    if args.verify_cost:
        verify_cost(args, results, machine)
        return
    for dtype in args.dtypes.split(","):
        for who in ("ours", "official"):
            r = C.run_child([str(Path(__file__).resolve()), "--child", who, "--dtype", dtype,
                             "--dir", str(args.dir)], timeout=1800)
            mb = r["model_bytes"]
            r["peak_over_model"] = r["vm_hwm"] / mb
            r["peak_anon_over_model"] = r["peak_rss_anon_sampled"] / mb
            r["peak_over_model_minus_baseline"] = (r["vm_hwm"] - r["baseline_rss"]) / mb
            results["runs"][f"{who}_{dtype}"] = r
            C.log(f"[load] {who:<8} {dtype:<8} {r['wall_s']:6.1f} s  peak RSS "
                  f"{C.gib(r['vm_hwm']):5.2f} GiB (anon {C.gib(r['peak_rss_anon_sampled']):5.2f}) "
                  f"= {r['peak_over_model']:.2f}x the {C.gib(mb):.2f} GiB model")
        o, f = results["runs"][f"ours_{dtype}"], results["runs"][f"official_{dtype}"]
        results[f"ratio_{dtype}"] = {
            "wall_official_over_ours": f["wall_s"] / o["wall_s"],
            "peak_official_over_ours": f["vm_hwm"] / o["vm_hwm"],
            "ours_meets_1_3x_goal": o["peak_over_model"] <= 1.3,
        }
    path = C.write_result("load", results, machine)
    C.log(f"[load] wrote {path}")


def verify_cost(args, results: dict, machine: dict) -> None:
    from edge.model.checkpoint import MANIFEST, write_manifest

    if not (args.dir / MANIFEST).is_file():
        t0 = time.perf_counter()
        write_manifest(args.dir)
        C.log(f"[load] manifest recorded in {time.perf_counter() - t0:.1f} s")
    results["hashed_bytes"] = sum(f.stat().st_size for f in args.dir.rglob("*") if f.is_file())
    for dtype in args.dtypes.split(","):
        for verify in ("quick", "full", "quick", "full"):  # interleaved, best of two each
            r = C.run_child([str(Path(__file__).resolve()), "--child", "ours", "--dtype", dtype,
                             "--verify", verify, "--dir", str(args.dir)], timeout=1800)
            key = f"{verify}_{dtype}"
            results["runs"].setdefault(key, []).append(r)
            C.log(f"[load] verify={verify:<5} {dtype:<8} {r['wall_s']:6.1f} s wall, {r['cpu_s']:6.1f} s CPU")
        q = min(r["wall_s"] for r in results["runs"][f"quick_{dtype}"])
        f = min(r["wall_s"] for r in results["runs"][f"full_{dtype}"])
        results[f"verify_{dtype}"] = {"quick_s": q, "full_s": f, "extra_s": f - q, "full_over_quick": f / q}
        C.log(f"[load] {dtype}: the hash check adds {f - q:.1f} s ({f / q:.2f}x)")
    path = C.write_result("load-verify", results, machine)
    C.log(f"[load] wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
