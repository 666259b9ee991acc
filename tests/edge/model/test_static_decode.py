"""The static decoding path: the same ids as the eager reference loop, batched rows equal to rows
decoded alone, no host sync inside a step, buffers reused, CUDA-graph fallback logged."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from edge.model import AF2, AF2Config, Sampling
from edge.model.config import AudioTransformerDims, HTSATDims, LMDims

QS = ["Is the compressor knocking?", "What sound is this? Is anything abnormal?", "hum?"]


@pytest.fixture(scope="module")
def fx(af2, expected):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    return tokens, mem, af2.cross_kv(mem, torch.ones(3))


def small_config() -> AF2Config:
    return AF2Config(htsat=HTSATDims(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
                     audio_transformer=AudioTransformerDims(n_head=4, d_inner=512),
                     lm=LMDims(vocab_size=3000, hidden_size=256, intermediate_size=640,
                               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2))


@pytest.fixture(scope="module")
def rnd():
    """Random weights (gates open), three memories of different lengths, three prompts."""
    m = AF2.random(small_config(), torch.float32, seed=3)
    g = torch.Generator().manual_seed(0)
    xkvs = [m.cross_kv(torch.randn(n * 64, 256, generator=g), torch.ones(n)) for n in (3, 1, 5)]
    prompts = [torch.randint(0, 3000, (n,), generator=g).tolist() for n in (15, 7, 22)]
    return m, xkvs, prompts


def test_static_greedy_ids_equal_the_eager_loop_on_the_fixture(af2, fx, expected):
    _, _, xkv = fx
    prompt = expected["prompt_ids"].tolist()
    s = Sampling(max_new_tokens=24)
    ids, finished, _ = af2.generate(prompt, xkv, s)
    assert ids == af2.generate_eager(prompt, xkv, s)[0]
    assert ids == expected["greedy_ids"][len(prompt):].tolist() and not finished


def test_static_greedy_ids_equal_the_eager_loop_on_random_weights(rnd):
    m, xkvs, prompts = rnd
    s = Sampling(max_new_tokens=40)
    for p, x in zip(prompts, xkvs):
        assert m.generate(p, x, s, eos_id=-1)[0] == m.generate_eager(p, x, s, eos_id=-1)[0]


def test_questions_on_one_memory_decode_as_one_batch_equal_to_alone(af2, fx):
    _, mem, xkv = fx
    s = Sampling(max_new_tokens=20)
    many = af2.ask_many(mem, torch.ones(3), QS, s)
    assert {a.timings["batch"] for a in many} == {3.0}
    for q, a in zip(QS, many):
        alone = af2.generate_eager(af2.tokenizer.encode_prompt(q), xkv, s)
        assert (a.token_ids, a.finished) == (alone[0], alone[1])


def test_queries_on_memories_of_different_lengths_batch_equal_to_alone(af2, fx, rnd):
    tokens, _, xkv = fx
    x2 = af2.cross_kv(af2.memory(tokens[:2], torch.ones(2)), torch.ones(2))
    masked = af2.cross_kv(af2.memory(tokens, torch.tensor([1.0, 1.0, 0.0])), torch.tensor([1.0, 1.0, 0.0]))
    pairs = [(xkv, QS[0]), (x2, QS[1]), (masked, QS[2]), (x2, QS[0])]
    s = Sampling(max_new_tokens=20)
    for (x, q), a in zip(pairs, af2.ask_batch(pairs, s)):
        assert a.token_ids == af2.generate_eager(af2.tokenizer.encode_prompt(q), x, s)[0]
    m, xkvs, prompts = rnd
    s = Sampling(max_new_tokens=30)
    rows = m.generate_batch(prompts, xkvs, s, eos_id=-1)
    for p, x, r in zip(prompts, xkvs, rows):
        assert r.token_ids == m.generate_eager(p, x, s, eos_id=-1)[0]


def test_a_row_that_hits_eos_stops_while_the_others_go_on(rnd):
    m, xkvs, prompts = rnd
    s = Sampling(max_new_tokens=12)
    first = m.generate_eager(prompts[1], xkvs[1], s, eos_id=-1)[0]
    eos = first[3]  # row 1 emits this id at its 4th step
    rows = m.generate_batch(prompts, xkvs, s, eos_id=eos)
    for p, x, r in zip(prompts, xkvs, rows):
        want, fin, _ = m.generate_eager(p, x, s, eos_id=eos)
        assert (r.token_ids, r.finished) == (want, fin)
    assert rows[1].finished and rows[1].token_ids == first[:first.index(eos)]


def test_seeded_sampling_in_a_batch_equals_each_row_alone(af2, fx):
    _, mem, xkv = fx
    s = Sampling(max_new_tokens=12, greedy=False, top_k=30, top_p=0.95, seed=7)
    many = af2.ask_many(mem, torch.ones(3), QS, s)
    for q, a in zip(QS, many):
        assert a.token_ids == af2.generate_eager(af2.tokenizer.encode_prompt(q), xkv, s)[0]


class _Syncs(TorchDispatchMode):
    """Counts the ops that copy a device value to the host (`.item()`, `int(t)`, `bool(t)`)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    READS: ClassVar[set] = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default,
             torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def test_a_decode_step_reads_nothing_back_to_the_host(rnd):
    m, xkvs, prompts = rnd
    sd = m._pool.get(2, 64, 192, shared=False)
    sd.set_cross(xkvs[:1] * 2)
    with torch.inference_mode():
        logits = sd.prefill(prompts[:2])
        tok = logits.argmax(-1)
        with _Syncs() as counter:
            sd.step(tok)
        assert counter.n == 0
        # the eager reference does read back (one per layer): the counter can see it
        dec = m.modules.decoder
        dec.setup_cache(1, 32)
        dec(torch.tensor([prompts[0]]), xkvs[0], input_pos=torch.arange(len(prompts[0])))
        with _Syncs() as counter:
            dec(torch.tensor([[1]]), xkvs[0], input_pos=torch.tensor([len(prompts[0])]))
        assert counter.n == m.config.lm.num_hidden_layers


def test_buffers_are_allocated_once_per_shape(rnd):
    m, xkvs, prompts = rnd
    s = Sampling(max_new_tokens=8)
    m.generate(prompts[0], xkvs[0], s, eos_id=-1)
    sd = next(reversed(m._pool.entries.values()))
    ptr = sd.cache.k[0].data_ptr()
    m.generate(prompts[2], xkvs[0], s, eos_id=-1)  # another prompt length, same bucket
    assert next(reversed(m._pool.entries.values())) is sd and sd.cache.k[0].data_ptr() == ptr


def test_graph_capture_failure_falls_back_to_the_eager_step_and_logs_once(rnd, caplog):
    m, xkvs, prompts = rnd
    s = Sampling(max_new_tokens=10)
    want = [m.generate(p, x, s, eos_id=-1)[0] for p, x in zip(prompts, xkvs)]
    m.set_graphs(True)  # on a CPU the capture cannot work: it must fail cleanly
    try:
        with caplog.at_level(logging.WARNING, logger="edge.model.generate"):
            got = [m.generate(p, x, s, eos_id=-1)[0] for p, x in zip(prompts, xkvs)]
            again = m.generate(prompts[0], xkvs[0], s, eos_id=-1)[0]
        assert got == want and again == want[0]
        fails = [r for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
        assert len(fails) == 1 and "CUDA device" in fails[0].getMessage()
        sd = next(reversed(m._pool.entries.values()))
        assert sd.graph is None and sd.mem_cap == 30 * 64  # graphs: fixed 5-minute capacity
    finally:
        m.set_graphs(False)


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=0.0), dict(top_k=0),
                                 dict(top_p=1.5)])
def test_sampling_options_are_checked(bad):
    with pytest.raises(ValueError):
        Sampling(**bad)


def test_rows_with_their_own_max_new_tokens_decode_as_one_batch_equal_to_alone(rnd):
    """Questions whose settings differ only in length share one batch: each row stops at
    its own limit (ids and finished as alone), the batch at the longest."""
    m, xkvs, prompts = rnd
    limits = [3, 9, 5]
    first = m.generate_eager(prompts[2], xkvs[2], Sampling(max_new_tokens=9), eos_id=-1)[0]
    for eos in (-1, first[2]):  # row 2 hits EOS at its third step (inside its limit)
        rows = m.generate_batch(prompts, xkvs, Sampling(max_new_tokens=1), eos_id=eos, limits=limits)
        for p, x, n, r in zip(prompts, xkvs, limits, rows):
            want, fin, _ = m.generate_eager(p, x, Sampling(max_new_tokens=n), eos_id=eos)
            assert (r.token_ids, r.finished) == (want, fin)
    with pytest.raises(ValueError):
        m.generate_batch(prompts, xkvs, Sampling(), limits=[3, 0, 5])
