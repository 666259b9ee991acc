"""A scored monitor's score reaches the retained answer JSON, the alert JSON and the history."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from alerts.pipeline import AlertPipeline
from edge.metrics import Metrics
from tests.alerts.helpers import Recorder, fast_config, result, wait_until
from tests.mqtt_broker import Mosquitto


def test_the_score_goes_where_the_answer_goes(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec = recorder_factory(broker, ["fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "boot-S", tmp_path).start()
    try:
        r = dataclasses.replace(result("positive", stream="kitchen", monitor="knock", answer="yes"),
                                score=0.875, threshold=0.7, hysteresis=0.1,
                                probs={"yes": 0.875, "no": 0.125}, coverage=0.93)
        p.submit(r)
        assert rec.wait_for(lambda: rec.payloads("fe-test/kitchen/knock/answer") != [], 10)
        answer = json.loads(rec.payloads("fe-test/kitchen/knock/answer")[-1])
        assert (answer["score"], answer["threshold"], answer["hysteresis"], answer["coverage"]) == (
            0.875, 0.7, 0.1, 0.93)
        assert answer["probs"] == {"yes": 0.875, "no": 0.125} and answer["explained"] is False
        assert rec.wait_for(lambda: rec.payloads("fe-test/events") != [], 10)
        assert json.loads(rec.payloads("fe-test/events")[0])["score"] == 0.875
        assert wait_until(lambda: p.history is not None and p.history.count("results") == 1, 5)
        assert p.history.list_results()[0]["score"] == 0.875
        # an unscored result says so
        p.submit(result("negative", stream="kitchen", monitor="glass"))
        assert rec.wait_for(lambda: rec.payloads("fe-test/kitchen/glass/answer") != [], 10)
        assert json.loads(rec.payloads("fe-test/kitchen/glass/answer")[-1])["score"] is None
    finally:
        p.stop(5)
