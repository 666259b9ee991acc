"""The TensorRT build path against a stand-in `tensorrt` module (CPU).

The stand-in records what the builder is asked to do; it checks our control flow (flags,
per-layer precision, profile, timing cache, metadata, reuse/rebuild decisions), not TensorRT
itself. scripts/gpu_check.sh runs the real thing on a GPU machine.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from trt_builders import tensorrt_engine as te
from trt_builders.export import onnx_sha256, sha256_file
from trt_builders.metadata import EngineMeta, Profile, engine_problems, meta_path


class _Enum:
    def __init__(self, kind, name):
        self.kind, self.name = kind, name

    def __str__(self):
        return f"{self.kind}.{self.name}"

    def __int__(self):
        return hash(self.name) % 16


def _ns(kind, *names):
    return types.SimpleNamespace(**{n: _Enum(kind, n) for n in names})


class FakeTensor:
    def __init__(self, name, dtype, shape=(-1, 64, 256)):
        self.name, self.dtype, self.shape = name, dtype, shape


class FakeLayer:
    def __init__(self, trt, name, ltype, out_dtype):
        self.name, self.type = name, getattr(trt.LayerType, ltype)
        self.outputs = [FakeTensor(name + ":0", getattr(trt, out_dtype))]
        self.num_outputs = 1
        self.precision = None
        self.output_types = {}

    def get_output(self, j):
        return self.outputs[j]

    def set_output_type(self, j, t):
        self.output_types[j] = t


class FakeNetwork:
    def __init__(self, trt, flags):
        self.flags, self.trt, self.layers = flags, trt, []

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return FakeTensor("clips", self.trt.float32, (-1, 160000))

    def get_output(self, i):
        return FakeTensor("tokens", self.trt.float32)


class FakeCache:
    def __init__(self, blob):
        self.blob = blob

    def serialize(self):
        return self.blob + b"+timed"


class FakeConfig:
    def __init__(self):
        self.flags, self.cleared, self.profiles, self.cache, self.pool = set(), set(), [], None, None

    def set_memory_pool_limit(self, pool, n):
        self.pool = n

    def set_flag(self, f):
        self.flags.add(f.name)

    def clear_flag(self, f):
        self.cleared.add(f.name)

    def add_optimization_profile(self, p):
        self.profiles.append(p)

    def create_timing_cache(self, blob):
        return FakeCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, mn, opt, mx):
        self.shapes[name] = (mn, opt, mx)


def make_fake_trt(version="10.3.0", weak_fp16=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    for n, v in (("float32", "FLOAT"), ("float16", "HALF"), ("int32", "INT32"), ("int64", "INT64"),
                 ("bool", "BOOL")):
        setattr(trt, n, _Enum("DataType", v))
    trt.FLOAT, trt.HALF, trt.INT64 = trt.float32, trt.float16, trt.int64
    trt.LayerType = _ns("LayerType", "NORMALIZATION", "SOFTMAX", "REDUCE", "MATRIX_MULTIPLY",
                        "CONVOLUTION", "UNARY", "CONSTANT", "SHAPE", "ELEMENTWISE")
    flags = ["OBEY_PRECISION_CONSTRAINTS", "TF32"] + (["FP16"] if weak_fp16 else [])
    trt.BuilderFlag = _ns("BuilderFlag", *flags)
    trt.NetworkDefinitionCreationFlag = _ns("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
    trt.MemoryPoolType = _ns("MemoryPoolType", "WORKSPACE")
    trt.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda s, lvl=2: None})
    trt.built = []

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return FakeNetwork(trt, flags)

        def create_builder_config(self):
            return FakeConfig()

        def create_optimization_profile(self):
            return FakeProfile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            return b"ENGINE:" + str(sorted(config.flags)).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            L = lambda *a: FakeLayer(trt, *a)  # noqa: E731
            self.network.layers = [
                L("/front/Conv", "CONVOLUTION", "float32"), L("/front/Log", "UNARY", "float32"),
                L("/front/Constant", "CONSTANT", "float32"),
                L("/stages.0/stages.0.0/blk/norm1/LayerNormalization", "NORMALIZATION", "float32"),
                L("/stages.0/stages.0.0/Softmax", "SOFTMAX", "float32"),
                L("/stages.0/stages.0.0/blk/attn/qkv/MatMul", "MATRIX_MULTIPLY", "float32"),
                L("/Shape", "SHAPE", "int64"),
            ]
            return True

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kw):
        trt = make_fake_trt(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(te.importlib.util, "find_spec", lambda name: object())
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=0: (8, 7))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=0: "Orin (fake)")
        return trt
    return install


def test_status_without_tensorrt():
    if te.importlib.util.find_spec("tensorrt") is None:
        assert te.trt_status() == "python package 'tensorrt' is not installed"
    with pytest.raises(te.TensorRTUnavailable):
        te.build_engine("x.onnx", "y.engine", None)


def test_build_weakly_typed_fp16(fake_trt, tiny_onnx, tmp_path):
    trt = fake_trt()
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 4, 8))
    assert not target.strongly_typed and target.compute_capability == "8.7"
    engine = tmp_path / "e.engine"
    meta = te.build_engine(tiny_onnx, engine, target, timing_cache_dir=tmp_path, log=lambda s: None)
    network, config = trt.built[-1]
    assert config.flags == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    assert config.profiles[0].shapes["clips"] == ((1, 160000), (4, 160000), (8, 160000))
    pinned = {l.name for l in network.layers if l.precision is trt.float32}
    assert pinned == {"/front/Conv", "/front/Log",
                      "/stages.0/stages.0.0/blk/norm1/LayerNormalization",
                      "/stages.0/stages.0.0/Softmax"}
    assert all(l.output_types == {0: trt.float32} for l in network.layers if l.name in pinned)
    assert meta.extra["fp32_pinned_layers"] == 4
    # engine + metadata + timing cache on disk, and the engine is loadable for the same target
    assert EngineMeta.from_json(meta_path(engine).read_text()) == meta
    assert engine_problems(engine, target, sha256_file(engine)) == []
    cache = tmp_path / "timing-trt10.3.0-sm87.cache"
    assert cache.read_bytes() == b"+timed"
    te.build_engine(tiny_onnx, engine, target, timing_cache_dir=tmp_path, log=lambda s: None)
    assert cache.read_bytes() == b"+timed+timed"  # loaded, extended, saved


def test_build_strongly_typed_on_trt11(fake_trt, tiny_onnx, tmp_path):
    trt = fake_trt(version="11.0.0", weak_fp16=False)
    assert not te.weak_fp16_supported()
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 2, 2))
    assert target.strongly_typed
    te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=lambda s: None)
    network, config = trt.built[-1]
    assert network.flags != 0 and "FP16" not in config.flags
    assert all(l.precision is None for l in network.layers)


def test_fp32_build_clears_tf32(fake_trt, tiny_onnx, tmp_path):
    trt = fake_trt()
    target = te.current_target(onnx_sha256(tiny_onnx), "fp32", Profile(1, 1, 1))
    te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=lambda s: None)
    _, config = trt.built[-1]
    assert "FP16" not in config.flags and "TF32" in config.cleared


def test_ensure_engine_reuses_then_rebuilds_when_stale(fake_trt, tiny_onnx, tmp_path):
    trt = fake_trt()
    logs = []
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 4, 8))
    engine = tmp_path / "encoder-fp16-b8.engine"
    r1 = te.ensure_engine(tiny_onnx, engine, target, log=logs.append)
    assert r1.built and "no engine" in r1.reasons[0]
    r2 = te.ensure_engine(tiny_onnx, engine, target, log=logs.append)
    assert not r2.built and len(trt.built) == 1
    # TensorRT upgrade on the box -> stale -> rebuilt, never loaded
    trt.__version__ = "10.4.0"
    t2 = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 4, 8))
    r3 = te.ensure_engine(tiny_onnx, engine, t2, log=logs.append)
    assert r3.built and r3.reasons == ["TensorRT version 10.3.0 != 10.4.0"]
    # someone copies in an engine from elsewhere (same size, other bytes) -> foreign -> rebuilt
    data = engine.read_bytes()
    engine.write_bytes(bytes(reversed(data)))
    r4 = te.ensure_engine(tiny_onnx, engine, t2, log=logs.append)
    assert r4.built and "foreign" in r4.reasons[0]
    assert te.ensure_engine(tiny_onnx, engine, t2, force=True, log=logs.append).built
    assert any("stale" in line for line in logs)


def test_prepare_engine_end_to_end(fake_trt, tiny, tmp_path):
    from trt_builders.engines import describe_cache, prepare_engine

    fake_trt()
    r1 = prepare_engine(tiny, cache_dir=tmp_path, max_batch=4, log=lambda s: None)
    assert r1.built and r1.engine_path.name == "encoder-fp16-b4.engine"
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    assert not prepare_engine(tiny, cache_dir=tmp_path, max_batch=4, log=lambda s: None).built
    kinds = {e.kind: e for e in describe_cache(tmp_path)}
    assert kinds["engine"].problems == [] and "fp16" in kinds["engine"].summary
    # new weights -> new ONNX -> ONNX hash differs -> rebuild
    import copy

    other = copy.copy(tiny)
    other.modules = copy.deepcopy(tiny.modules)
    with torch.no_grad():
        other.modules.encoder.norm.bias[0] += 0.5
    r3 = prepare_engine(other, cache_dir=tmp_path, max_batch=4, log=lambda s: None)
    assert r3.built and any("ONNX hash" in r for r in r3.reasons)


def test_prepare_engine_strongly_typed_uses_mixed_onnx(fake_trt, tiny, tmp_path):
    from trt_builders.engines import prepare_engine
    from trt_builders.export import read_sidecar

    fake_trt(version="11.0.0", weak_fp16=False)
    prepare_engine(tiny, cache_dir=tmp_path, max_batch=2, log=lambda s: None)
    (onnx,) = tmp_path.glob("*.onnx")
    assert read_sidecar(onnx).precision == "fp16-mixed"
