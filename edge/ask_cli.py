"""`flamingo-edge ask`: one question about one audio file, with the official preparation."""

from __future__ import annotations

import json
import sys
import time

import click

DTYPE_CHOICES = ["float32", "float16", "bfloat16"]


@click.command("ask")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="AF2 checkpoint directory (official or compact layout).")
@click.argument("audio_file", type=click.Path(dir_okay=False))
@click.argument("question")
@click.option("--max-windows", default=30, show_default=True, type=click.IntRange(1, 128),
              help="At most this many 10-s windows are read (30 = 5 minutes).")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1, 4096),
              help="Most tokens of the answer.")
@click.option("--greedy", "greedy", is_flag=True, default=False,
              help="Greedy decoding (the default unless --top-k/--top-p/--seed is given).")
@click.option("--top-k", type=click.IntRange(1), default=None, show_default="all tokens",
              help="Sample from the k most likely.")
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              show_default="off", help="Nucleus sampling threshold.")
@click.option("--seed", type=int, default=None, show_default="random",
              help="Seed for sampling (reproducible answers).")
@click.option("--temperature", type=click.FloatRange(0.0, min_open=True), default=1.0,
              show_default=True, help="Sampling temperature.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="float32", show_default=True,
              help="dtype the model is loaded and run in.")
@click.option("--quantize", type=click.Choice(["none", "int8", "int4"]), default="none",
              show_default=True, help="Weight-only quantization of the decoder (docs/PERFORMANCE.md).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ask(model_dir, audio_file, question, max_windows, max_new_tokens, greedy, top_k, top_p, seed,
        temperature, dtype, quantize, device, as_json):
    """Answer QUESTION about AUDIO_FILE with Audio Flamingo 2."""
    sampling = top_k is not None or top_p is not None or seed is not None
    if greedy and sampling:
        raise click.UsageError("--greedy cannot be combined with --top-k/--top-p/--seed")
    import torch  # noqa: F401  (heavy: imported only when the command runs)

    from edge.model import AF2, CheckpointError, Sampling

    timings: dict[str, float] = {}
    t = time.perf_counter()
    try:
        m = AF2.load(model_dir, dtype=dtype, device=device, quantize=quantize)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        clips, mask = m.prepare_file(audio_file, max_windows=max_windows)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    timings["prepare_s"] = time.perf_counter() - t
    t = time.perf_counter()
    tokens = m.encode(clips)
    timings["encode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    memory = m.memory(tokens, mask)
    timings["memory_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ans = m.ask(memory, mask, question, Sampling(max_new_tokens=max_new_tokens, greedy=not sampling,
                                                 top_k=top_k, top_p=top_p,
                                                 temperature=temperature, seed=seed))
    timings["generate_s"] = time.perf_counter() - t
    timings.update({k: v for k, v in ans.timings.items()})
    if as_json:
        out = {
            "answer": ans.text,
            "token_ids": ans.token_ids,
            "prompt_ids": ans.prompt_ids,
            "windows": int(clips.shape[0]),
            "finished": ans.finished,
            "model_id": m.model_id,
            "timings": {k: round(v, 6) for k, v in timings.items()},
        }
        click.echo(json.dumps(out, ensure_ascii=False))
    else:
        click.echo(ans.text)
        stages = ("load_s", "prepare_s", "encode_s", "memory_s", "generate_s")
        total = sum(timings[k] for k in stages)
        click.echo(f"[{clips.shape[0]} window(s), {len(ans.token_ids)} tokens, {total:.2f} s]",
                   err=True)
    sys.stdout.flush()
