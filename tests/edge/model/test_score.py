"""`AF2.score`: teacher-forced log-probabilities of fixed answers, equal to the official model's."""

from __future__ import annotations

import math

import pytest
import torch

from edge.model import AF2, AF2Config, Scores
from edge.model.config import AudioTransformerDims, HTSATDims, LMDims, XAttnDims
from edge.model.tokenizer import AF2Tokenizer


@pytest.fixture(scope="module")
def fixture_memory(af2, expected):
    return af2.memory(af2.encode(expected["clips"]), torch.ones(3))


def official_prefix_logprobs(expected) -> list[float]:
    """log P(greedy answer's first k tokens | prompt) for k = 1.., from the official
    teacher-forced `sequence_logits` over prompt + greedy answer."""
    ids = expected["greedy_ids"].tolist()
    T = expected["prompt_ids"].numel()
    ls = expected["sequence_logits"].double().log_softmax(-1)
    per_token = [float(ls[T - 1 + j, ids[T + j]]) for j in range(len(ids) - T)]
    return [sum(per_token[:k]) for k in range(1, len(per_token) + 1)]


def test_score_equals_official_teacher_forced_logprobs(af2, expected, fixture_info, fixture_memory):
    want = official_prefix_logprobs(expected)
    answer = expected["greedy_ids"].tolist()[expected["prompt_ids"].numel():]
    # every prefix of the greedy answer whose text tokenises back to the same ids is an option
    options = {}
    for k in range(1, len(answer) + 1):
        text = af2.tokenizer.tok.decode(answer[:k], skip_special_tokens=False)
        if af2.tokenizer.encode_text(text) == answer[:k]:
            options[text] = k
    assert len(options) >= 3  # of different lengths: the batch is padded
    s = af2.score(fixture_memory, torch.ones(3), fixture_info["question"], options=list(options))
    assert isinstance(s, Scores)
    assert s.prompt_ids == expected["prompt_ids"].tolist()
    for text, k in options.items():
        assert s.token_ids[text] == answer[:k]
        assert s.logprobs[text] == pytest.approx(want[k - 1], abs=1e-4, rel=1e-5)
    # probs: the softmax of the log-probabilities over the options
    z = math.log(sum(math.exp(v) for v in s.logprobs.values()))
    for text in options:
        assert s.probs[text] == pytest.approx(math.exp(s.logprobs[text] - z), rel=1e-9)
    assert sum(s.probs.values()) == pytest.approx(1.0)
    # every option starts with the same token: coverage is that token's probability
    assert s.coverage == pytest.approx(math.exp(want[0]), rel=1e-5)


def test_score_ids_every_prefix_of_the_greedy_answer(af2, expected, fixture_memory):
    """All 24 prefixes as one padded batch (1..24 tokens) against the official values."""
    want = official_prefix_logprobs(expected)
    T = expected["prompt_ids"].numel()
    answer = expected["greedy_ids"].tolist()[T:]
    xkv = af2.cross_kv(fixture_memory, torch.ones(3))
    lp, coverage, _ = af2.score_ids(expected["prompt_ids"].tolist(),
                                    [answer[:k] for k in range(len(answer), 0, -1)], xkv)
    got = lp.tolist()[::-1]
    assert got == pytest.approx(want, abs=1e-4, rel=1e-5)
    assert coverage == pytest.approx(math.exp(want[0]), rel=1e-5)


def test_score_bad_options_are_clear_errors(af2, fixture_memory):
    with pytest.raises(ValueError, match="at least one option"):
        af2.score(fixture_memory, torch.ones(3), "q", options=[])
    with pytest.raises(ValueError, match="distinct"):
        af2.score(fixture_memory, torch.ones(3), "q", options=["yes", "yes"])
    with pytest.raises(ValueError, match="no tokens"):
        af2.score(fixture_memory, torch.ones(3), "q", options=["yes", ""])


def tiny_config(hidden: int, layers: int, heads: int, kv: int, every: int) -> AF2Config:
    return AF2Config(
        htsat=HTSATDims(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
        audio_transformer=AudioTransformerDims(n_head=2, n_layers=1, d_inner=32),
        xattn=XAttnDims(heads=2, dim_head=16, ff_mult=2, every_n_layers=every),
        lm=LMDims(vocab_size=404, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                  rope_theta=10000.0, max_position_embeddings=512),
    )


@pytest.mark.parametrize("dims", [(32, 1, 2, 2, 1), (48, 3, 4, 1, 2), (96, 2, 6, 2, 1)])
def test_score_equals_a_plain_full_forward_on_random_weights(fixture_dir, dims):
    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    cfg = tiny_config(*dims)
    m = AF2.random(cfg, seed=sum(dims), tokenizer=tok)
    g = torch.Generator().manual_seed(1)
    L = 4  # windows, the last one masked
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    memory = m.memory(torch.randn(L, 64, cfg.audio_dim, generator=g), mask)
    question = "Is the compressor knocking?"
    options = ["yes", "no", "Yes", "knocking loudly", "a pump running dry", "no knocking at all"]
    s = m.score(memory, mask, question, options=options)
    prompt = tok.encode_prompt(question)
    for o in options:
        ids = prompt + tok.encode_text(o)
        ls = m.logits(memory, mask, ids).double().log_softmax(-1)  # no cache, one sequence
        want = sum(float(ls[j - 1, ids[j]]) for j in range(len(prompt), len(ids)))
        assert s.logprobs[o] == pytest.approx(want, abs=2e-5, rel=1e-5), o
    firsts = {tok.encode_text(o)[0] for o in options}
    ls0 = m.logits(memory, mask, prompt)[-1].double().log_softmax(-1)
    assert s.coverage == pytest.approx(float(ls0[sorted(firsts)].exp().sum()), rel=1e-5)
    # an option scores the same alone as in a batch with others (padding never leaks)
    alone = m.score(memory, mask, question, options=["a pump running dry"])
    assert alone.logprobs["a pump running dry"] == pytest.approx(
        s.logprobs["a pump running dry"], abs=2e-5)
    assert alone.probs == {"a pump running dry": 1.0}


def test_score_many_equals_one_at_a_time(fixture_dir):
    """Several streams' memories (different lengths, padded and masked) and questions (prompts
    of equal and different lengths) scored in batches equal scoring each alone."""
    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    cfg = tiny_config(48, 3, 4, 1, 2)
    m = AF2.random(cfg, seed=5, tokenizer=tok)
    g = torch.Generator().manual_seed(3)
    items = []
    for n_clips, masked, q, opts in [
        (3, 0, "is there knocking?", ["yes", "no", "Yes"]),
        (5, 2, "is there knocking?", ["yes", "no", "a pump running dry"]),
        (1, 0, "is it running?", ["yes", "no"]),
        (4, 1, "what is the machine doing?", ["idle", "failing badly", "grinding"]),
        (2, 0, "is there knocking?", ["knocking loudly", "no"]),
    ]:
        mask = torch.ones(n_clips)
        mask[n_clips - masked:] = 0
        mem = m.memory(torch.randn(n_clips, 64, cfg.audio_dim, generator=g), mask)
        items.append((mem, mask, tok.encode_prompt(q), [tok.encode_text(o) for o in opts]))
    for max_batch in (2, 8):
        batched = m.score_many(items, max_batch=max_batch)
        for (mem, mask, prompt, opts), (lp, cov) in zip(items, batched):
            lp1, cov1, _ = m.score_ids(prompt, opts, m.cross_kv(mem, mask))
            assert torch.allclose(lp, lp1, atol=1e-5, rtol=0), (lp, lp1)
            assert cov == pytest.approx(cov1, abs=1e-6)


def test_score_batch_equals_score_one_at_a_time(fixture_dir):
    """Questions of different lengths about one memory, prefilled as one right-padded batch."""
    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    cfg = tiny_config(48, 3, 4, 1, 2)
    m = AF2.random(cfg, seed=6, tokenizer=tok)
    g = torch.Generator().manual_seed(4)
    mask = torch.tensor([1.0, 1.0, 0.0])
    memory = m.memory(torch.randn(3, 64, cfg.audio_dim, generator=g), mask)
    queries = [("is there knocking?", ["yes", "Yes", "no", "No"]),
               ("what is the machine doing right now, in one word?", ["idle", "failing badly", "grinding"]),
               ("ok?", ["a pump running dry", "no"]),
               ("is there knocking?", ["knocking loudly", "silence"])]
    batch = m.score_batch(memory, mask, queries)
    for (q, opts), s in zip(queries, batch):
        alone = m.score(memory, mask, q, options=opts)
        assert s.token_ids == alone.token_ids and s.prompt_ids == alone.prompt_ids
        for o in opts:
            assert s.logprobs[o] == pytest.approx(alone.logprobs[o], abs=1e-5), (q, o)
            assert s.probs[o] == pytest.approx(alone.probs[o], abs=1e-5)
        assert s.coverage == pytest.approx(alone.coverage, abs=1e-6)


def test_score_batch_kv_across_memories_equals_score_alone(fixture_dir):
    """Several streams' questions due at once, each on its memory's cross K/V (different
    lengths, padded and masked; two rows sharing one memory), prefilled together in chunks of
    `max_batch`: each equals `score` alone within 1e-5. The prompt cache is allocated once
    and reused by the next call."""
    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    cfg = tiny_config(48, 3, 4, 1, 2)
    m = AF2.random(cfg, seed=7, tokenizer=tok)
    g = torch.Generator().manual_seed(5)
    mems = []
    for n_clips, masked in [(3, 0), (5, 2), (1, 0), (4, 1)]:
        mask = torch.ones(n_clips)
        mask[n_clips - masked:] = 0
        mems.append((m.memory(torch.randn(n_clips, 64, cfg.audio_dim, generator=g), mask), mask))
    xkvs = [m.cross_kv(mem, mask) for mem, mask in mems]
    queries = [(xkvs[0], "is there knocking?", ["yes", "Yes", "no", "No"]),
               (xkvs[1], "what is the machine doing right now, in one word?", ["idle", "failing badly"]),
               (xkvs[0], "ok?", ["a pump running dry", "no"]),
               (xkvs[2], "is there knocking?", ["yes", "no"]),
               (xkvs[3], "is it running?", ["knocking loudly", "silence", "yes"])]
    for max_batch in (8, 2):
        m.max_batch = max_batch
        batch = m.score_batch_kv(queries)
        for (x, q, opts), s in zip(queries, batch):
            mem, mask = mems[next(i for i, y in enumerate(xkvs) if y is x)]
            alone = m.score(mem, mask, q, options=opts)
            assert s.token_ids == alone.token_ids and s.prompt_ids == alone.prompt_ids
            assert s.coverage == pytest.approx(alone.coverage, abs=1e-6)
            for o in opts:
                assert s.logprobs[o] == pytest.approx(alone.logprobs[o], abs=1e-5), (q, o)
    # the next cycle asks the same: no self-attention cache is allocated again
    def buffers() -> set[int]:
        return {k.data_ptr() for bufs in m.modules.decoder._cache_pool.values() for k, _ in bufs}

    before = buffers()
    m.score_batch_kv(queries)
    assert buffers() == before and len(before) > 0


@pytest.mark.parametrize("every", [1, 2])
def test_scoring_through_the_folded_projections_equals_the_materialised_cross_kv(fixture_dir, every):
    """`cross_memory` (K/V never materialised) scores like `cross_kv`, alone and in a batch
    mixing both kinds, and like a plain full forward of prompt + option."""
    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    cfg = tiny_config(48, 3, 4, 1, every)
    m = AF2.random(cfg, seed=8, tokenizer=tok)
    g = torch.Generator().manual_seed(6)
    mems = []
    for n_clips, masked in [(3, 1), (2, 0)]:
        mask = torch.ones(n_clips)
        mask[n_clips - masked:] = 0
        mems.append((m.memory(torch.randn(n_clips, 64, cfg.audio_dim, generator=g), mask), mask))
    opts = ["yes", "No", "a pump running dry"]
    folded = [m.cross_memory(mem, mask) for mem, mask in mems]
    kv = [m.cross_kv(mem, mask) for mem, mask in mems]
    for x in folded:
        assert x.memory is not None and all(k is None for k in x.k)
    q = "is there knocking?"
    a = m.score_batch_kv([(folded[0], q, opts), (folded[1], q, opts), (kv[1], "ok?", opts)])
    b = m.score_batch_kv([(kv[0], q, opts), (kv[1], q, opts), (folded[1], "ok?", opts)])
    for s1, s2 in zip(a, b):
        for o in opts:
            assert s1.logprobs[o] == pytest.approx(s2.logprobs[o], abs=1e-5), o
    mem, mask = mems[0]
    prompt = tok.encode_prompt(q)
    for o in opts:
        ids = prompt + tok.encode_text(o)
        ls = m.logits(mem, mask, ids).double().log_softmax(-1)
        want = sum(float(ls[j - 1, ids[j]]) for j in range(len(prompt), len(ids)))
        assert a[0].logprobs[o] == pytest.approx(want, abs=2e-5, rel=1e-5), o
