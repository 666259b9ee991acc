from __future__ import annotations

from pathlib import Path

import pytest
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="session")
def tiny(af2):
    return af2


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
