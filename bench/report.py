"""Print the tables of docs/PERFORMANCE.md from bench/results/*.json (markdown on stdout).

    python bench/report.py [--threads 1]      # results/<bench>-t1.json; default: <bench>.json

Paste the output over the matching tables when the benchmarks are rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _machine(d: dict) -> str:
    m = d["machine"]
    return (f"*{m['cpu_model']}, {m['usable_cpus']} CPUs, torch {m['torch']}, "
            f"{m['torch_threads']} thread(s), {m['date']}, commit {m['git_commit']}, load average "
            f"{m['loadavg_at_start'][0]:.1f} -> {m['loadavg_at_end'][0]:.1f}*")


def encoder(d: dict) -> str:
    r = d["results"]
    rows = [("| dtype | path | s/clip (wall) | CPU s/clip | GFLOP/s (121.4 GFLOP/clip) | "
             "of this CPU's matmul rate |"), "|---|---|---|---|---|---|"]
    labels = {"batch1": "batch 1: `encode(1 clip)`", "batch3_api": "batch 3: `encode(3 clips)`",
              "batch3_raw": "batch 3: encoder module, B=3"}
    for name, x in r["dtypes"].items():
        peak = r["matmul_peak_gflops"][name]
        for key, label in labels.items():
            run = x["runs"][key]
            rows.append(f"| {name} | {label} | {run['s_per_clip']:.3f} | {run['cpu_s_per_clip']:.3f} "
                        f"| {run['achieved_gflops']:.0f} | {100 * run['fraction_of_matmul_peak']:.0f}% "
                        f"of {peak:.0f} GFLOP/s |")
    extra = []
    for name, x in r["dtypes"].items():
        extra.append(f"{name}: batching 3 clips in one module call is "
                     f"{x['speedup_batch3_raw_vs_api']:.2f}x the per-clip API (relative difference "
                     f"of the tokens {x['batch3_raw_vs_api_rel_err']:.1e}); FlopCounterMode counts "
                     f"{x['flop_counter_gflop_per_clip']:.1f} GFLOP per clip"
                     + (f"; note: {'; '.join(x['notes'])}" if x["notes"] else ""))
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {e}" for e in extra) + "\n\n" + _machine(d)


def decoder(d: dict) -> str:
    r = d["results"]
    rows = [("| dtype | cross K/V cached (ours) | recomputed each step (official) | speedup, wall | "
             "median step, cached / recomputed | speedup, CPU time per step | same ids |"),
            "|---|---|---|---|---|---|---|"]
    for name, x in r["dtypes"].items():
        ms = x["median_step_s"]
        rows.append(
            f"| {name} | {x['cached']['tokens_per_s']:.2f} tok/s | {x['recomputed']['tokens_per_s']:.2f} "
            f"tok/s | **{x['speedup']:.1f}x** | {1e3 * ms['cached']:.0f} / {1e3 * ms['recomputed']:.0f} ms "
            f"| {x['speedup_median_step_cpu']:.1f}x | {'yes' if x['same_token_ids'] else 'NO'} |")
    x = next(iter(r["dtypes"].values()))
    return ("\n".join(rows) + f"\n\n{r['release']} LM dims ({x['decoder_params'] / 1e6:.0f} M "
            f"decoder parameters with the cross-attention blocks), memory {x['memory_tokens']} tokens "
            f"({r['windows']} windows), prompt {x['prompt_tokens']} tokens, {x['new_tokens']} greedy "
            f"tokens; recomputing the cross K/V costs {x['cross_kv_gflop_per_forward']:.0f} GFLOP per "
            f"forward pass.\n\n" + _machine(d))


def query(d: dict) -> str:
    r = d["results"]
    rows = [("| dtype | official: encode 30 clips + audio transformer + generate (recomputed K/V) | "
             "ours: audio transformer + cross K/V + cached generate | speedup, wall | speedup, CPU time "
             "| same ids |"), "|---|---|---|---|---|---|"]
    for name, x in r["dtypes"].items():
        o, u = x["official"], x["ours"]
        rows.append(
            f"| {name} | {o['total_s']:.1f} s ({o['encode_s']:.1f} + {o['audio_transformer_s']:.2f} + "
            f"{o['generate_s']:.1f}) | {u['total_s']:.2f} s ({u['audio_transformer_s']:.2f} + "
            f"{u['cross_kv_s']:.2f} + {u['generate_s'] - u['cross_kv_s']:.2f}) | **{x['speedup']:.1f}x** "
            f"| {x['speedup_cpu_time']:.1f}x | {'yes' if x['same_token_ids'] else 'NO'} |")
    x = next(iter(r["dtypes"].values()))
    return ("\n".join(rows) + f"\n\n{x['windows']} windows, prompt {x['prompt_tokens']} tokens, "
            f"{x['new_tokens']} greedy tokens.\n\n" + _machine(d))


def load(d: dict) -> str:
    r = d["results"]
    c = r["checkpoint"]
    rows = [("| loader | dtype | wall | peak RSS (VmHWM) | peak anonymous RSS | model | peak / model "
             "| (peak - interpreter) / model | goal <= 1.3x |"), "|---|---|---|---|---|---|---|---|---|"]
    names = {"ours": "`AF2.load` (streamed, mmap)",
             "official": "official: every chunk into memory"}
    gib = 2**30
    for key, x in r["runs"].items():
        who, dtype = key.rsplit("_", 1)
        ok = "yes" if x["peak_over_model"] <= 1.3 else "no"
        rows.append(f"| {names.get(who, who)} | {dtype} | {x['wall_s']:.1f} s | "
                    f"{x['vm_hwm'] / gib:.2f} GiB | {x['peak_rss_anon_sampled'] / gib:.2f} GiB | "
                    f"{x['model_bytes'] / gib:.2f} GiB | {x['peak_over_model']:.2f}x | "
                    f"{x['peak_over_model_minus_baseline']:.2f}x | {ok} |")
    return ("\n".join(rows) + f"\n\nSynthetic checkpoint in the official layout: 0.5B keys with "
            f"{c['layers']} LM layers, {c['keys']} tensors, {c['safe_ckpt_bytes'] / 1e9:.2f} GB of "
            f"safe_ckpt in {c['chunks']} chunks + {c['clap_ckpt_bytes'] / 1e9:.2f} GB AF-CLAP pickle; "
            f"page cache warm. Peak RSS includes the interpreter (~{r['runs']['ours_float32']['baseline_rss'] / gib:.2f} "
            f"GiB before loading).\n\n" + _machine(d))


def score(d: dict) -> str:
    """bench_score.py: one scored monitor over 5 minutes vs text16 and the official approach,
    where the scored path's time goes, and N streams due at once."""
    out: list[str] = []
    for name, x in d["results"]["dtypes"].items():
        b, off, kv = x["scored_breakdown"], x["official"], x["scored_materialised_kv"]
        out.append(f"**{name}**\n")
        out.append("| path | time from due to answer (wall) | CPU s | scored is faster by |")
        out.append("|---|---|---|---|")
        out.append(f"| scored (worker path: folded cross-attention) | {x['scored']['wall_s']:.2f} s "
                   f"| {x['scored']['cpu_s']:.2f} | |")
        out.append(f"| scored, cross K/V materialised | {kv['wall_s']:.2f} s | {kv['cpu_s']:.2f} "
                   f"| {kv['wall_s'] / x['scored']['wall_s']:.1f}x |")
        out.append(f"| text, 16 tokens | {x['text16']['wall_s']:.2f} s | {x['text16']['cpu_s']:.2f} "
                   f"| {x['speedup_vs_text16']:.1f}x |")
        out.append(f"| official (re-encode 30 clips {off['includes_encode_s']:.1f} s + recompute K/V "
                   f"every step) | {off['wall_s']:.1f} s | {off['cpu_s']:.1f} "
                   f"| **{x['speedup_vs_official']:.1f}x** ({x['speedup_vs_official_cpu']:.1f}x CPU "
                   f"time; {x['speedup_vs_official_without_encode']:.1f}x without the re-encode) |")
        out.append("")
        out.append(f"Scored path, best of runs: audio transformer {b['audio_transformer_s']:.2f} s, then "
                   f"either cross K/V {b['cross_kv_s']:.2f} s + prefill {b['prefill_s']:.2f} s "
                   f"(materialised) or the folded prefill {b['folded_prefill_s']:.2f} s; folded vs "
                   f"generated-path log-probs max |diff| {x['folded_max_abs_logprob_diff']:.1e}.")
        out.append("")
        out.append("| streams due at once | one at a time | batched | answers/s one at a time "
                   "| answers/s batched | speedup | max abs logprob diff |")
        out.append("|---|---|---|---|---|---|---|")
        for n, t in x["throughput"].items():
            out.append(f"| {n} | {t['one_at_a_time_s']:.2f} s | {t['batched_s']:.2f} s | "
                       f"{t['answers_per_s_one_at_a_time']:.2f} | {t['answers_per_s_batched']:.2f} | "
                       f"{t['batched_speedup']:.2f}x | {t['max_abs_logprob_diff']:.1e} |")
        c = x["capacity_model"]
        out.append("")
        out.append(f"Capacity estimate: {c['max_realtime_streams']} real-time streams "
                   f"({c['busy_s_per_stream_per_min']:.1f} busy s per stream and minute: 6 clips x "
                   f"{c['per_clip_encode_s']:.2f} s + one scored query {c['scored_query_s']:.2f} s).")
        out.append("")
    out.append(_machine(d))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    sfx = f"-t{args.threads}" if args.threads else ""
    for title, name, fn in (("Encoder", "encoder" + sfx, encoder), ("Decoder", "decoder" + sfx, decoder),
                            ("Query", "query" + sfx, query), ("Load", "load", load),
                            ("Scored monitor, float32", "score-f32" + sfx, score),
                            ("Scored monitor, bfloat16", "score-bf16" + sfx, score)):
        d = _load(name)
        print(f"### {title} ({name}.json)\n")
        print(fn(d) if d else "(no results)")
        print()


if __name__ == "__main__":
    main()
