"""`flamingo-edge alerts list|show` against a history written by a real pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from alerts.pipeline import AlertPipeline
from edge.cli import cli
from edge.metrics import Metrics
from tests.alerts.helpers import alternating, fast_config, result, wait_until


def _populate(data: Path) -> AlertPipeline:
    p = AlertPipeline(fast_config(None), Metrics(), "boot-C", data).start()
    for r in alternating(2):
        p.submit(r, np.zeros(800, np.float32), 8000)
    p.submit(result("positive", stream="yard", monitor="dog", answer="A dog is barking loudly."))
    assert wait_until(lambda: p.history is not None and p.history.count("alerts") == 3, 10)
    p.stop(2)
    return p


def test_list_and_show(tmp_path: Path) -> None:
    _populate(tmp_path)
    run = CliRunner().invoke
    r = run(cli, ["alerts", "list", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("ID") and len(lines) == 4
    assert "yard" in lines[1] and "A dog is barking loudly." in lines[1]  # newest first

    r = run(cli, ["alerts", "list", "--data-dir", str(tmp_path), "--monitor", "knock", "--json"])
    rows = [json.loads(x) for x in r.output.splitlines()]
    assert [x["seq"] for x in rows] == [2, 1] and all(x["monitor"] == "knock" for x in rows)

    r = run(cli, ["alerts", "list", "--data-dir", str(tmp_path), "--since", "1h", "-n", "1"])
    assert len(r.output.splitlines()) == 2

    first = rows[-1]
    r = run(cli, ["alerts", "show", first["id"][:8], "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert f"id:             {first['id']}" in r.output and "answer:         yes #0" in r.output
    assert str(tmp_path / "clips" / first["clip_flac"]) in r.output
    r = run(cli, ["alerts", "show", first["id"], "--json"], env={"FLAMINGO_EDGE_DATA_DIR": str(tmp_path)})
    assert json.loads(r.output) == first

    r = run(cli, ["alerts", "show", "nope", "--data-dir", str(tmp_path)])
    assert r.exit_code != 0 and "no single alert" in r.output


def test_missing_history_is_a_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["alerts", "list", "--data-dir", str(tmp_path / "none")])
    assert r.exit_code != 0 and "no alert history" in r.output


def test_cli_import_stays_cheap(tmp_path: Path) -> None:
    _populate(tmp_path)
    code = (
        "import sys; from edge.cli import main; sys.argv=['flamingo-edge','alerts','list','--data-dir',"
        f"{str(tmp_path)!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'alerts.mqtt_sink' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "knock" in out.stdout


def test_prune_removes_entities_no_longer_configured(broker, recorder_factory, tmp_path: Path) -> None:
    from tests.alerts.helpers import Recorder

    p = AlertPipeline(fast_config(broker), Metrics(), "boot-P", tmp_path)
    p.start(configured={"s1": ["knock", "glass"]})
    rec: Recorder = recorder_factory(broker, ["homeassistant/#"])
    assert rec.wait_for(lambda: len(rec.messages) >= 4, 10)
    p.stop(5)
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path}\n"
        "streams: [{id: s1, source: mqtt}]\n"
        "monitors: [{name: knock, kind: gate, triggers: ['level_dbfs > -20']}]\n"
        f"alerts: {{node_id: testnode, mqtt: {{host: {broker.host}, port: {broker.port}, topic_prefix: fe-test}}}}\n"
    )
    glass = "homeassistant/binary_sensor/testnode/s1_glass/config"
    run = CliRunner().invoke
    r = run(cli, ["alerts", "prune", "--config", str(cfg), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"would remove binary_sensor s1/glass  ({glass})"]
    assert "" not in rec.payloads(glass)
    r = run(cli, ["alerts", "prune", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"removed binary_sensor s1/glass  ({glass})"]
    assert rec.wait_for(lambda: rec.payloads(glass)[-1:] == [""], 5)
    r = run(cli, ["alerts", "prune", "--config", str(cfg)])
    assert r.output.strip() == "nothing to remove"
    r = run(cli, ["alerts", "prune", "--config", str(cfg), "--all"])
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 4  # knock, the level and input sensors, the event entity
    late = recorder_factory(broker, ["homeassistant/#"], client_id="late")
    time.sleep(0.5)
    assert late.messages == []  # nothing of this node is left retained


def test_answers_with_control_characters_stay_on_one_safe_line(tmp_path: Path) -> None:
    """A model's text answer went to the terminal raw in `alerts list` / `alerts show`: an ESC
    sequence could clear the screen or recolour it, a newline split the `show` field."""
    p = AlertPipeline(fast_config(None), Metrics(), "boot-C", tmp_path).start()
    p.submit(result("positive", stream="yard", monitor="dog", answer="bark\nbark\x1b[2J\x07 \u202eend"))
    assert wait_until(lambda: p.history is not None and p.history.count("alerts") == 1, 10)
    p.stop(2)
    run = CliRunner().invoke
    r = run(cli, ["alerts", "list", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 2, r.output
    assert r.output.splitlines()[1].endswith("bark bark\\x1b[2J\\x07 \\u202eend")
    r = run(cli, ["alerts", "show", "--data-dir", str(tmp_path), json.loads(
        run(cli, ["alerts", "list", "--data-dir", str(tmp_path), "--json"]).output)["id"]])
    assert r.exit_code == 0 and "answer:         bark\\nbark\\x1b[2J\\x07 \\u202eend\n" in r.output, r.output
    for out in (r.output,):
        assert not any(c in out for c in "\x1b\x07\u202e")
