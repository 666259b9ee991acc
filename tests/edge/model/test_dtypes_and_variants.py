"""Half-precision loads run end to end; checkpoints of other dims load through the same code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from edge.model import Sampling

from edge.model import AF2, AF2Config
from edge.model.checkpoint import write_official
from edge.model.config import AudioTransformerDims, HTSATDims, LMDims, XAttnDims


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype, bound", [(torch.float16, 1e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_runs_end_to_end(fixture_dir, expected, fixture_info, dtype, bound):
    """Measured deviations from float32 are documented in docs/PERFORMANCE.md (precision)."""
    m = AF2.load(fixture_dir / "checkpoint", dtype=dtype)
    assert m.modules.decoder.embed_tokens.weight.dtype == dtype
    assert m.modules.encoder.mel.basis.dtype == torch.float32  # front end stays float32
    tokens = m.encode(expected["clips"])
    assert tokens.dtype == dtype and torch.isfinite(tokens).all()
    mem = m.memory(tokens, torch.ones(3))
    assert rel_err(mem, expected["audio_memory"]) < bound
    logits = m.logits(mem, torch.ones(3), expected["prompt_ids"])
    assert logits.dtype == torch.float32
    assert rel_err(logits, expected["prompt_logits"]) < bound
    ans = m.ask(mem, torch.ones(3), fixture_info["question"], Sampling(max_new_tokens=8))
    assert len(ans.token_ids) == 8


def variant_config() -> AF2Config:
    """Other dims than the fixture: wider/narrower, different heads, cross-attention every 2nd
    layer, 3 decoder layers with GQA 4:1."""
    return AF2Config(
        htsat=HTSATDims(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(2, 2, 4, 4)),
        audio_transformer=AudioTransformerDims(n_head=2, n_layers=2, d_inner=96),
        xattn=XAttnDims(heads=4, dim_head=16, ff_mult=2, every_n_layers=2),
        lm=LMDims(vocab_size=404, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, rope_theta=10000.0,
                  max_position_embeddings=512),
    )


@pytest.fixture(scope="module")
def variant(tmp_path_factory, fixture_dir):
    """A random model of other dims, written in the official layout (duplicates and pickle)."""
    from edge.model.tokenizer import AF2Tokenizer

    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    ref = AF2.random(variant_config(), seed=3, tokenizer=tok)
    d = write_official(ref, tmp_path_factory.mktemp("variant") / "ckpt",
                       fixture_dir / "checkpoint" / "lm", n_chunks=3)
    # 45 s of audio: 5 windows, the last one partly padding
    rng = np.random.default_rng(0)
    t = np.arange(45 * 16000) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    audio = d.parent / "long.wav"
    sf.write(audio, wav.astype(np.float32), 16000)
    return ref, d, audio


def test_variant_dims_load_and_match_the_reference(variant):
    ref, d, audio = variant
    m = AF2.load(d)
    assert m.config == ref.config
    clips, mask = m.prepare_file(audio, max_windows=30)
    assert clips.shape == (5, 160000)
    tokens = m.encode(clips)
    assert tokens.shape == (5, 64, 16 * 8)
    assert torch.equal(tokens, ref.encode(clips))
    mem = m.memory(tokens, mask)
    assert torch.equal(mem, ref.memory(ref.encode(clips), mask))
    q = "Is there a hum in the background?"
    a = m.ask(mem, mask, q, Sampling(max_new_tokens=10))
    assert a.token_ids == ref.ask(mem, mask, q, Sampling(max_new_tokens=10)).token_ids
    full = a.prompt_ids + a.token_ids
    lg = m.logits(mem, mask, full)
    assert lg[len(a.prompt_ids) - 1 : -1].argmax(-1).tolist() == a.token_ids[: len(full) - len(a.prompt_ids)]


def test_variant_max_windows_limits_what_is_read(variant):
    _, _d, audio = variant
    clips, mask = AF2.prepare_file(audio, max_windows=2)
    assert clips.shape == (2, 160000) and mask.tolist() == [1.0, 1.0]


def test_variant_through_the_cli(variant):
    ref, d, audio = variant
    from tests.conftest import run_cli

    out = run_cli("ask", "--model", str(d), str(audio), "Is there a hum?", "--max-new-tokens", "6",
                  "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    clips, mask = ref.prepare_file(audio)
    mem = ref.memory(ref.encode(clips), mask)
    want = ref.ask(mem, mask, "Is there a hum?", Sampling(max_new_tokens=6))
    assert res["token_ids"] == want.token_ids and res["prompt_ids"] == want.prompt_ids
    assert res["windows"] == 5 and res["answer"] == want.text
