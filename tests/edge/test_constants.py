"""edge/constants.py: the audio facts every layer shares, defined once and importing nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from edge import constants as c

ROOT = Path(__file__).resolve().parents[2]


def test_a_clip_is_ten_seconds_at_16_khz_and_a_window_is_five_minutes():
    assert (c.SAMPLE_RATE, c.CLIP_SECONDS, c.CLIP_SAMPLES) == (16000, 10, 160000)
    assert c.CLIP_SAMPLES == c.SAMPLE_RATE * c.CLIP_SECONDS
    assert (c.TOKENS_PER_CLIP, c.MAX_CLIPS) == (64, 30)
    assert c.MAX_CLIPS * c.CLIP_SECONDS == 300


def test_importing_the_constants_pulls_in_no_other_module():
    code = ("import sys; before = set(sys.modules); import edge.constants; "
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.stdout.strip() == "['edge', 'edge.constants']"


def test_the_model_and_the_streams_use_these_very_numbers():
    from edge.model import config as model_config
    from edge.model.mel import LogMel, n_frames
    from streams.timeline import Piece

    assert model_config.SAMPLE_RATE is c.SAMPLE_RATE and model_config.CLIP_SAMPLES is c.CLIP_SAMPLES
    mel = LogMel()
    assert (mel.sample_rate, mel.samples) == (c.SAMPLE_RATE, c.CLIP_SAMPLES)
    out = mel(torch.zeros(1, c.CLIP_SAMPLES))
    assert out.shape == (1, n_frames(c.CLIP_SAMPLES), 64) == (1, 1001, 64)
    assert Piece(0, 0.0).rate == c.SAMPLE_RATE  # the timeline counts samples at this rate
