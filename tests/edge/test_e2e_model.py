"""End to end with the fixture model: a 2-minute recording replayed through the daemon.

A monitor every 30 s of audio gives 4 results; each result's memory is bit-identical to
`AF2.memory(AF2.encode(clips), mask)` computed offline from the same clips, and its token
ids equal `AF2.ask` on that offline memory.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from edge.model import Sampling
from tests.conftest import FIXTURE

QUESTION = "What sound is this? Is anything abnormal?"


def _model_dir():
    for d in (FIXTURE / "checkpoint", FIXTURE):
        if (d / "safe_ckpt").exists():
            return d
    pytest.fail(f"AF2 fixture model not found under {FIXTURE} (it is part of the checkout)")


@pytest.fixture(scope="module")
def model():
    from edge.model import AF2

    return AF2.load(_model_dir())


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from edge.demo import generate_demo

    p = tmp_path_factory.mktemp("e2e") / "two-minutes.wav"
    sf.write(p, generate_demo(120.0), 16000, subtype="PCM_16")
    return p


MONITORS = [
    {"name": "whole", "question": QUESTION, "answer": "text", "every": "30s", "window": "5m",
     "decoding": {"max_new_tokens": 12}},
    {"name": "recent", "question": "Is there knocking? Answer yes or no.", "every": "30s",
     "window": "30s", "decoding": {"max_new_tokens": 6}},
]


def test_streaming_equals_offline(model, recording, tmp_path):
    from edge.config import load_settings
    from edge.daemon import Daemon
    from edge.sinks import CallbackSink
    from edge.windows import prepare_clip
    from streams.file import FileSource

    s = load_settings(data={
        "data_dir": str(tmp_path),
        "streams": [{"id": "rec", "source": "file", "path": str(recording)}],
        "monitors": MONITORS,
    })
    results, memories = [], {}

    def on_memory(stream, clip, view, memory):
        memories[(clip, len(view.clips))] = (view, memory.clone())

    d = Daemon(s, model=model, sources=[FileSource(recording, "rec", speed=0, start_time=0.0)],
               sinks=[CallbackSink(lambda r, a, sr: results.append(r))], lossless=True,
               alerts=False, http=False, log_results=False, on_memory=on_memory)
    d.start()
    try:
        assert d.run(timeout=240)
    finally:
        d.stop()
    assert len(results) == 8  # 2 monitors x (30, 60, 90, 120 s)
    assert sorted({r.end.timestamp() for r in results}) == [30.0, 60.0, 90.0, 120.0]

    # offline: the same clips, the same loudness policy, encoded in one call
    y, _sr = sf.read(recording, dtype="float32")
    clips = torch.from_numpy(np.stack([prepare_clip(y[i * 160000:(i + 1) * 160000])
                                       for i in range(12)]))
    tokens = model.encode(clips)
    for r in results:
        k = r.extra["clip"]
        first = r.extra["clips"][0]
        mask = torch.ones(k + 1 - first)
        offline = model.memory(tokens[first:k + 1], mask)
        view, streamed = memories[(k, k + 1 - first)]
        assert torch.equal(view.tokens, tokens[first:k + 1])
        assert torch.equal(streamed, offline), f"memory differs at clip {k}"
        n = 12 if r.monitor == "whole" else 6
        ans = model.ask(offline, mask, r.question, Sampling(max_new_tokens=n))
        if r.monitor == "recent":  # yes_no: scored on the streamed memory = scored offline
            # the only question on its memory: it attends through the folded projections
            sc = model.score(offline, mask, r.question, options=["yes", "Yes", "no", "No"],
                             xkv=model.cross_memory(offline, mask))
            assert r.score == pytest.approx(sc.probs["yes"] + sc.probs["Yes"], abs=1e-9)
            assert r.coverage == pytest.approx(sc.coverage, abs=1e-9)
            kv = model.score(offline, mask, r.question, options=["yes", "Yes", "no", "No"])
            assert r.score == pytest.approx(kv.probs["yes"] + kv.probs["Yes"], abs=1e-5)
        if r.monitor == "whole" or r.extra["explained"]:
            assert list(r.token_ids) == list(ans.token_ids)
            assert r.answer == ans.text
        else:
            assert r.token_ids == () and r.answer in ("yes", "no")
        assert r.model_id == model.model_id
        assert r.start.timestamp() == first * 10.0 and r.end.timestamp() == (k + 1) * 10.0
    whole = sorted((r for r in results if r.monitor == "whole"), key=lambda r: r.end)
    assert [len(r.extra["clips"]) for r in whole] == [3, 6, 9, 12]


def test_replay_cli_json(model, recording, tmp_path):
    from click.testing import CliRunner

    from edge.cli import cli

    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({"streams": [{"id": "rec", "source": "mqtt"}],
                                   "monitors": MONITORS[1:]}))
    res = CliRunner().invoke(cli, ["replay", str(recording), "--config", str(cfg), "--json",
                                   "--no-progress", "--model", str(_model_dir()),
                                   "--data-dir", str(tmp_path), "--start", "2025-01-01T00:00:00"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 4
    for d in lines:
        assert {"stream", "monitor", "start", "end", "answer", "token_ids", "verdict"} <= set(d)
        assert d["stream"] == "rec" and d["monitor"] == "recent"
    assert [d["end_s"] for d in lines] == [30.0, 60.0, 90.0, 120.0]
    assert lines[0]["start"] == "2025-01-01T00:00:00+00:00"


def test_onnxruntime_encoder_backend_through_the_daemon(model, recording, tmp_path):
    """`model.encoder.backend: onnxruntime` encodes the streamed clips with the exported graph;
    the memory then agrees with the offline PyTorch memory within the export tolerance."""
    pytest.importorskip("onnxruntime")
    from edge.config import load_settings
    from edge.daemon import Daemon
    from edge.sinks import CallbackSink
    from edge.windows import prepare_clip
    from streams.file import FileSource

    s = load_settings(data={
        "data_dir": str(tmp_path),
        "model": {"encoder": {"backend": "onnxruntime", "max_batch": 4}},
        "streams": [{"id": "rec", "source": "file", "path": str(recording)}],
        "monitors": [MONITORS[0]],
    })
    memories = {}
    d = Daemon(s, model=model, sources=[FileSource(recording, "rec", speed=0, start_time=0.0)],
               sinks=[CallbackSink(lambda r, a, sr: None)], lossless=True, alerts=False,
               http=False, log_results=False,
               on_memory=lambda st, clip, view, mem: memories.__setitem__(clip, view.tokens.clone()))
    d.start()
    try:
        assert d.worker.encoder.describe().startswith("onnxruntime")
        assert d.run(timeout=240)
    finally:
        d.stop()
    assert list((tmp_path / "engines").glob("encoder-*.onnx"))  # exported once, cached
    y, _ = sf.read(recording, dtype="float32")
    clips = torch.from_numpy(np.stack([prepare_clip(y[i * 160000:(i + 1) * 160000])
                                       for i in range(12)]))
    offline = model.encode(clips)
    streamed = memories[11]
    assert streamed.shape == offline.shape
    assert float((streamed - offline).norm() / offline.norm()) < 1e-4


def test_streaming_equals_offline_with_drops_and_gaps(model, recording):
    """The offline equality also holds when clips are dropped (backlog), a short outage left
    an all-gap clip (not encoded) and a long outage started a fresh clip grid: every window is
    its slot range, and its memory equals `AF2.memory` over the same clips with the same mask
    (zero tokens in the masked slots)."""
    from edge.config import load_settings
    from edge.metrics import Metrics
    from edge.windows import prepare_clip
    from edge.worker import InferenceWorker, StreamState
    from streams.timeline import Piece

    s = load_settings(data={
        "streams": [{"id": "rec", "source": "mqtt"}],
        "monitors": [{"name": "minute", "question": QUESTION, "every": "10s", "window": "1m",
                      "decoding": {"max_new_tokens": 1}}],
        "audio": {"max_pending_clips": 2},
    })
    st = StreamState(s.streams[0], s)
    views = {}
    w = InferenceWorker({"rec": st}, s, model=model, metrics=Metrics(),
                        on_memory=lambda sid, k, view, mem: views.__setitem__(k, (view, mem.clone())))
    y, _ = sf.read(recording, dtype="float32")
    C = 160000

    def step_all():
        while w.step():
            pass

    st.timeline.add(Piece(0, 1000.0))
    st.ring.append(0, y[:4 * C])  # 4 clips at once, 2 may wait: slots 0 and 1 are dropped
    step_all()
    st.ring.append(5 * C, y[5 * C:6 * C])  # 10 s lost: slot 4 is all gap (not encoded)
    step_all()
    # a 5-min outage: a new piece with a fresh grid at the next sample, 30 slots skipped
    st.timeline.add(Piece(6 * C, 1000.0 + 360.0, cause="gap", gap_s=300.0))
    st.ring.append(6 * C, y[6 * C:8 * C])
    step_all()
    assert sorted(views) == [2, 3, 5, 36, 37]
    encoded = {2: 2, 3: 3, 5: 5, 36: 6, 37: 7}  # slot -> clip of the recording
    assert [c.index for c in st.memory.clips()] == [36, 37]  # 5 min later, the rest aged out
    tokens = model.encode(torch.from_numpy(np.stack(
        [prepare_clip(y[i * C:(i + 1) * C]) for i in encoded.values()])))
    by_slot = dict(zip(encoded, tokens))
    for k, (view, streamed) in views.items():
        first = max(0, k - 5)
        assert list(view.slots) == list(range(first, k + 1))
        mask = torch.tensor([1.0 if j in by_slot else 0.0 for j in range(first, k + 1)])
        toks = torch.stack([by_slot.get(j, torch.zeros_like(tokens[0])) for j in range(first, k + 1)])
        assert torch.equal(view.mask, mask) and torch.equal(view.tokens, toks)
        assert torch.equal(streamed, model.memory(toks, mask)), f"memory differs at slot {k}"
    assert views[5][0].mask.tolist() == [0, 0, 1, 1, 0, 1]
    assert views[5][0].t_start == 1020.0 and views[5][0].t_end == 1060.0
    assert views[37][0].mask.sum() == 2 and list(views[37][0].slots) == list(range(32, 38))
    assert views[37][0].t_start == 1360.0 and views[37][0].t_end == 1380.0
