"""Scored yes/no monitor over 5 minutes of audio: time from "monitor due" to the answer.

    python bench/bench_score.py [--dtypes float32,bfloat16] [--streams 1,4,16]

Random weights at the released encoder + 0.5B LM dims (vocab 151669), 30 clips of 10 s, a
15-token prompt, options yes/Yes/no/No (one token each with the Qwen2.5 tokenizer). Three
ways to get the answer, measured side by side in one process (so the ratios hold even on a
shared machine):

  * scored     this project: the clips were encoded as they streamed in; audio transformer
               over the stored tokens, cross K/V once, one prefill (`AF2.score_ids`);
  * text16     the generated-text path the daemon used before: same memory and cross K/V, then
               16 greedy tokens through the KV cache (EOS disabled);
  * official   the official approach: re-encode the 30 clips (timed on --encode-clips clips in
               this run and scaled to 30: `AF2.encode` runs one forward pass per clip, so the
               cost is linear in the clips), audio transformer, then 16 greedy tokens with
               every layer's cross K/V recomputed at every forward pass.

The scored path is also broken down (audio transformer / cross K/V / prefill), to show where its
time goes. Then throughput of scored monitors with 1/4/16 streams due at once (each stream has
its own memory and cross K/V), the way the worker runs them (`edge.answering.answer_memories`):
all rows as one `AF2.score_ids_rows` per `max_batch` (8) rows, memories padded and masked, vs
one stream at a time; and a capacity estimate:
how many real-time streams (6 clips/min to encode + one scored 5-min monitor/min) fit in one
CPU-second per second, from the measured per-clip encode and per-query costs. Writes
bench/results/score.json.
"""

from __future__ import annotations

import argparse
import time

import _common as C  # puts the repo on sys.path
import torch
from bench_decoder import PROMPT_LEN, WINDOWS, official_generate
from bench_query import released_setup

from edge.model.af2 import Sampling

NEW_TOKENS = 16


def best(fn, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        runs.append({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
    b = min(runs, key=lambda r: r["wall_s"])
    return {"runs": runs, "wall_s": b["wall_s"], "cpu_s": min(r["cpu_s"] for r in runs), "out": out}


def bench_dtype(dtype: torch.dtype, streams: list[int], repeats: int, encode_clips: int,
                save=lambda partial: None) -> dict:
    name = str(dtype).replace("torch.", "")
    cfg, m, notes, g, clips, mask, prompt = released_setup(dtype, "score")
    options = [[int(t)] for t in torch.randint(0, cfg.lm.vocab_size, (4,), generator=g)]

    m.encode(clips[:1])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    part = m.encode(clips[:encode_clips])
    scale = WINDOWS / encode_clips
    encode_s, encode_cpu_s = (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale
    # the other clips' tokens only feed the memory: copies of the encoded ones serve as well
    tokens = part.repeat((WINDOWS + encode_clips - 1) // encode_clips, 1, 1)[:WINDOWS]
    tokens = tokens + 0.01 * torch.randn(tokens.shape, generator=g).to(tokens.dtype)
    C.log(f"[score] {name} encode {encode_clips} clips x {scale:.0f} = {encode_s:.1f} s")

    def scored():  # what the worker does for a memory asked a few scored questions
        memory = m.memory(tokens, mask)
        return m.score_ids_rows([(m.cross_memory(memory, mask), prompt, options)])[0][0]

    def scored_kv():  # the same with the cross K/V materialised (as before the folding)
        memory = m.memory(tokens, mask)
        xkv = m.cross_kv(memory, mask)
        return m.score_ids(prompt, options, xkv)[0]

    def text16(n=NEW_TOKENS):
        memory = m.memory(tokens, mask)
        xkv = m.cross_kv(memory, mask)
        return m.generate(prompt, xkv, Sampling(max_new_tokens=n), eos_id=-1)[0]

    def official_after_encode():
        # the official approach re-encodes the 30 clips first: that time (encode_s, measured
        # above in this run) is added below instead of encoding a second time
        memory = m.memory(tokens, mask)
        return official_generate(m, prompt, memory, mask, NEW_TOKENS)[0]

    scored(), text16(2)  # warm-up
    parts = []
    for _ in range(repeats):  # where the scored path's time goes
        t0 = time.perf_counter()
        memory = m.memory(tokens, mask)
        t1 = time.perf_counter()
        xkv = m.cross_kv(memory, mask)
        t2 = time.perf_counter()
        m.score_ids(prompt, options, xkv)
        t3 = time.perf_counter()
        m.score_ids_rows([(m.cross_memory(memory, mask), prompt, options)])
        t4 = time.perf_counter()
        parts.append({"audio_transformer_s": t1 - t0, "cross_kv_s": t2 - t1, "prefill_s": t3 - t2,
                      "folded_prefill_s": t4 - t3})
    breakdown = {k: min(p[k] for p in parts) for k in parts[0]}
    C.log(f"[score] {name} scored breakdown " + ", ".join(f"{k} {v:.2f}" for k, v in breakdown.items()))
    r_scored = best(scored, repeats)
    C.log(f"[score] {name} scored   {r_scored['wall_s']:.2f} s")
    r_scored_kv = best(scored_kv, repeats)
    C.log(f"[score] {name} scored with materialised K/V {r_scored_kv['wall_s']:.2f} s")
    r_text = best(text16, repeats)
    C.log(f"[score] {name} text16   {r_text['wall_s']:.2f} s")
    r_off = best(official_after_encode, 1)
    r_off["wall_s"] += encode_s
    r_off["cpu_s"] += encode_cpu_s
    r_off["includes_encode_s"] = encode_s
    C.log(f"[score] {name} official {r_off['wall_s']:.1f} s")
    if r_text["out"] != r_off["out"]:
        raise AssertionError("text16 and official generated different ids")
    # the scored first-token log-probabilities are the generated path's first logits
    memory = m.memory(tokens, mask)
    xkv = m.cross_kv(memory, mask)
    dec = m.modules.decoder
    with torch.inference_mode():
        dec.setup_cache(1, PROMPT_LEN)
        first = dec(torch.tensor([prompt]), xkv, input_pos=torch.arange(PROMPT_LEN), last_only=True)[0, -1]
    want = first.log_softmax(-1)[[o[0] for o in options]].double()
    # the materialised path runs the generated path's very operations; the folded one reorders
    # the cross-attention sums (float rounding), recorded below
    f32 = dtype == torch.float32
    folded_diff = float((r_scored["out"] - want).abs().max())
    for r, tol in ((r_scored_kv, 1e-5 if f32 else 1e-3), (r_scored, 1e-4 if f32 else 0.1)):
        if not torch.allclose(r["out"], want, atol=tol):
            raise AssertionError("scored log-probabilities differ from the generated path's logits: "
                                 f"{(r['out'] - want).abs().max():.2e}")

    # throughput: N streams due at once, each with its own 5-min memory
    per_clip_encode_s = encode_s / WINDOWS
    thr: dict[int, dict] = {}
    out = {
        "dtype": name, "notes": notes, "windows": WINDOWS, "prompt_tokens": PROMPT_LEN,
        "options": 4, "new_tokens_generated_paths": NEW_TOKENS,
        "encode_30_clips_s": encode_s, "encode_clips_timed": encode_clips,
        "scored": {k: v for k, v in r_scored.items() if k != "out"},
        "scored_breakdown": breakdown, "folded_max_abs_logprob_diff": folded_diff,
        "scored_materialised_kv": {k: v for k, v in r_scored_kv.items() if k != "out"},
        "text16": {k: v for k, v in r_text.items() if k != "out"},
        "official": {k: v for k, v in r_off.items() if k != "out"},
        "speedup_vs_official": r_off["wall_s"] / r_scored["wall_s"],
        "speedup_vs_official_without_encode": (r_off["wall_s"] - encode_s) / r_scored["wall_s"],
        "speedup_vs_text16": r_text["wall_s"] / r_scored["wall_s"],
        "speedup_vs_official_cpu": r_off["cpu_s"] / r_scored["cpu_s"],
        "throughput": thr,  # filled below, one entry per stream count, saved after each
        "complete": False,
    }
    save(out)  # a run stopped during the (long) throughput steps keeps what it measured
    # each stream its own memory; some streams started recently (shorter memories, padded)
    lengths = [WINDOWS if i % 4 else WINDOWS - 3 * (i // 4 + 1) for i in range(max(streams))]
    toks = [tokens.roll(i, 0)[:L] for i, L in zip(range(max(streams)), lengths)]
    for n in streams:

        def one_at_a_time(n=n):
            out = []
            for t in toks[:n]:
                mk = torch.ones(t.shape[0])
                mem = m.memory(t, mk)
                out.append(m.score_ids_rows([(m.cross_memory(mem, mk), prompt, options)])[0][0])
            return out

        def batched(n=n):
            rows = []
            for t in toks[:n]:
                mk = torch.ones(t.shape[0])
                rows.append((m.cross_memory(m.memory(t, mk), mk), prompt, options))
            out = []
            for c in range(0, n, m.max_batch):
                out += [lp for lp, _ in m.score_ids_rows(rows[c : c + m.max_batch])]
            return out

        a = best(one_at_a_time, 1)
        b = best(batched, 1)
        worst = max(float((x - y).abs().max()) for x, y in zip(a["out"], b["out"]))
        thr[n] = {"one_at_a_time_s": a["wall_s"], "batched_s": b["wall_s"],
                  "answers_per_s_one_at_a_time": n / a["wall_s"], "answers_per_s_batched": n / b["wall_s"],
                  "batched_speedup": a["wall_s"] / b["wall_s"], "max_abs_logprob_diff": worst}
        C.log(f"[score] {name} {n:2d} streams: one at a time {a['wall_s']:.2f} s, batched "
              f"{b['wall_s']:.2f} s ({thr[n]['batched_speedup']:.2f}x), max |diff| {worst:.1e}")
        save(out)
    query_s = r_scored["wall_s"]
    # per stream and minute: 6 clips encoded + 1 scored query over its 5-min memory
    load_per_stream = 6 * per_clip_encode_s + query_s
    out["complete"] = True
    out.update({
        "capacity_model": {
            "per_clip_encode_s": per_clip_encode_s, "scored_query_s": query_s,
            "busy_s_per_stream_per_min": load_per_stream,
            "max_realtime_streams": int(60 // load_per_stream),
            "how": "floor(60 s / (6 clips x encode time per clip + one scored query)), from the "
                   "costs measured above in this run; not a soak run",
        },
    })
    return out  # the model is freed when this frame goes (bench_dtype runs once per dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of scored/text16 (best kept); official runs once")
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--encode-clips", type=int, default=3,
                    help="clips actually encoded for the official path's re-encode (scaled to 30)")
    ap.add_argument("--name", default="score", help="result file bench/results/<name>.json")
    C.add_model_args(ap)
    args = ap.parse_args()
    C.apply_threads(args)
    machine = C.machine_info()
    streams = [int(x) for x in args.streams.split(",")]
    results = {"release": "0.5B", "dtypes": {}}
    for name in args.dtypes.split(","):
        def save(partial, name=name):  # after each step: a stopped run keeps what it measured
            C.write_result(C.result_name(args.name, args.threads),
                           {**results, "dtypes": {**results["dtypes"], name: partial}}, machine)

        r = bench_dtype(getattr(torch, name), streams, args.repeats, args.encode_clips, save)
        C.log(f"[score] {name}: scored {r['scored']['wall_s']:.2f} s, text16 {r['text16']['wall_s']:.2f} s, "
              f"official {r['official']['wall_s']:.1f} s -> {r['speedup_vs_official']:.1f}x vs official, "
              f"{r['speedup_vs_text16']:.1f}x vs text16; capacity {r['capacity_model']['max_realtime_streams']} streams")
        results["dtypes"][name] = r
    path = C.write_result(C.result_name(args.name, args.threads), results, machine)
    C.log(f"[score] wrote {path}")


if __name__ == "__main__":
    main()
