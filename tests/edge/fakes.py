"""A stand-in for `edge.model.AF2` with the same call signatures (fast, deterministic)."""

import math
import time
from dataclasses import dataclass, field

import torch


@dataclass
class FakeAnswer:
    text: str
    token_ids: list
    prompt_ids: list = field(default_factory=list)


@dataclass
class FakeScores:
    logprobs: dict
    probs: dict
    coverage: float


class FakeModel:
    model_id = "fake-af2"

    def __init__(self, encode_delay=0.0, answer="Yes, knocking.", logprobs=None):
        self.encode_delay = encode_delay
        self.answer = answer
        # option -> log-probability for `score` (options not listed: -10)
        self.logprobs = dict(logprobs or {"yes": math.log(0.6), "Yes": math.log(0.3),
                                          "no": math.log(0.05)})
        self.encode_calls = []  # batch sizes
        self.memory_calls = 0
        self.cross_kv_calls = 0
        self.ask_calls = []  # (questions, Sampling)
        self.score_calls = []  # (question, options)
        self.score_batch_calls = []  # rows per score_batch_kv call
        self.ask_limits = []  # per ask_batch call: each row's max_new_tokens

    def encode(self, clips):
        assert clips.ndim == 2 and clips.shape[1] == 160000 and clips.dtype == torch.float32
        self.encode_calls.append(clips.shape[0])
        if self.encode_delay:
            time.sleep(self.encode_delay)
        return clips[:, :64 * 8].reshape(-1, 64, 8).clone()

    def memory(self, tokens, mask):
        self.memory_calls += 1
        return (tokens * mask[:, None, None]).reshape(-1, tokens.shape[-1])

    def cross_kv(self, memory, mask):
        self.cross_kv_calls += 1
        return ("xkv", self.cross_kv_calls)

    def ask_many(self, memory, mask, questions, sampling):
        self.ask_calls.append((list(questions), sampling))
        return [FakeAnswer(self.answer, [7, len(q)]) for q in questions]

    def ask_batch(self, queries, sampling, max_new_tokens=None):
        self.ask_calls.append(([q for _, q in queries], sampling))
        limits = max_new_tokens or [sampling.max_new_tokens] * len(queries)
        self.ask_limits.append(list(limits))
        return [FakeAnswer(self.answer, [7, len(q)]) for _, q in queries]

    def score(self, memory, mask, question, options, xkv=None):
        self.score_calls.append((question, list(options)))
        lp = {o: self.logprobs.get(o, -10.0) for o in options}
        z = math.log(sum(math.exp(v) for v in lp.values()))
        return FakeScores(lp, {o: math.exp(v - z) for o, v in lp.items()},
                          sum(math.exp(v) for v in lp.values()))

    def score_batch(self, memory, mask, queries, xkv=None):
        return [self.score(memory, mask, q, options, xkv=xkv) for q, options in queries]

    def score_batch_kv(self, queries):
        self.score_batch_calls.append(len(queries))
        return [self.score(None, None, q, options, xkv=xkv) for xkv, q, options in queries]
