"""The model's loops report progress (`edge.model.progress`): a watchdog sees one long model
call turn, token by token, question by question, clip by clip."""

import threading

import torch

from edge.model import AF2, Sampling
from edge.model.progress import reporting, tick
from edge.model.tokenizer import AF2Tokenizer
from tests.edge.model.test_score import tiny_config


def test_every_loop_of_a_model_call_ticks_and_only_for_its_own_thread(fixture_dir):
    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    m = AF2.random(tiny_config(32, 1, 2, 2, 1), seed=1, tokenizer=tok)
    ticks = []
    clips = torch.randn(3, 160000, generator=torch.Generator().manual_seed(0)) * 0.1
    mask = torch.ones(3)
    with reporting(lambda: ticks.append(1)):
        tokens = m.encode(clips)
        assert len(ticks) == 3  # one per encoded clip
        ticks.clear()
        memory = m.memory(tokens, mask)
        assert len(ticks) == 1  # a memory: one per audio-transformer layer (1 here)
        xkv = m.cross_kv(memory, mask)
        assert len(ticks) == 2  # and its cross K/V
        ticks.clear()
        (ids, _, _), = [m.generate(tok.encode_prompt("q"), xkv, Sampling(max_new_tokens=20), -1)]
        assert len(ids) == 20 and len(ticks) == 19  # one per decode step (static path)
        ticks.clear()
        ids, _, _ = m.generate_eager(tok.encode_prompt("q"), xkv, Sampling(max_new_tokens=20), -1)
        assert len(ids) == 20 and len(ticks) == 19  # the eager path too
        ticks.clear()
        m.score_batch(memory, mask, [("a?", ["yes", "no"]), ("b?", ["x", "a pump"])], xkv=xkv)
        assert len(ticks) == 2  # one per scored question
        ticks.clear()
        other = threading.Thread(  # another thread's model calls are not this thread's work
            target=m.generate, args=(tok.encode_prompt("q"), xkv, Sampling(max_new_tokens=5), -1))
        other.start()
        other.join()
        assert ticks == []
    tick()
    m.generate(tok.encode_prompt("q"), xkv, Sampling(max_new_tokens=5), -1)
    assert ticks == []  # outside the block nobody listens


def test_the_audio_transformer_ticks_after_each_layer_inside_one_memory_call(af2):
    """A 5-min memory is one call of several seconds on a slow CPU (minutes on a small
    board): the watchdog sees it turn layer by layer, not only once it returns."""
    layers = af2.modules.audio_transformer.layer_stack
    assert len(layers) == 3
    events: list[str] = []
    hooks = [ly.register_forward_hook(lambda mod, inp, out, i=i: events.append(f"layer {i}"))
             for i, ly in enumerate(layers)]
    try:
        tokens = torch.randn(30, 64, af2.config.audio_dim, generator=torch.Generator().manual_seed(0))
        mask = torch.ones(30)
        mask[:4] = 0  # masked slots change nothing about the beat
        with reporting(lambda: events.append("tick")):
            af2.memory(tokens, mask)
    finally:
        for h in hooks:
            h.remove()
    assert events == ["layer 0", "tick", "layer 1", "tick", "layer 2", "tick"]
