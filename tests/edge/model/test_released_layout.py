"""Every tensor our model needs exists, with the same shape, in the released 0.5B/1.5B/3B
checkpoints (`af2_layout.json` lists their keys and shapes), so real weights load."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge.model.checkpoint import meta_skeleton, official_candidates
from edge.model.config import RELEASES, AF2Config


@pytest.fixture(scope="module")
def layout(af2_layout):
    return af2_layout


@pytest.mark.parametrize("release", RELEASES)
def test_released_checkpoint_has_every_tensor_we_load(layout, release):
    keys = layout[release]
    vocab = keys["lang_encoder.model.embed_tokens.weight"][0]
    cfg = AF2Config.released(release)
    cfg = cfg.with_lm(replace(cfg.lm, vocab_size=vocab))
    skeleton = meta_skeleton(cfg)  # no memory
    for name, t in skeleton.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        key = next((k for k in official_candidates(name) if k in keys), None)
        assert key is not None, f"{release}: no checkpoint key for {name}"
        assert tuple(keys[key]) == tuple(t.shape), f"{release}: {key}"
    n = sum(t.numel() for t in skeleton.state_dict().values())
    # what we hold: the released model minus the unused encoder head / fusion branch / copies
    expected_m = {"0.5B": 1074.7, "1.5B": 2529.0, "3B": 4798.9}[release]
    assert expected_m - 10 < n / 1e6 < expected_m  # ~8 M unused: head, tscam, fusion, STFT
