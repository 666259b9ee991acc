"""Answering the due monitors of one stream about one memory.

    mq = MemoryQueries(model, memory, mask)   # one cross-attention K/V for all of them
    outcomes = mq.answer([Query(cfg, question), ...])
    outcome = mq.explain(query, outcome)       # words for a scored monitor that turned ON

`answer: yes_no` and `answer: choice` monitors are **scored** (``scored: true``, the default):
`AF2.score_batch` (all scored questions about one memory in one batched prefill) gives the
teacher-forced probability of every option right after the prompt, and
the monitor's score is the probability of its positive option(s) among its options:

* yes_no: options "yes" and "no", positive = ``positive`` (default "yes");
* choice: the ``choices``, positive = ``alert_on``.

Each option is scored in its case variants (as written, lower case, first letter upper case:
"yes" and "Yes"; "running normally" and "Running normally"): the tokenizer splits them into
different tokens, so each is a different way for the model to give the same answer, and an
option's probability is the sum over its variants. The verdict is the score against the
monitor's ``threshold`` and ``hysteresis`` (`edge.results.verdict_of_score`); `coverage` is
how much probability the first tokens of all variants hold together (low = the model would
answer something else). Options are prefixes, not whole answers (no EOS): "yes" covers
"Yes, there is knocking." too.

`answer: text` monitors (and yes_no / choice with ``scored: false``) generate text and parse
it (`edge.monitors.parse_answer`); text queries with the same decoding settings go to the
model together. All queries about one memory share one cross-attention K/V, whatever their
decoding settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from .monitors import _norm, parse_answer
from .results import Verdict, verdict_of_score

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Query:
    cfg: Any  # edge.config.MonitorConfig
    question: str  # rendered


@dataclass(frozen=True)
class Outcome:
    answer: str  # generated text; for a scored monitor not (yet) explained: its best option
    token_ids: tuple[int, ...]  # generated ids (empty for a scored monitor not explained)
    verdict: Verdict
    choice: str | None = None
    score: float | None = None  # scored: P(positive options) among the options
    probs: dict[str, float] | None = None  # scored: every option's probability, variants summed
    coverage: float | None = None
    explained: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def is_scored(cfg: Any) -> bool:
    return cfg.answer in ("yes_no", "choice") and bool(getattr(cfg, "scored", True))


def variants(option: str) -> list[str]:
    """The spellings of one option that are scored together (see the module docstring)."""
    out: list[str] = []
    for v in (option, option.lower(), option[:1].upper() + option[1:].lower()):
        if v and v not in out:
            out.append(v)
    return out


def options_of(cfg: Any) -> tuple[list[str], set[str]]:
    """(options, the positive ones) of a scored monitor."""
    if cfg.answer == "yes_no":
        return ["yes", "no"], {cfg.positive}
    pos = {_norm(a) for a in cfg.alert_on}
    return list(cfg.choices), {c for c in cfg.choices if _norm(c) in pos}


class MemoryQueries:
    """Every question about one memory: the cross-attention K/V is computed once, lazily."""

    def __init__(self, model: Any, memory: Any, mask: Any) -> None:
        self.model, self.memory, self.mask = model, memory, mask
        self._xkv: Any = None
        self.cross_kv_s = 0.0

    @property
    def xkv(self) -> Any:
        if self._xkv is None:
            t0 = time.perf_counter()
            self._xkv = self.model.cross_kv(self.memory, self.mask)
            self.cross_kv_s = time.perf_counter() - t0
        return self._xkv

    def answer(self, queries: list[Query]) -> list[Outcome | None]:
        import torch

        out: list[Outcome | None] = [None] * len(queries)
        by_dec: dict[tuple, list[int]] = {}
        scored = [i for i, q in enumerate(queries) if is_scored(q.cfg)]
        with torch.inference_mode():
            if scored:  # all scored questions about this memory: one batched prefill
                try:
                    for i, o in zip(scored, self._score([queries[i] for i in scored])):
                        out[i] = o
                except Exception:  # lose only these monitors; the caller counts them
                    log.exception("scoring failed")
            for i, q in enumerate(queries):
                if not is_scored(q.cfg):
                    by_dec.setdefault(q.cfg.decoding.sampling(), []).append(i)
            for sampling, idx in by_dec.items():
                t0 = time.perf_counter()
                try:
                    answers = self._generate([queries[i].question for i in idx], sampling)
                except Exception:  # lose only this decoding group; the caller counts them
                    log.exception("generation failed")
                    continue
                dt = time.perf_counter() - t0
                for i, a in zip(idx, answers):
                    p = parse_answer(queries[i].cfg, a.text)
                    out[i] = Outcome(a.text, tuple(int(t) for t in a.token_ids), p.verdict,
                                     p.choice, timings={"generate_s": dt})
        return out  # None where the model failed

    def explain(self, q: Query, o: Outcome) -> Outcome:
        """Generate the monitor's answer in words (its decoding settings); keep the score."""
        import torch

        with torch.inference_mode():
            a = self._generate([q.question], q.cfg.decoding.sampling())[0]
        return replace(o, answer=a.text, token_ids=tuple(int(t) for t in a.token_ids),
                       explained=True)

    # ---------------------------------------------------------------- internals
    def _score(self, queries: list[Query]) -> list[Outcome]:
        asked = []
        for q in queries:
            options, positive = options_of(q.cfg)
            spelled = {o: variants(o) for o in options}
            asked.append((options, positive, spelled))
        t0 = time.perf_counter()
        scores = self.model.score_batch(
            self.memory, self.mask,
            [(q.question, [v for o in options for v in spelled[o]])
             for q, (options, _, spelled) in zip(queries, asked)], xkv=self.xkv)
        dt = time.perf_counter() - t0
        out = []
        for q, (options, positive, spelled), s in zip(queries, asked, scores):
            cfg = q.cfg
            probs = {o: float(sum(s.probs[v] for v in spelled[o])) for o in options}
            score = float(sum(probs[o] for o in positive))
            best = max(options, key=lambda o: probs[o])
            verdict = verdict_of_score(score, cfg.threshold, cfg.hysteresis)
            out.append(Outcome(best, (), verdict, best if cfg.answer == "choice" else None, score,
                               probs, float(s.coverage), timings={"score_s": dt}))
        return out

    def _generate(self, questions: list[str], sampling: Any) -> list[Any]:
        """Questions with the same decoding settings as one batch, on this memory's K/V."""
        return list(self.model.ask_batch([(self.xkv, q) for q in questions], sampling))


class TurnOnWatch:
    """Tells, for a scored monitor's result, whether it will turn the monitor ON in the alert
    rules, so the query stage generates words (``explain``) for exactly those results. It
    runs its own copy of the alert rule engine (`alerts.rules.RuleEngine`, same settings) over
    the same results, so it follows the same ON/OFF semantics (hysteresis, off_after_negatives,
    max_not_heard_s)."""

    def __init__(self, alerts_config: Any) -> None:
        from alerts.rules import RuleEngine

        self.rules = RuleEngine(alerts_config)

    def turns_on(self, result: Any) -> bool:
        d = self.rules.observe(result)
        return d.transition is not None and d.transition.state == "ON"


def answer_due(model: Any, memory: Any, mask: Any, queries: list[Query],
               make_result: Any, watch: TurnOnWatch | None = None) -> list[Any]:
    """Answer the due monitors about one memory -> one `MonitorResult` per query.

    ``make_result(query, outcome)`` builds the result (span, latency, ids...). A scored
    monitor with ``explain: true`` whose result turns it ON (``watch``) gets its answer
    generated in words before its result is built again. This is the single entry point
    the worker's query stage uses."""
    mq = MemoryQueries(model, memory, mask)
    results = []
    for q, o in zip(queries, mq.answer(queries)):
        if o is None:  # the model failed on it: no result (the caller counts what is missing)
            continue
        res = make_result(q, o)
        if o.score is not None and watch is not None and watch.turns_on(res) and q.cfg.explain:
            res = make_result(q, mq.explain(q, o))
        results.append(res)
    return results
