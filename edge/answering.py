"""Answering the due monitors about one memory (or several: streams due in the same cycle).

    mq = MemoryQueries(model, memory, mask)   # one cross-attention K/V for all of them
    outcomes = mq.answer([Query(cfg, question), ...])
    outcome = mq.explain(query, outcome)       # words for a scored monitor that turned ON

`answer: yes_no` and `answer: choice` monitors are **scored** (``scored: true``, the default):
`AF2.score_batch_kv` (all scored questions due together in one batched prefill) gives the
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
it (`edge.monitors.parse_answer`); text queries whose decoding settings differ at most in
``max_new_tokens`` go to the model as one batch (each row stops at its own length). All
queries about one memory share one cross-attention K/V, whatever their decoding settings;
queries about several memories (streams due in the same cycle) share the batches
(`answer_memories`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeAlias

import structlog

from .monitors import _norm, parse_answer
from .results import MonitorResult, Verdict, verdict_of_score

if TYPE_CHECKING:  # torch and the model only with a model; types only here
    import torch

    from alerts.config import AlertsConfig

    from .config import MonitorConfig
    from .model import Answer, Sampling, Scores
    from .model.decoder import CrossKV

log = structlog.get_logger(__name__)


class QueryModel(Protocol):
    """What answering (and the worker's query stage) needs of `edge.model.AF2`."""

    def memory(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def cross_kv(self, memory: torch.Tensor, mask: torch.Tensor) -> CrossKV: ...

    def ask_batch(self, queries: list[tuple[CrossKV, str]], sampling: Sampling,
                  max_new_tokens: list[int] | None = None) -> list[Answer]: ...

    def score_batch_kv(self, queries: list[tuple[CrossKV, str, list[str]]]) -> list[Scores]: ...


@dataclass(frozen=True)
class Query:
    cfg: MonitorConfig
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


def is_scored(cfg: MonitorConfig) -> bool:
    return cfg.answer in ("yes_no", "choice") and bool(getattr(cfg, "scored", True))


def variants(option: str) -> list[str]:
    """The spellings of one option that are scored together (see the module docstring)."""
    out: list[str] = []
    for v in (option, option.lower(), option[:1].upper() + option[1:].lower()):
        if v and v not in out:
            out.append(v)
    return out


def options_of(cfg: MonitorConfig) -> tuple[list[str], set[str]]:
    """(options, the positive ones) of a scored monitor."""
    if cfg.answer == "yes_no":
        return ["yes", "no"], {cfg.positive}
    pos = {_norm(a) for a in cfg.alert_on}
    return list(cfg.choices), {c for c in cfg.choices if _norm(c) in pos}


# at most this many scored questions (and no text question) about one memory attend through
# the folded projections (break-even: about 64 prompt tokens x 8 heads against 1024 channels)
FOLD_MAX = 4


class MemoryQueries:
    """Every question about one memory: the cross-attention K/V is computed once, lazily."""

    def __init__(self, model: QueryModel, memory: torch.Tensor, mask: torch.Tensor) -> None:
        self.model, self.memory, self.mask = model, memory, mask
        self._xkv: CrossKV | None = None
        self._folded: CrossKV | None = None
        self.cross_kv_s = 0.0

    @property
    def xkv(self) -> CrossKV:
        if self._xkv is None:
            t0 = time.perf_counter()
            self._xkv = self.model.cross_kv(self.memory, self.mask)
            self.cross_kv_s = time.perf_counter() - t0
        return self._xkv

    def scoring_kv(self, n_scored: int, n_text: int) -> CrossKV:
        """What the scored questions attend through: the cross K/V when they are computed
        anyway (text questions) or there are many scored questions, else the memory with the
        projections folded into the queries (`AF2.cross_memory`: about 4x cheaper for a few
        short prompts, nothing to compute up front)."""
        fold: Callable[[torch.Tensor, torch.Tensor], CrossKV] | None = getattr(
            self.model, "cross_memory", None)  # AF2 has it; a model without it: the K/V
        if self._xkv is None and n_text == 0 and n_scored <= FOLD_MAX and fold is not None:
            if self._folded is None:
                self._folded = fold(self.memory, self.mask)
            return self._folded
        return self.xkv

    def answer(self, queries: list[Query]) -> list[Outcome | None]:
        return answer_memories(self.model, [(self, queries)])[0]

    def explain(self, q: Query, o: Outcome) -> Outcome:
        """Generate the monitor's answer in words (its decoding settings); keep the score."""
        import torch

        with torch.inference_mode():
            sampling = q.cfg.decoding.sampling()
            a = self.model.ask_batch([(self.xkv, q.question)], sampling,
                                     max_new_tokens=[sampling.max_new_tokens])[0]
        return replace(o, answer=a.text, token_ids=tuple(int(t) for t in a.token_ids),
                       explained=True)


Row: TypeAlias = "tuple[CrossKV, Query]"  # (what the question attends through, the question)
MakeResult = Callable[[Query, Outcome], MonitorResult]


def answer_memories(model: QueryModel, items: list[tuple[MemoryQueries, list[Query]]]
                    ) -> list[list[Outcome | None]]:
    """The queries of several memories (several streams due at once, or several windows of
    one stream) -> per memory, one `Outcome` per query (None where the model failed on it).

    Model calls: every memory's cross K/V once (`MemoryQueries.xkv`; a memory asked only a few
    scored questions attends through its folded projections instead, `scoring_kv`); all
    scored queries of all memories as one `AF2.score_batch_kv`; the text queries whose decoding settings differ
    at most in ``max_new_tokens`` as one `AF2.ask_batch` (each row stops at its own length).
    The model batches them in chunks of ``max_batch`` rows. A failed call is retried one query
    at a time, so a failure costs only the monitors whose own query fails (logged)."""
    import torch

    out: list[list[Outcome | None]] = [[None] * len(qs) for _, qs in items]
    ok: list[tuple[int, int]] = []
    kvs: dict[int, CrossKV] = {}  # memory -> what its scored questions attend through
    for j, (mq, qs) in enumerate(items):
        if not qs:
            continue
        n_scored = sum(1 for q in qs if is_scored(q.cfg))
        try:  # computed once per memory, here so a failure stays with it
            if n_scored < len(qs):
                mq.xkv  # noqa: B018
            kvs[j] = mq.scoring_kv(n_scored, len(qs) - n_scored)
        except Exception:  # a failed memory fails only its queries
            log.exception("cross-attention K/V failed")
            continue
        ok += [(j, i) for i in range(len(qs))]
    scored = [(j, i) for j, i in ok if is_scored(items[j][1][i].cfg)]
    by_dec: dict[Sampling, list[tuple[int, int]]] = {}
    for j, i in ok:
        cfg = items[j][1][i].cfg
        if not is_scored(cfg):
            by_dec.setdefault(replace(cfg.decoding.sampling(), max_new_tokens=1), []).append((j, i))
    with torch.inference_mode():
        if scored:
            rows = [(kvs[j], items[j][1][i]) for j, i in scored]
            for (j, i), o in zip(scored, _isolated(_score, model, rows, "scoring")):
                out[j][i] = o
        for idx in by_dec.values():
            rows = [(items[j][0].xkv, items[j][1][i]) for j, i in idx]
            for (j, i), o in zip(idx, _isolated(_generate, model, rows, "generation")):
                out[j][i] = o
    return out


def _isolated(fn: Callable[[QueryModel, list[Row]], list[Outcome]], model: QueryModel,
              rows: list[Row], what: str) -> list[Outcome | None]:
    """``fn(model, rows)`` as one call; if it fails, each row alone (None where it fails)."""
    try:
        return list(fn(model, rows))
    except Exception:  # retried one query at a time below
        if len(rows) == 1:
            log.exception("model call failed", call=what)
            return [None]
        log.warning("batched model call failed; retrying one query at a time", call=what,
                    queries=len(rows), exc_info=True)
    out: list[Outcome | None] = []
    for r in rows:
        try:
            out += fn(model, [r])
        except Exception:  # only this query fails; the others go on
            log.exception("model call failed", call=what)
            out.append(None)
    return out


def _score(model: QueryModel, rows: list[Row]) -> list[Outcome]:
    asked = []
    for _, q in rows:
        options, positive = options_of(q.cfg)
        spelled = {o: variants(o) for o in options}
        asked.append((options, positive, spelled))
    t0 = time.perf_counter()
    scores = model.score_batch_kv(
        [(kv, q.question, [v for o in options for v in spelled[o]])
         for (kv, q), (options, _, spelled) in zip(rows, asked)])
    dt = time.perf_counter() - t0
    out = []
    for (_, q), (options, positive, spelled), s in zip(rows, asked, scores):
        cfg = q.cfg
        probs = {o: float(sum(s.probs[v] for v in spelled[o])) for o in options}
        score = float(sum(probs[o] for o in positive))
        best = max(options, key=lambda o: probs[o])
        verdict = verdict_of_score(score, cfg.threshold, cfg.hysteresis)
        out.append(Outcome(best, (), verdict, best if cfg.answer == "choice" else None, score,
                           probs, float(s.coverage), timings={"score_s": dt, "batch": len(rows)}))
    return out


def _generate(model: QueryModel, rows: list[Row]) -> list[Outcome]:
    """Text queries whose decoding settings differ at most in length, as one batch, each on
    its memory's K/V, parsed by its monitor."""
    samplings = [q.cfg.decoding.sampling() for _, q in rows]
    t0 = time.perf_counter()
    answers = model.ask_batch([(kv, q.question) for kv, q in rows], samplings[0],
                              max_new_tokens=[s.max_new_tokens for s in samplings])
    dt = time.perf_counter() - t0
    out = []
    for (_, q), a in zip(rows, answers):
        p = parse_answer(q.cfg, a.text)
        out.append(Outcome(a.text, tuple(int(t) for t in a.token_ids), p.verdict, p.choice,
                           timings={"generate_s": dt, "batch": len(rows)}))
    return out


class TurnOnWatch:
    """Tells, for a scored monitor's result, whether it will turn the monitor ON in the alert
    rules, so the query stage generates words (``explain``) for exactly those results. It
    runs its own copy of the alert rule engine (`alerts.rules.RuleEngine`, same settings) over
    the same results, so it follows the same ON/OFF semantics (hysteresis, off_after_negatives,
    max_not_heard_s)."""

    def __init__(self, alerts_config: AlertsConfig) -> None:
        from alerts.rules import RuleEngine

        self.rules = RuleEngine(alerts_config)

    def turns_on(self, result: MonitorResult) -> bool:
        d = self.rules.observe(result)
        return d.transition is not None and d.transition.state == "ON"


def answer_due(model: QueryModel, memory: torch.Tensor, mask: torch.Tensor, queries: list[Query],
               make_result: MakeResult, watch: TurnOnWatch | None = None) -> list[MonitorResult]:
    """Answer the due monitors about one memory -> one `MonitorResult` per query (see
    `answer_due_many`)."""
    return answer_due_many(model, [(memory, mask, queries, make_result)], watch)[0]


Job: TypeAlias = "tuple[torch.Tensor, torch.Tensor, list[Query], MakeResult]"  # memory, mask, ...


def answer_due_many(model: QueryModel, jobs: list[Job],
                    watch: TurnOnWatch | None = None) -> list[list[MonitorResult]]:
    """Answer the due monitors of several memories (``(memory, mask, queries, make_result)``
    per memory: one stream's window, or several streams due in the same cycle) as shared
    batches (`answer_memories`) -> per job, one `MonitorResult` per answered query.

    ``make_result(query, outcome)`` builds the result (span, latency, ids...). A scored
    monitor with ``explain: true`` whose result turns it ON (``watch``) gets its answer
    generated in words before its result is built again. This is the single entry point
    the worker's query stage uses."""
    mqs = [MemoryQueries(model, memory, mask) for memory, mask, _, _ in jobs]
    outcomes = answer_memories(model, [(mq, qs) for mq, (_, _, qs, _) in zip(mqs, jobs)])
    all_results = []
    for mq, (_, _, queries, make_result), outs in zip(mqs, jobs, outcomes):
        results = []
        for q, o in zip(queries, outs):
            if o is None:  # the model failed on it: no result (the caller counts what is missing)
                continue
            res = make_result(q, o)
            if o.score is not None and watch is not None and watch.turns_on(res) and q.cfg.explain:
                try:
                    res = make_result(q, mq.explain(q, o))
                except Exception:  # the score stands; the words are a bonus
                    log.exception("explaining failed; the result keeps its best option",
                                  monitor=q.cfg.name)
            results.append(res)
        all_results.append(results)
    return all_results
