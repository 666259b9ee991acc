"""Model tests: fixtures shared with other folders live in tests/conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def ckpt_copy(fixture_dir, tmp_path) -> Path:
    """A writable copy of the fixture checkpoint to break in tests."""
    dst = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "checkpoint", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    return dst
