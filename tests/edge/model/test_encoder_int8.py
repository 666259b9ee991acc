"""`model.encoder.quantize: int8`: the torch encoder's linear layers in dynamic int8 on CPUs, used
only where a measurement says it is faster; its deviation from float32 on the encoder tokens and
on what a monitor reads from them (`AF2.score`), on the fixture and at released encoder dims."""

from __future__ import annotations

import logging

import pytest
import torch

from edge import encoder_backends as eb
from edge.model import quant

QUESTIONS = ["Is the compressor knocking?", "What sound is this? Is anything abnormal?"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture
def measured(monkeypatch):
    """Pin the start-up measurement (this CPU's own number is checked in the last test)."""
    def pin(x: float) -> None:
        monkeypatch.setattr(quant, "encoder_int8_speedup", lambda *a, **k: x)
    return pin


def dynamic_linears(enc: torch.nn.Module) -> tuple[int, int]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    kinds = [type(m) for m in enc.modules()]
    return kinds.count(DynamicLinear), kinds.count(torch.nn.Linear)


def test_int8_encoder_on_the_fixture_deviates_within_bounds_and_keeps_the_score(af2, expected, measured):
    measured(2.0)
    f32 = eb.TorchBackend(af2, "cpu", "float32")
    q = eb.TorchBackend(af2, "cpu", "float32", quantize="int8")
    assert q.quantize == "int8" and "int8" in q.describe() and "using it" in q.quantize_reason
    assert dynamic_linears(q.encoder) == (sum(isinstance(m, torch.nn.Linear)
                                              for m in af2.modules.encoder.modules()), 0)
    clips = expected["clips"]
    t32, t8 = f32.encode(clips), q.encode(clips)
    assert t8.dtype == torch.float32 and t8.shape == t32.shape
    # each clip runs alone (its activations quantized with its own scale): a clip's tokens do
    # not depend on what it is batched with, as the streaming memory requires
    assert torch.equal(torch.cat([q.encode(clips[i:i + 1]) for i in range(len(clips))]), t8)
    assert 1e-3 < rel(t8, t32) < 0.05  # measured 0.029 (really quantized, not too far)
    mask = torch.ones(len(clips))
    m32, m8 = af2.memory(t32, mask), af2.memory(t8, mask)
    assert rel(m8, m32) < 0.05  # measured 0.027
    for question in QUESTIONS:
        a = af2.score(m32, mask, question, ["yes", "no"])
        b = af2.score(m8, mask, question, ["yes", "no"])
        assert abs(a.probs["yes"] - b.probs["yes"]) < 0.02  # measured 0.0035
        assert max(abs(a.logprobs[o] - b.logprobs[o]) for o in a.options) < 0.3  # measured 0.11
    # the model's own encoder is untouched (AF2.encode stays float32)
    assert dynamic_linears(af2.modules.encoder)[0] == 0


def test_int8_is_not_used_where_it_measures_slower(af2, expected, measured, caplog):
    measured(0.9)
    with caplog.at_level(logging.WARNING, logger="edge.encoder_backends"):
        b = eb.TorchBackend(af2, "cpu", "float32", quantize="int8")
    assert b.quantize == "none" and b.describe() == "torch cpu float32"
    assert "0.90x" in b.quantize_reason and "keeping float32" in b.quantize_reason
    from tests.conftest import log_events

    [e] = log_events(caplog.records, "encoder int8")
    assert e["used"] is False and "keeping float32" in e["reason"]
    assert torch.equal(b.encode(expected["clips"][:1]), af2.encode(expected["clips"][:1]))
    with pytest.raises(ValueError, match="int8"):
        eb.TorchBackend(af2, "cpu", "float32", quantize="int4")


def test_config_selects_it_and_other_backends_say_they_ignore_it(af2, measured, caplog, tmp_path):
    from edge.config import ConfigError, load_settings

    s = load_settings(data={"model": {"encoder": {"quantize": "int8"}}})
    assert s.model.encoder.quantize == "int8" and load_settings(data={}).model.encoder.quantize == "none"
    with pytest.raises(ConfigError, match="quantize"):
        load_settings(data={"model": {"encoder": {"quantize": "int4"}}})
    measured(2.0)
    env = eb.Environment(cuda=False, tensorrt="no tensorrt", onnxruntime=True, onnx=True,
                         ort_providers=("CPUExecutionProvider",))
    assert eb.make_backend("torch", af2, device="cpu", env=env, quantize="int8").quantize == "int8"
    with caplog.at_level(logging.WARNING, logger="edge.encoder_backends"):
        b = eb.make_backend("onnxruntime", af2, device="cpu", env=env, quantize="int8",
                            cache_dir=tmp_path)
    assert b.kind == "onnxruntime"
    from tests.conftest import log_events

    [e] = log_events(caplog.records, "encoder quantize ignored")
    assert e["quantize"] == "int8" and "applies to the torch backend" in e["reason"]


def test_int8_at_released_encoder_widths_deviates_within_bounds():
    """Random weights at the released HTS-AT widths (embed 256 -> 2048, heads 4-32) with 2
    blocks per stage instead of 2/2/12/2 (a fast test; bench/bench_encoder_int8.py measures the
    full depth), one clip of noise, and the effect on a score read through the memory (random
    tiny LM)."""
    from edge.model import AF2
    from edge.model.config import AF2Config, HTSATDims, LMDims

    lm = LMDims(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2)
    m = AF2.random(AF2Config(htsat=HTSATDims(depths=(2, 2, 2, 2))).with_lm(lm), seed=0)
    f32 = eb.TorchBackend(m, "cpu", "float32")
    q = eb.TorchBackend(m, "cpu", "float32")
    q.encoder = quant.encoder_int8(f32.encoder)  # what quantize="int8" swaps in
    g = torch.Generator().manual_seed(0)
    clips = (torch.rand(1, 160000, generator=g) * 2 - 1) * 0.8
    t32, t8 = f32.encode(clips), q.encode(clips)
    assert rel(t8, t32) < 0.08  # measured 0.038 (0.042 at the full depth)
    mask = torch.ones(1)
    x32, x8 = m.cross_kv(m.memory(t32, mask), mask), m.cross_kv(m.memory(t8, mask), mask)
    prompt, options = list(range(3, 18)), [[5], [9], [11, 12]]
    a, _, _ = m.score_ids(prompt, options, x32)
    b, _, _ = m.score_ids(prompt, options, x8)
    assert float((a - b).abs().max()) < 0.05  # measured 0.005
