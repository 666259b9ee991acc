"""Decoder paths measured side by side (bench/bench_decoder_paths.py on CPUs, bench/gpu_check.py
on GPUs): eager reference loop vs static path (vs CUDA graph), tokens/s, bytes read per token and
that rate as a fraction of the measured memory read bandwidth.

Needs only torch and this repository (the GPU check runs on a bare CUDA box).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from edge.model import AF2, AF2Config, Sampling
from edge.model.config import TOKENS_PER_CLIP
from edge.model.decoder import CrossKV
from edge.model.quant import weight_bytes

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_LM = ROOT / "tests" / "fixtures" / "af2-tiny" / "checkpoint" / "lm"
SCORE_QUESTION = "Is the compressor knocking?"


def fixture_tokenizer():
    """The af2-tiny fixture's tokenizer (400 tokens, part of the checkout; needs only the
    `tokenizers` package of `pip install -e .`): its ids fit every released vocabulary, so a
    random-weight model can answer `AF2.score` on a real prompt. None where it is missing."""
    if not (FIXTURE_LM / "tokenizer.json").is_file():
        return None
    from edge.model.tokenizer import AF2Tokenizer

    return AF2Tokenizer.from_dir(FIXTURE_LM)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def read_bandwidth(device: torch.device, gib: float = 1.0, min_s: float = 1.0) -> float:
    """Bytes/s a large reduction reads (the memory-bandwidth bound of a decode step)."""
    n = int(gib * 2**30 / 4)
    x = torch.ones(n, dtype=torch.float32, device=device)
    x.sum()
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        x.sum()
        reps += 1
        sync(device)
        dt = time.perf_counter() - t0
        if dt >= min_s:
            break
    del x
    return reps * n * 4 / dt


def decoder_only_model(config: AF2Config, dtype: torch.dtype, device: str | torch.device,
                       quantize: str = "none", seed: int = 0) -> AF2:
    """Random weights at `config`; the encoder is dropped right away (not measured here)."""
    m = AF2.random(config, dtype, device=device, seed=seed, quantize=quantize)
    m.modules.encoder = None  # free ~1 GiB (float32) the decoder benchmark never uses
    return m


def bytes_per_token(m: AF2, memory_tokens: int) -> dict[str, int]:
    """What one decode step reads: every decoder weight once (tied embedding = output
    projection) plus every layer's cached cross K/V. The self-attention cache (a few MB) and
    the one embedding row are left out."""
    dec = m.modules.decoder
    xattn = sum(1 for layer in dec.layers if layer.gated_cross_attn_layer_sound is not None)
    x = m.config.xattn
    el = torch.finfo(m.dtype).bits // 8
    kv = 2 * xattn * x.heads * x.dim_head * memory_tokens * el
    w = weight_bytes(dec)
    return {"weights": w, "cross_kv": kv, "total": w + kv}


@torch.inference_mode()
def run_path(m: AF2, path: str, prompt: list[int], xkv: CrossKV, new_tokens: int) -> dict[str, Any]:
    """One greedy query (EOS disabled) on `path` in eager | static | graph, on cross K/V `xkv`."""
    s = Sampling(max_new_tokens=new_tokens)
    if path == "eager":
        ids, _, t = m.generate_eager(prompt, xkv, s, eos_id=-1)
    else:
        m.set_graphs(path == "graph")
        try:
            ids, _, t = m.generate(prompt, xkv, s, eos_id=-1)  # warm-up (allocation, capture)
            ids, _, t = m.generate(prompt, xkv, s, eos_id=-1)
        finally:
            m.set_graphs(False)
        if path == "graph" and not t.get("cuda_graph"):
            return {"path": path, "error": "CUDA graph capture failed (see the log)", "token_ids": ids}
    return {"path": path, "tokens_per_s": t["tokens_per_s"], "prefill_s": t["prefill_s"],
            "decode_s": t["decode_s"], "token_ids": ids}


@torch.inference_mode()
def score_yes_no(m: AF2, memory: torch.Tensor, mask: torch.Tensor, xkv: CrossKV) -> dict[str, Any]:
    """`AF2.score` of a yes/no question (the fixture tokenizer stands in for the real one on
    random weights) on the query's cross K/V: the probabilities, log-probabilities, coverage and
    time (prefill + options, synchronised; the cross K/V time is the query's)."""
    if m.tokenizer is None:
        m.tokenizer = fixture_tokenizer()
    if m.tokenizer is None:
        return {"error": f"no tokenizer (the fixture is missing: {FIXTURE_LM})"}
    sync(m.device)
    t0 = time.perf_counter()
    s = m.score(memory, mask, SCORE_QUESTION, ["yes", "no"], xkv=xkv)
    sync(m.device)
    return {"question": SCORE_QUESTION, "probs": s.probs, "logprobs": s.logprobs,
            "coverage": s.coverage, "prompt_tokens": len(s.prompt_ids),
            "seconds": time.perf_counter() - t0, "timings": s.timings}


def measure(m: AF2, paths: list[str], windows: int, prompt_len: int, new_tokens: int,
            bandwidth: float, seed: int = 1, score: bool = True) -> dict[str, Any]:
    """Every path on the same random memory and prompt; ids compared with the first path.
    `score`: also `score_yes_no` on the same memory."""
    cfg = m.config
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(windows * TOKENS_PER_CLIP, cfg.audio_dim, generator=g).to(m.device, m.dtype)
    mask = torch.ones(windows)
    prompt = torch.randint(0, cfg.lm.vocab_size, (prompt_len,), generator=g).tolist()
    nbytes = bytes_per_token(m, memory.shape[0])
    out: dict[str, Any] = {"bytes_per_token": nbytes, "prompt": prompt, "paths": {}}
    if m.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(m.device)
    sync(m.device)
    t0 = time.perf_counter()
    xkv = m.cross_kv(memory, mask)  # once per query, shared by the paths and the score
    sync(m.device)
    t_kv = time.perf_counter() - t0
    out["cross_kv_s"] = t_kv
    ref = None
    for p in paths:
        r = run_path(m, p, prompt, xkv, new_tokens)
        r["cross_kv_s"] = t_kv
        if "tokens_per_s" in r:
            gbs = r["tokens_per_s"] * nbytes["total"]
            r["achieved_gb_s"] = gbs / 1e9
            r["fraction_of_bandwidth"] = gbs / bandwidth
        if ref is None:
            ref = r["token_ids"]
        r["same_ids_as_" + paths[0]] = r["token_ids"] == ref
        out["paths"][p] = r
    if score:
        out["score"] = score_yes_no(m, memory, mask, xkv)
    if m.device.type == "cuda":
        out["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(m.device)
    return out
