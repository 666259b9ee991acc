""""Ask now" (edge/worker/ask.py): a question goes through the worker's query queue with a
deadline, never runs on the caller's thread, and its answer goes to the asker, not the sinks."""

from __future__ import annotations

import threading
import time

import pytest

from edge.daemon import Daemon
from edge.sinks import CallbackSink
from edge.worker.ask import AskError
from streams.file import FileSource
from .recordings import recording
from .web.helpers import GATE, settings

from .fakes import FakeModel


class BlockingModel(FakeModel):
    """Scores only once ``gate`` is set (the worker is busy with a query meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def score_batch_kv(self, queries):
        self.entered.set()
        assert self.gate.wait(30)
        return super().score_batch_kv(queries)


@pytest.fixture
def played(tmp_path):
    rec = recording(tmp_path / "r.wav", seconds=40, loud=(10, 20))
    s = settings(tmp_path, [GATE], http={"enabled": False})
    model = BlockingModel()
    got = []
    d = Daemon(s, model=model, sources=[FileSource(rec, "s", speed=0)],  # live: deadlines apply
               alerts=False, sinks=[CallbackSink(lambda r, a, sr: got.append(r))])
    d.start()
    try:
        assert d.run(timeout=60)
        yield d, model, got
    finally:
        d.stop(timeout=2)


def test_an_answer_comes_back_on_the_future_not_through_the_sinks(played):
    d, model, got = played
    before = len(got)
    fut = d.worker.ask("s", "Is it {loud}?", answer="yes_no", window_s=40)
    r = fut.result(10)
    assert r.monitor == "ask-now" and r.stream == "s" and r.extra["reason"] == "ask"
    assert model.score_calls[-1] == ("Is it {loud}?", ["yes", "Yes", "no", "No"])  # literal
    assert r.probs["yes"] > r.probs["no"] and r.score == pytest.approx(r.probs["yes"])
    assert r.extra["clips"] == [0, 1, 2, 3]  # the 40-s window: the last four clips
    assert len(got) == before


def test_it_waits_in_the_queue_and_misses_its_deadline_like_any_query(played):
    d, model, _ = played
    model.gate.clear()
    first = d.worker.ask("s", "first?", answer="yes_no")
    assert model.entered.wait(10)  # the worker is now busy answering the first question
    t0 = time.monotonic()
    late = d.worker.ask("s", "second?", answer="yes_no", deadline_s=0.05)
    assert time.monotonic() - t0 < 0.5 and not late.done()  # queued, not run by the caller
    time.sleep(0.2)
    model.gate.set()
    assert first.result(10).monitor == "ask-now"
    with pytest.raises(AskError) as e:
        late.result(10)
    assert e.value.reason == "deadline"
    assert d.metrics.queries_missed.labels("s", "ask-now")._value.get() == 1


def test_waiting_questions_are_bounded_and_abandoned_at_shutdown(played):
    d, model, _ = played
    model.gate.clear()
    busy = d.worker.ask("s", "busy?", answer="yes_no")
    assert model.entered.wait(10)
    waiting = [d.worker.ask("s", f"q{i}?", max_waiting=2) for i in range(2)]
    with pytest.raises(AskError) as e:
        d.worker.ask("s", "one too many?", max_waiting=2)
    assert e.value.reason == "busy"
    left = d.stop(timeout=1)  # the worker is stuck in the model past the drain deadline
    assert left["queries_queued"] == 2 and left["queries_running"] == 1
    for f in waiting:
        with pytest.raises(AskError) as e:
            f.result(5)
        assert e.value.reason == "shutdown"
    model.gate.set()
    assert busy.result(5).monitor == "ask-now"  # the one in the model still reaches its asker
    d._worker_thread.join(5)  # the worker finished that answer's bookkeeping
    # too late for the drain deadline: counted once, as missed, never also as run
    assert d.metrics.queries_missed.labels("s", "ask-now")._value.get() == 3
    assert d.metrics.queries.labels("s", "ask-now")._value.get() == 0


def test_an_answer_after_the_asker_stopped_waiting_is_counted_missed_and_logged(played, caplog):
    """The web API waits ``ask_deadline`` + 120 s (asyncio.wait_for on the wrapped future); when
    it gives up it answers 504 and the timeout cancels the worker's future. The answer that
    comes later has nobody to go to: fe_queries_missed{monitor="ask-now"} and a log line, not
    fe_queries as if someone had been answered."""
    import asyncio

    from tests.conftest import log_events

    d, model, _ = played
    model.gate.clear()
    fut = d.worker.ask("s", "slow?", answer="yes_no")
    assert model.entered.wait(10)

    async def asker() -> None:  # what edge/web/api.py does, with a shorter patience
        await asyncio.wait_for(asyncio.wrap_future(fut), 0.1)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asker())
    assert fut.cancelled()
    model.gate.set()
    m = d.metrics
    deadline = time.monotonic() + 10
    while m.queries_missed.labels("s", "ask-now")._value.get() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    d.stop(timeout=5)  # joins the worker: its bookkeeping of the answer is done
    assert m.queries_missed.labels("s", "ask-now")._value.get() == 1
    assert m.queries.labels("s", "ask-now")._value.get() == 0
    late = log_events(caplog.records, "answer came after its asker stopped waiting")
    assert len(late) == 1 and late[0]["monitor"] == "ask-now" and late[0]["stream"] == "s"


def test_no_model_or_no_audio_is_said_at_once(tmp_path):
    rec = recording(tmp_path / "r.wav", seconds=20, loud=(0, 10))
    s = settings(tmp_path, [GATE], http={"enabled": False})
    d = Daemon(s, sources=[FileSource(rec, "s", speed=0)], alerts=False)
    d.start()
    try:
        with pytest.raises(AskError) as e:
            d.worker.ask("s", "q?")
        assert e.value.reason == "no_model"
    finally:
        d.stop(timeout=2)
    d = Daemon(s, model=FakeModel(), sources=[], alerts=False)
    d.start()
    try:
        with pytest.raises(AskError) as e:
            d.worker.ask("s", "q?")
        assert e.value.reason == "no_audio"
    finally:
        d.stop(timeout=2)
