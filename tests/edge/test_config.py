from pathlib import Path

import pytest

from edge.config import ConfigError, load_settings, parse_duration
from edge.demo import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo", "factory", "building"])
def test_worked_examples_are_valid(name):
    s = load_settings(ROOT / "configs" / f"{name}.yaml")
    assert s.streams and s.monitors


def test_demo_yaml_is_the_embedded_default():
    a = load_settings(ROOT / "configs" / "demo.yaml").model_dump()
    b = load_settings(data=DEMO_CONFIG).model_dump()
    assert a == b


def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300
    assert parse_duration("1.5h") == 5400 and parse_duration(12) == 12
    assert parse_duration("250ms") == 0.25
    for bad in ("5 parsecs", "-1s", True, None):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_env_overrides_yaml(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("model: {dir: /a, dtype: float32}\naudio: {hop: 10s, memory: 150s}\n"
                 "alerts: {mqtt: {host: yaml-host, port: 1884}}\n"
                 "streams: [{id: s, source: file, path: rec.wav}]\n")
    monkeypatch.setenv("FLAMINGO_EDGE_MODEL__DIR", "/from/env")
    monkeypatch.setenv("FLAMINGO_EDGE_ALERTS__MQTT__HOST", "env-host")
    monkeypatch.setenv("FLAMINGO_EDGE_AUDIO__HOP", "5s")
    s = load_settings(p)
    assert str(s.model.dir) == "/from/env" and s.model.dtype == "float32"
    assert s.alerts.mqtt.host == "env-host" and s.alerts.mqtt.port == 1884
    assert s.audio.hop == 5.0
    assert s.streams[0].path == tmp_path / "rec.wav"  # relative to the YAML file
    assert s.audio_mqtt.host == "env-host"  # audio broker defaults to the alert broker


def test_hop_and_memory_beyond_30_clips_is_refused():
    """`hop: 5s` with the default 5-min memory gave 59-clip windows; AF2 saw at most 30."""
    from edge.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_settings(data={"audio": {"hop": "5s"}})
    assert "59 clips" in str(e.value) and "memory <= 155s" in str(e.value)
    s = load_settings(data={"audio": {"hop": "5s", "memory": "155s", "window": "30s"}})
    assert s.audio.hop == 5.0


def test_errors_name_the_key_and_never_the_secret(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "alerts: {mqtt: {password: hunter2-secret}}\n"  # password without username
        "mqtt: {username: u, password: s3cr3t-value, port: 99999}\n"
        "audio: {hop: 20s}\n"
        "streams: [{id: 'bad id!', source: file, path: x.wav}, {id: f, source: file}]\n"
        "monitors: [{name: k, question: 'q?', triggers: ['volume > 3']},"
        " {name: j, question: 'q', answer: choice, choices: [a], every: 1m},"
        " {name: z, question: 'q', every: 1m, streams: [nope]}]\n"
        "bogus_key: 1\n"
    )
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    text = str(e.value)
    # list items by their id/name; an invalid id is not echoed (the index instead)
    for key in ("mqtt.port", "audio", "streams[0].id", "streams[f]", "monitors[k].triggers",
                "monitors[j]", "bogus_key", "alerts.mqtt"):
        assert key in text, key
    assert "hunter2" not in text and "s3cr3t" not in text


def test_errors_name_list_items_and_suggest_the_closest_key():
    """`monitors.1.questoin` made the operator count list items and spot the typo."""
    with pytest.raises(ConfigError) as e:
        load_settings(data={
            "monitors": [{"name": "a", "question": "q", "every": 60},
                         {"name": "knocking", "questoin": "q", "every": 60}],
            "streams": [{"id": "s", "source": "file", "path": "x", "sped": 3}],
            "alerts": {"mqtt": {"hots": "b"}}, "heath": {}})
    lines = e.value.problems
    assert "monitors[knocking].questoin: unknown key; did you mean `question`?" in lines
    assert "streams[s].sped: unknown key; did you mean `speed`?" in lines
    assert "alerts.mqtt.hots: unknown key; did you mean `host`?" in lines
    assert "heath: unknown key; did you mean `health`?" in lines
    with pytest.raises(ConfigError) as e:
        load_settings(data={"gate": {"zzzzzz": 1}})
    assert e.value.problems == ["gate.zzzzzz: unknown key"]  # nothing close: no guess


def test_unknown_stream_in_monitor(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_settings(data={"monitors": [{"name": "a", "question": "q", "every": 60,
                                          "streams": ["ghost"]}]})
    assert "ghost" in str(e.value)


def test_yaml_syntax_error_does_not_echo_content(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("alerts:\n  webhook: {secret: 'topsecret\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert "YAML syntax error" in str(e.value) and "topsecret" not in str(e.value)


def test_unparsable_env_json_is_a_config_error_naming_the_variable(monkeypatch):
    # complex fields from the environment are JSON; a typo must fail like any other bad
    # value (key + reason, no value), not with a pydantic-settings traceback
    monkeypatch.setenv("FLAMINGO_EDGE_STREAMS", '[{"id": "s", "password": "s3cr3t-env"')
    with pytest.raises(ConfigError) as e:
        load_settings(data={})
    text = str(e.value)
    assert "streams" in text and "FLAMINGO_EDGE_STREAMS" in text
    assert "s3cr3t" not in text


def test_mic_samplerate_is_range_checked():
    # samplerate 0 used to pass and then crash in the resampler / reopen the device forever
    for bad in (0, -16000, 10_000_000):
        with pytest.raises(ConfigError) as e:
            load_settings(data={"streams": [{"id": "m", "source": "mic", "samplerate": bad}]})
        assert "streams[m].samplerate" in str(e.value)
    s = load_settings(data={"streams": [{"id": "m", "source": "mic", "samplerate": 48000}]})
    assert s.streams[0].samplerate == 48000


def test_audio_max_gap_reaches_the_sources_timelines(tmp_path):
    from edge.metrics import Metrics
    from edge.sources import build_sources

    s = load_settings(data={"audio": {"max_gap": "5s"},
                            "streams": [{"id": "m", "source": "mqtt"}, {"id": "k", "source": "mic"}]})
    srcs = {type(x).__name__: x for x in build_sources(s, Metrics(), tmp_path)}
    assert srcs["MqttAudioSource"].timeline("m").max_gap_s == 5.0
    assert srcs["MicSource"].timeline.max_gap_s == 5.0
    with pytest.raises(ConfigError):
        load_settings(data={"audio": {"max_gap": "-1s"}})
