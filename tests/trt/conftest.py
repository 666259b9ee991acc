from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "af2-tiny"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.fail(f"AF2 fixture not found at {FIXTURE} (expected ../shared/fixtures/af2-tiny)")
    return FIXTURE


@pytest.fixture(scope="session")
def expected(fixture_dir) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def tiny(fixture_dir):
    from edge.model import AF2

    return AF2.load(fixture_dir / "checkpoint", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def tiny_onnx(tiny, tmp_path_factory) -> Path:
    from trt_builders.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    export_onnx(tiny, path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx_mixed(tiny, tmp_path_factory) -> Path:
    from trt_builders.export import export_onnx

    path = tmp_path_factory.mktemp("onnx16") / "encoder-fp16-mixed.onnx"
    export_onnx(tiny, path, precision="fp16-mixed")
    return path
