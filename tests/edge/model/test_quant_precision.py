"""Weight-only quantization of the decoder (model.quantize) and the dtype policy (model.dtype auto)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge.model import AF2, Sampling
from edge.model import quant
from edge.model.precision import decide_cpu, resolve

MODULES = [(quant.Int8Linear, {}), (quant.Int4Linear, {"group": 64, "packed_cpu": True}),
           (quant.Int4Linear, {"group": 64, "packed_cpu": False})]


@pytest.mark.parametrize("cls,kw", MODULES)
def test_quantized_linear_computes_x_times_its_dequantized_weight(cls, kw, monkeypatch):
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(304, 256, generator=g), torch.randn(5, 256, generator=g)
    m = cls(256, 304, True, torch.float32, **kw).requires_grad_(False)
    m.bias.normal_(generator=g)
    m.quantize_from(lambda i, j: w[i:j])
    deq = m.dequantized(torch.float32)
    # the CPU kernels take bf16 activations (fast only so): bf16 rounding of x, nothing more
    ref = F.linear(x, deq, m.bias)
    assert float((m(x) - ref).norm() / ref.norm()) < 1e-2
    many = torch.randn(100, 256, generator=g)  # beyond KERNEL_MAX_ROWS: int8 dequantizes + GEMM
    if cls is quant.Int8Linear:
        assert torch.allclose(m(many), F.linear(many, deq, m.bias), atol=1e-4)
    err = float((deq - w).norm() / w.norm())
    assert err < (0.01 if cls is quant.Int8Linear else 0.1)  # measured 0.007 / 0.089
    # quantizing while streaming row blocks gives the same tensors as all rows at once
    monkeypatch.setattr(quant, "ROW_BLOCK_BYTES", 64 * 4 * 256)
    reads = []
    m2 = cls(256, 304, True, torch.float32, **kw)
    m2.quantize_from(lambda i, j: reads.append(j - i) or w[i:j])
    assert max(reads) == 64 and sum(reads) == 304
    assert torch.equal(m2.weight, m.weight)


def test_packed_cpu_int4_equals_the_reference_layout():
    w = torch.randn(304, 256, generator=torch.Generator().manual_seed(1))
    a = quant.Int4Linear(256, 304, False, torch.float32, 64, packed_cpu=True)
    b = quant.Int4Linear(256, 304, False, torch.float32, 64, packed_cpu=False)
    a.quantize_from(lambda i, j: w[i:j])
    b.quantize_from(lambda i, j: w[i:j])
    assert torch.allclose(a.dequantized(torch.float32), b.dequantized(torch.float32), atol=1e-5)


@pytest.fixture(scope="module")
def ref_mem(af2, expected):
    return af2.memory(af2.encode(expected["clips"]), torch.ones(3))


# mode -> bounds (measured on the fixture with the CPU kernels' bf16 activations): logit error,
# |P(yes) change| and max |log-probability change| of a yes/no `score` on two questions
FIXTURE_BOUNDS = {"int8": (0.1, 0.03, 0.4),  # measured 0.059, 0.008, 0.18
                  "int4": (0.8, 0.3, 3.0)}  # measured 0.58, 0.19, 2.08 (hidden 64: a group = a row)
QUESTIONS = ["Is the compressor knocking?", "What sound is this? Is anything abnormal?"]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_load_quantized_streams_and_deviates_within_the_measured_bound(
        af2, fixture_dir, expected, ref_mem, mode, monkeypatch):
    bound, p_bound, lp_bound = FIXTURE_BOUNDS[mode]
    monkeypatch.setattr(quant, "ROW_BLOCK_BYTES", 1)  # one row block (64 rows) at a time
    m = AF2.load(fixture_dir / "checkpoint", quantize=mode)
    dec = m.modules.decoder
    assert isinstance(dec.embed_tokens, quant.Int8Embedding) and dec.embed_tokens.weight.dtype == torch.int8
    kinds = {type(mod) for mod in dec.modules() if isinstance(mod, quant.QUANTIZED)}
    assert (quant.Int4Linear in kinds) == (mode == "int4")
    plain = {n.rpartition(".")[2] for n, mod in dec.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert plain == {"to_kv"}  # read once per query for the cross K/V, never by a decode step
    assert quant.weight_bytes(dec) < 0.4 * quant.weight_bytes(af2.modules.decoder)
    # the same as quantizing the float model in memory
    mem_q = AF2.random(m.config, seed=0)
    mem_q.modules.load_state_dict(af2.modules.state_dict())
    quant.quantize_model(mem_q.modules.decoder, mode)
    for (k, a), b in zip(dec.state_dict().items(), mem_q.modules.decoder.state_dict().values()):
        assert torch.equal(a, b), k
    # deviation from float32 (docs/PERFORMANCE.md reports it at released dims too)
    L0 = af2.logits(ref_mem, torch.ones(3), expected["greedy_ids"])
    L = m.logits(ref_mem, torch.ones(3), expected["greedy_ids"])
    assert float((L - L0).norm() / L0.norm()) < bound
    # what a yes/no monitor reads: the score
    for q in QUESTIONS:
        a, b = af2.score(ref_mem, torch.ones(3), q, ["yes", "no"]), m.score(ref_mem, torch.ones(3), q, ["yes", "no"])
        assert abs(a.probs["yes"] - b.probs["yes"]) < p_bound
        assert max(abs(a.logprobs[o] - b.logprobs[o]) for o in a.options) < lp_bound
    # the static path still equals the eager loop on the quantized weights
    xkv = m.cross_kv(ref_mem, torch.ones(3))
    s = Sampling(max_new_tokens=16)
    prompt = expected["prompt_ids"].tolist()
    assert m.generate(prompt, xkv, s)[0] == m.generate_eager(prompt, xkv, s)[0]


@pytest.fixture(scope="module")
def released_widths():
    """Random weights at the released 0.5B decoder widths (hidden 896, MLP 4864, 14/2 heads, the
    151669-token vocabulary) with 2 of its 24 layers (bench/bench_decoder_paths.py measures all
    24), 3 windows of random memory, a 15-token prompt; the float32 reference: 8 greedy ids,
    teacher-forced logits over prompt + ids, a score of two one-token options and a two-token one."""
    from dataclasses import replace

    from edge.model import AF2Config
    from edge.model.config import HTSATDims

    cfg = AF2Config.released("0.5B")
    cfg = replace(cfg, htsat=HTSATDims(depths=(1, 1, 1, 1))).with_lm(replace(cfg.lm, num_hidden_layers=2))
    m = AF2.random(cfg, seed=0)
    m.modules.encoder = None  # not measured here
    g = torch.Generator().manual_seed(1)
    mem, mask = torch.randn(3 * 64, cfg.audio_dim, generator=g), torch.ones(3)
    prompt = torch.randint(0, cfg.lm.vocab_size, (15,), generator=g).tolist()
    options = [[9454], [2152], [33, 44]]
    xkv = m.cross_kv(mem, mask)
    ids = m.generate(prompt, xkv, Sampling(max_new_tokens=8), eos_id=-1)[0]
    return m, mem, mask, prompt, options, ids, m.logits(mem, mask, prompt + ids), m.score_ids(prompt, options, xkv)[0]


# mode -> logit error, min teacher-forced top-1 agreement, min greedy ids equal of 8, max |P change|
# and max |log-probability change| of the score's options
RELEASED_BOUNDS = {"int8": (0.06, 0.8, 6, 0.01, 0.1),  # measured 0.031, 0.91, 8/8, 0.0018, 0.022
                   "int4": (0.45, 0.35, 1, 0.06, 0.8)}  # measured 0.28, 0.52, 4/8, 0.019, 0.34


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_decoder_at_released_widths_deviates_within_the_measured_bound(released_widths, mode):
    import copy

    m, mem, mask, prompt, options, ids0, L0, s0 = released_widths
    mods = copy.deepcopy(m.modules)
    quant.quantize_model(mods.decoder, mode)
    q = AF2(mods, None, m.config, torch.float32, torch.device("cpu"))
    err, top1, greedy, p_bound, lp_bound = RELEASED_BOUNDS[mode]
    L = q.logits(mem, mask, prompt + ids0)
    assert float((L - L0).norm() / L0.norm()) < err
    assert float((L.argmax(-1) == L0.argmax(-1)).float().mean()) >= top1
    xkv = q.cross_kv(mem, mask)
    ids = q.generate(prompt, xkv, Sampling(max_new_tokens=8), eos_id=-1)[0]
    assert sum(a == b for a, b in zip(ids, ids0)) >= greedy
    s = q.score_ids(prompt, options, xkv)[0]
    assert float((s.softmax(0) - s0.softmax(0)).abs().max()) < p_bound
    assert float((s - s0).abs().max()) < lp_bound


def test_unknown_quantize_mode_is_refused(fixture_dir):
    with pytest.raises(ValueError, match="int8"):
        AF2.load(fixture_dir / "checkpoint", quantize="int3")


def test_auto_dtype_rule_on_both_kinds_of_cpu():
    avx2 = decide_cpu({"bf16_matmul_speedup": 0.15, "bf16_matvec_speedup": 1.46})
    assert (avx2.dtype, avx2.encoder) == ("float32", "float32") and "quantize: int8" in avx2.reason
    assert "encoder.quantize" not in avx2.reason  # not measured: no encoder hint
    avx2 = decide_cpu({"bf16_matmul_speedup": 0.02, "bf16_matvec_speedup": 0.97,
                       "encoder_int8_speedup": 1.86})  # measured on an AVX2-only EPYC
    assert (avx2.dtype, avx2.encoder) == ("float32", "float32")
    assert "model.encoder.quantize: int8" in avx2.reason and "1.86x" in avx2.reason
    assert "encoder.quantize" not in decide_cpu({"bf16_matmul_speedup": 0.02, "bf16_matvec_speedup": 0.97,
                                                 "encoder_int8_speedup": 1.05}).reason
    native = decide_cpu({"bf16_matmul_speedup": 1.9, "bf16_matvec_speedup": 1.6})
    assert (native.dtype, native.encoder) == ("bfloat16", "bfloat16")
    mixed = decide_cpu({"bf16_matmul_speedup": 1.9, "bf16_matvec_speedup": 0.7})
    assert (mixed.dtype, mixed.encoder) == ("float32", "bfloat16")
    assert mixed.stages == {"encoder": "bfloat16", "cross_kv_prefill": "bfloat16",
                            "decode_step": "float32"}


def test_auto_dtype_measures_this_machine_and_logs_its_choice(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="edge.model.precision"):
        c = resolve("auto", "cpu")
    assert c.dtype in ("float32", "bfloat16") and set(c.measured) >= {
        "bf16_matmul_speedup", "bf16_matvec_speedup", "encoder_int8_speedup"}
    from tests.conftest import log_events

    assert [e["dtype"] for e in log_events(caplog.records, "model.dtype auto")] == [c.dtype]
    assert resolve("float16", "cpu").dtype == "float16"  # an explicit dtype is kept


def test_config_defaults_to_auto_and_checks_quantize():
    from edge.config import ConfigError, load_settings

    s = load_settings(data={})
    assert s.model.dtype == "auto" and s.model.quantize == "none"
    assert load_settings(data={"model": {"quantize": "int4"}}).model.quantize == "int4"
    with pytest.raises(ConfigError, match="quantize"):
        load_settings(data={"model": {"quantize": "int2"}})


def test_daemon_loads_with_auto_dtype_and_quantize(fixture_dir):
    from edge.daemon import load_model

    m = load_model(fixture_dir / "checkpoint", "auto", "cpu", "int8")
    assert m.quantize == "int8" and isinstance(m.modules.decoder.embed_tokens, quant.Int8Embedding)
    assert str(m.dtype).replace("torch.", "") in ("float32", "bfloat16")
    assert m.encoder_dtype in ("float32", "bfloat16")  # the encoder backend's default
    assert load_model(fixture_dir / "checkpoint", "float32", "cpu").encoder_dtype == "float32"


def test_ask_cli_quantize_option_answers_like_the_quantized_model(fixture_dir):
    import json

    from tests.conftest import run_cli

    wav, q = fixture_dir / "input.wav", "Is the compressor knocking?"
    out = run_cli("ask", "--model", str(fixture_dir / "checkpoint"), str(wav), q, "--quantize", "int8",
                  "--max-new-tokens", "6", "--json")
    assert out.returncode == 0, out.stderr
    m = AF2.load(fixture_dir / "checkpoint", quantize="int8")
    clips, mask = m.prepare_file(wav)
    want = m.ask(m.memory(m.encode(clips), mask), mask, q, Sampling(max_new_tokens=6))
    assert json.loads(out.stdout)["token_ids"] == want.token_ids
