"""An operator's mistakes get one line naming what to fix, never a traceback (issue 12)."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from edge.cli import cli


def _one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [x for x in res.output.splitlines() if x.strip() and not x.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.mark.parametrize("content,reason", [
    # seeded: random bytes, but the same test id in every run and every xdist worker
    (random.Random(0).randbytes(5000), "not an audio file libsndfile can read"),
    (b"", "the file is empty"),
], ids=["random-bytes", "empty"])
def test_unreadable_audio_is_one_line_in_replay_and_publish_audio(tmp_path, content, reason):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(content)
    res = CliRunner().invoke(cli, ["replay", str(bad), "--no-progress", "--stream", "bench",
                                   "--data-dir", str(tmp_path)])
    line = _one_error_line(res)
    assert "stream bench" in line and str(bad) in line and reason in line
    # publish-audio says so before it tries the broker (none listens on this port)
    res = CliRunner().invoke(cli, ["publish-audio", str(bad), "--stream", "bench",
                                   "--port", "1"])
    line = _one_error_line(res)
    assert "stream bench" in line and str(bad) in line and reason in line


def test_missing_file_in_run_names_the_stream_and_the_file(tmp_path):
    missing = tmp_path / "gone.wav"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"streams: [{{id: lathe, source: file, path: {missing}}}]\n"
                   "alerts: {mqtt: {enabled: false}}\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--data-dir", str(tmp_path),
                                   "--log-format", "json"])
    line = _one_error_line(res)
    assert line == f"Error: stream lathe: cannot play audio file '{missing}': no such file"


def test_publish_audio_mic_that_cannot_open_is_one_line(tmp_path):
    """`publish-audio --mic` ended in a ~15-line traceback (PortAudioError / ValueError / the
    missing extra) when the microphone could not be opened, after connecting to the broker."""
    from click.testing import CliRunner

    from edge.cli import cli
    from tests.mqtt_broker import Mosquitto

    b = Mosquitto(tmp_path).start()
    try:
        res = CliRunner().invoke(cli, ["publish-audio", "--mic", "--device", "no such microphone 7f3a",
                                       "--stream", "press", "--port", str(b.port)])
    finally:
        b.stop()
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "microphone" in lines[0] and ("no such microphone 7f3a" in lines[0] or "mic` extra" in lines[0])
