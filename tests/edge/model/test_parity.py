"""The runtime reproduces the official AF2 code's outputs on the af2-tiny fixture."""

from __future__ import annotations

import torch

from edge.model import Sampling

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def test_file_preparation_matches_official(af2, fixture_dir, expected):
    clips, mask = af2.prepare_file(fixture_dir / "input.wav", max_windows=30)
    assert clips.shape == (3, 160000) and clips.dtype == torch.float32
    assert torch.equal(clips, expected["clips"])
    assert torch.equal(mask, expected["clip_mask"].float())


def test_log_mel_matches_official(af2, expected):
    from edge.model.audio import int16_roundtrip_torch

    mel = af2.modules.encoder.mel(int16_roundtrip_torch(expected["clips"][:1]))[0]
    assert mel.shape == (1001, 64)
    assert rel_err(mel, expected["mel_clip0"]) < TOL


def test_encoder_tokens_match_official(af2, expected):
    tokens = af2.encode(expected["clips"])
    assert tokens.shape == (3, 64, 256)
    assert rel_err(tokens, expected["clap_tokens"]) < TOL


def test_encode_is_batch_invariant(af2, expected):
    clips = expected["clips"]
    together = af2.encode(clips)
    for i in range(3):
        assert torch.equal(af2.encode(clips[i : i + 1])[0], together[i])
    # order of the batch does not matter either
    assert torch.equal(af2.encode(clips.flip(0)), together.flip(0))


def test_audio_memory_matches_official(af2, expected):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    assert mem.shape == (192, 256)
    assert rel_err(mem, expected["audio_memory"]) < TOL
    masked = af2.memory(tokens, torch.tensor([1.0, 1.0, 0.0]))
    assert rel_err(masked, expected["audio_memory_masked_last"]) < TOL


def test_prompt_is_tokenised_as_official(af2, expected, fixture_info):
    ids = af2.tokenizer.encode_prompt(fixture_info["question"])
    assert ids == expected["prompt_ids"].tolist()
    sp = fixture_info["special_tokens"]
    assert (af2.tokenizer.media_id, af2.tokenizer.sep_id, af2.tokenizer.eos_id) == (
        sp["media_id"], sp["sep_id"], sp["eos_id"])


def test_decoder_logits_match_official(af2, expected):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    assert rel_err(af2.logits(mem, torch.ones(3), expected["prompt_ids"]),
                   expected["prompt_logits"]) < TOL
    assert rel_err(af2.logits(mem, torch.ones(3), expected["greedy_ids"]),
                   expected["sequence_logits"]) < TOL
    mask = torch.tensor([1.0, 1.0, 0.0])
    mem_m = af2.memory(tokens, mask)
    assert rel_err(af2.logits(mem_m, mask, expected["prompt_ids"]),
                   expected["prompt_logits_masked_last"]) < TOL


def test_greedy_answer_matches_official_through_the_cache(af2, expected, fixture_info):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    n_prompt = expected["prompt_ids"].numel()
    want = expected["greedy_ids"][n_prompt:].tolist()
    ans = af2.ask(mem, torch.ones(3), fixture_info["question"], Sampling(max_new_tokens=len(want)))
    assert ans.prompt_ids == expected["prompt_ids"].tolist()
    assert ans.token_ids == want
    assert not ans.finished
    assert ans.text == fixture_info["decoded_answer"]


def test_cached_decoding_equals_teacher_forced_argmax(af2, expected, fixture_info):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    ans = af2.ask(mem, torch.ones(3), fixture_info["question"], Sampling(max_new_tokens=24))
    full = ans.prompt_ids + ans.token_ids
    logits = af2.logits(mem, torch.ones(3), full)
    n = len(ans.prompt_ids)
    assert logits[n - 1 : -1].argmax(-1).tolist() == ans.token_ids


def test_ask_many_shares_memory_and_matches_ask(af2, expected):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    qs = ["Is the compressor knocking?", "What sound is this? Is anything abnormal?"]
    many = af2.ask_many(mem, torch.ones(3), qs, Sampling(max_new_tokens=8))
    for q, a in zip(qs, many):
        assert a.token_ids == af2.ask(mem, torch.ones(3), q, Sampling(max_new_tokens=8)).token_ids


def test_generation_stops_at_eos(af2, expected):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    xkv = af2.cross_kv(mem, torch.ones(3))
    prompt = expected["prompt_ids"].tolist()
    first = expected["greedy_ids"][len(prompt)].item()
    # declare the first greedy token to be EOS: generation must stop before emitting it
    ids, finished, _ = af2.generate(prompt, xkv, Sampling(max_new_tokens=10), eos_id=first)
    assert ids == [] and finished


def test_seeded_sampling_is_reproducible(af2, expected):
    tokens = af2.encode(expected["clips"])
    mem = af2.memory(tokens, torch.ones(3))
    q = "describe the sound"
    a = af2.ask(mem, torch.ones(3), q, Sampling(max_new_tokens=12, greedy=False, top_k=30, top_p=0.95, seed=7))
    b = af2.ask(mem, torch.ones(3), q, Sampling(max_new_tokens=12, greedy=False, top_k=30, top_p=0.95, seed=7))
    assert a.token_ids == b.token_ids
    c = af2.ask(mem, torch.ones(3), q, Sampling(max_new_tokens=12, greedy=False, top_k=30, top_p=0.95, seed=8))
    assert c.token_ids != a.token_ids  # a different seed draws a different answer here
    # top-k 1 is greedy
    g = af2.ask(mem, torch.ones(3), q, Sampling(max_new_tokens=12))
    k1 = af2.ask(mem, torch.ones(3), q, Sampling(max_new_tokens=12, greedy=False, top_k=1, seed=3))
    assert k1.token_ids == g.token_ids


def test_top_p_keeps_only_the_nucleus():
    from edge.model.af2 import pick_token

    logits = torch.tensor([10.0, 9.0, 0.0, -5.0])  # p ~ [0.73, 0.27, 3e-5, 2e-7]
    gen = torch.Generator().manual_seed(0)
    picks = {pick_token(logits, Sampling(greedy=False, top_p=0.9), gen) for _ in range(200)}
    assert picks == {0, 1}
    picks = {pick_token(logits, Sampling(greedy=False, top_p=0.5), gen) for _ in range(50)}
    assert picks == {0}
