from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "af2-tiny"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.fail(f"AF2 fixture not found at {FIXTURE} (expected ../shared/fixtures/af2-tiny)")
    return FIXTURE


@pytest.fixture(scope="session")
def expected(fixture_dir) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def fixture_info(fixture_dir) -> dict:
    return json.loads((fixture_dir / "fixture.json").read_text())


@pytest.fixture(scope="session")
def af2(fixture_dir):
    from edge.model import AF2

    return AF2.load(fixture_dir / "checkpoint", dtype=torch.float32, device="cpu")


@pytest.fixture
def ckpt_copy(fixture_dir, tmp_path) -> Path:
    """A writable copy of the fixture checkpoint to break in tests."""
    dst = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "checkpoint", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    return dst
