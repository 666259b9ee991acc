"""A stand-in for `edge.model.AF2` with the same call signatures (fast, deterministic)."""

import time
from dataclasses import dataclass, field

import torch


@dataclass
class FakeAnswer:
    text: str
    token_ids: list
    prompt_ids: list = field(default_factory=list)


class FakeModel:
    model_id = "fake-af2"

    def __init__(self, encode_delay=0.0, answer="Yes, knocking."):
        self.encode_delay = encode_delay
        self.answer = answer
        self.encode_calls = []  # batch sizes
        self.memory_calls = 0
        self.ask_calls = []  # (questions, Sampling)

    def encode(self, clips):
        assert clips.ndim == 2 and clips.shape[1] == 160000 and clips.dtype == torch.float32
        self.encode_calls.append(clips.shape[0])
        if self.encode_delay:
            time.sleep(self.encode_delay)
        return clips[:, :64 * 8].reshape(-1, 64, 8).clone()

    def memory(self, tokens, mask):
        self.memory_calls += 1
        return (tokens * mask[:, None, None]).reshape(-1, tokens.shape[-1])

    def ask_many(self, memory, mask, questions, sampling):
        self.ask_calls.append((list(questions), sampling))
        return [FakeAnswer(self.answer, [7, len(q)]) for q in questions]
