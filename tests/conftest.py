"""Fixtures shared by every test folder: the official af2-tiny fixture and the model on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "af2-tiny"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.fail(f"AF2 fixture not found at {FIXTURE} (expected ../shared/fixtures/af2-tiny)")
    return FIXTURE


@pytest.fixture(scope="session")
def expected(fixture_dir):
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def fixture_info(fixture_dir) -> dict:
    return json.loads((fixture_dir / "fixture.json").read_text())


@pytest.fixture(scope="session")
def af2(fixture_dir):
    """The fixture checkpoint loaded in float32 on the CPU (shared: treat as read-only)."""
    import torch

    from edge.model import AF2

    return AF2.load(fixture_dir / "checkpoint", dtype=torch.float32, device="cpu")
