"""The TensorRT build path against a stand-in `tensorrt` module (CPU).

The stand-in records what the builder is asked to do; it checks our control flow (flags,
per-layer precision, profile, timing cache, metadata, reuse/rebuild decisions), not TensorRT
itself. scripts/gpu_check.sh runs the real thing on a GPU machine.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from trt_builders import tensorrt_engine as te
from edge.files import sha256_file
from trt_builders.export import onnx_sha256
from trt_builders.metadata import EngineMeta, Profile, engine_problems, meta_path


class _Enum:
    """A pybind11 enum value: `.name`, `str()` -> 'Kind.NAME', `int()` -> its C++ value."""

    def __init__(self, kind, name, value=0):
        self.kind, self.name, self.value = kind, name, value

    def __str__(self):
        return f"{self.kind}.{self.name}"

    def __int__(self):
        return self.value


def _ns(kind, *names, values=None):
    values = values or {}
    return types.SimpleNamespace(**{n: _Enum(kind, n, values.get(n, i)) for i, n in enumerate(names)})


class FakeTensor:
    def __init__(self, name, dtype, shape=(-1, 64, 256)):
        self.name, self.dtype, self.shape = name, dtype, shape


class FakeLayer:
    """ILayer. As in TensorRT 10 (NvInfer.h, ILayer::setPrecision / setOutputType), a strongly
    typed network rejects both; TensorRT 11 has neither (weak typing removed)."""

    def __init__(self, trt, name, ltype, out_dtype, strongly_typed=False):
        self.name, self.type = name, getattr(trt.LayerType, ltype)
        self.outputs = [FakeTensor(name + ":0", getattr(trt, out_dtype))]
        self.num_outputs = 1
        self._precision = None
        self.output_types = {}
        self.strongly_typed = strongly_typed

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, dt):
        assert not self.strongly_typed, "strongly typed networks reject ILayer.precision"
        self._precision = dt

    def get_output(self, j):
        return self.outputs[j]

    def set_output_type(self, j, t):
        assert not self.strongly_typed, "strongly typed networks reject ILayer.set_output_type"
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

    def create_timing_cache(self, serialized_timing_cache):
        blob = bytes(serialized_timing_cache)
        return None if blob.startswith(b"corrupt") else FakeCache(blob)  # nullptr -> None

    def set_timing_cache(self, cache, ignore_mismatch):
        if not isinstance(cache, FakeCache):  # pybind: ITimingCache const& -> no None
            raise TypeError("set_timing_cache(): incompatible function arguments")
        if cache.blob.startswith(b"other-gpu") and not ignore_mismatch:
            return False
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
    # TensorRT 10: FP16, TF32, OBEY_PRECISION_CONSTRAINTS; TensorRT 11 removed FP16 and
    # OBEY/PREFER_PRECISION_CONSTRAINTS (docs: "Removed Python APIs", 10.x -> 11.x migration)
    flags = ["TF32"] + (["FP16", "OBEY_PRECISION_CONSTRAINTS"] if weak_fp16 else [])
    trt.BuilderFlag = _ns("BuilderFlag", *flags)
    # NvInfer.h (10.3): kEXPLICIT_BATCH = 0 (deprecated, ignored), kSTRONGLY_TYPED = 1
    trt.NetworkDefinitionCreationFlag = (
        _ns("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", "STRONGLY_TYPED") if weak_fp16 else
        _ns("NetworkDefinitionCreationFlag", "STRONGLY_TYPED", values={"STRONGLY_TYPED": 1}))
    trt.MemoryPoolType = _ns("MemoryPoolType", "WORKSPACE")
    trt.TensorIOMode = _ns("TensorIOMode", "NONE", "INPUT", "OUTPUT")
    trt.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4,
                                     "__init__": lambda s, min_severity=2: None})
    trt.built = []
    if int(version.split(".")[0]) >= 10:
        trt.IProgressMonitor = type("IProgressMonitor", (), {})

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
            mon = getattr(config, "progress_monitor", None)
            if mon is not None:  # TensorRT >= 10 reports its phases to the monitor
                mon.phase_start("Building engine", None, 2)
                for i in range(2):
                    if not mon.step_complete("Building engine", i):
                        return None  # cancelled
                mon.phase_finish("Building engine")
            return b"ENGINE:" + str(sorted(config.flags)).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, model):
            strong = bool(self.network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            L = lambda *a: FakeLayer(trt, *a, strongly_typed=strong)  # noqa: E731
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
    trt.Runtime = FakeRuntime
    trt.engine_profile = (1, 2, 4)  # what deserialised fake engines report (min, opt, max batch)
    trt.contexts = []
    return trt


# ---- runtime stand-in: the TensorRT 10 name-based I/O API only (no binding indices) ----------
class FakeRuntime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        trt = sys.modules["tensorrt"]
        return FakeEngine(trt) if bytes(serialized_engine).startswith(b"ENGINE") else None


class FakeEngine:
    D = 8

    def __init__(self, trt):
        self.trt, self.num_io_tensors = trt, 2
        self._names = ["clips", "tokens"]

    def get_tensor_name(self, index):
        return self._names[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "clips" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.float32

    def get_tensor_profile_shape(self, name, profile_index):
        assert name == "clips" and profile_index == 0
        return [(b, 160000) for b in self.trt.engine_profile]

    def create_execution_context(self):
        ctx = FakeContext(self)
        self.trt.contexts.append(ctx)
        return ctx


class FakeContext:
    """IExecutionContext: set_input_shape -> get_tensor_shape -> set_tensor_address (every I/O
    tensor) -> execute_async_v3(stream_handle). Output = x[:, :64, None] * 2 + arange(D)."""

    def __init__(self, engine):
        self.engine, self.shape, self.addresses, self.streams = engine, None, {}, []

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.trt.engine_profile
        shape = tuple(int(d) for d in shape)
        if name != "clips" or len(shape) != 2 or shape[1] != 160000 or not lo <= shape[0] <= hi:
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name):
        b = self.shape[0] if self.shape else -1
        return (b, 160000) if name == "clips" else (b, 64, FakeEngine.D)

    def set_tensor_address(self, name, memory):
        assert isinstance(memory, int) and name in ("clips", "tokens")
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle):
        import ctypes

        import numpy as np

        assert isinstance(stream_handle, int)
        if self.shape is None or set(self.addresses) != {"clips", "tokens"}:
            return False
        self.streams.append(stream_handle)

        def view(ptr, shape):
            n = int(np.prod(shape))
            return np.frombuffer((ctypes.c_float * n).from_address(ptr), np.float32).reshape(shape)

        b = self.shape[0]
        x = view(self.addresses["clips"], (b, 160000))
        y = view(self.addresses["tokens"], (b, 64, FakeEngine.D))
        y[...] = x[:, :64, None] * 2 + np.arange(FakeEngine.D, dtype=np.float32)
        return True


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
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 4, 8), strongly_typed=False)
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
    assert network.flags == 1 << 1 and "FP16" not in config.flags  # kSTRONGLY_TYPED = 1
    assert all(l.precision is None for l in network.layers)


def test_build_strongly_typed_on_trt10_sets_no_layer_precision(fake_trt, tiny_onnx, tmp_path):
    trt = fake_trt()
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 2, 2), strongly_typed=True)
    te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=lambda s: None)  # layers would assert
    network, config = trt.built[-1]
    assert network.flags == 1 << 1 and config.flags == set()


def test_weak_fp16_build_uses_no_creation_flags(fake_trt, tiny_onnx, tmp_path):
    trt = fake_trt()
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 2, 2), strongly_typed=False)
    te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=lambda s: None)
    assert trt.built[-1][0].flags == 0  # EXPLICIT_BATCH is deprecated and ignored in TensorRT 10


@pytest.mark.parametrize("blob", [b"corrupt", b"other-gpu"])
def test_unusable_timing_cache_is_replaced(fake_trt, tiny_onnx, tmp_path, blob):
    fake_trt()
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 2, 2))
    cache = tmp_path / "timing-trt10.3.0-sm87.cache"
    cache.write_bytes(blob)
    logs = []
    te.build_engine(tiny_onnx, tmp_path / "e.engine", target, timing_cache_dir=tmp_path, log=logs.append)
    assert any("rejected" in line for line in logs)
    assert cache.read_bytes() == b"+timed"  # a fresh cache was used and saved


# ---- runtime ---------------------------------------------------------------------------
class _Stream:
    def __init__(self, handle):
        self.cuda_stream, self.waited = handle, []

    def wait_stream(self, other):
        self.waited.append(other.cuda_stream)


@pytest.fixture
def cpu_runtime(fake_trt, monkeypatch, tmp_path):
    """TRTEncoder on the CPU: torch's CUDA stream/device calls are stubbed, buffers live in RAM."""
    import contextlib

    trt = fake_trt()
    current, recorded = _Stream(0), []
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream(1234))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: recorded.append(s.cuda_stream))
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"ENGINE:fake")

    def make(profile=(1, 2, 4)):
        trt.engine_profile = profile
        enc = te.TRTEncoder(engine)
        enc.device = torch.device("cpu")
        return enc
    return types.SimpleNamespace(trt=trt, make=make, current=current, recorded=recorded, engine=engine)


def _expected(x):
    return x[:, :64, None] * 2 + torch.arange(FakeEngine.D, dtype=torch.float32)


def test_trt_encoder_runs_named_io_on_its_own_stream(cpu_runtime):
    enc = cpu_runtime.make((1, 2, 4))
    assert (enc.input_name, enc.output_name, enc.min_batch, enc.max_batch) == ("clips", "tokens", 1, 4)
    x = torch.rand(3, 160000)
    out = enc(x)
    assert out.shape == (3, 64, FakeEngine.D) and out.dtype == torch.float32
    assert torch.equal(out, _expected(x))
    (ctx,) = cpu_runtime.trt.contexts
    assert ctx.streams == [1234]  # never the default stream (handle 0)
    assert cpu_runtime.current.waited == [1234] and set(cpu_runtime.recorded) == {1234}


def test_trt_encoder_splits_and_pads_to_the_profile(cpu_runtime):
    enc = cpu_runtime.make((2, 2, 4))
    x = torch.rand(5, 160000)  # 4 + 1 (padded to the profile's min batch 2)
    assert torch.equal(enc(x), _expected(x))
    assert [s for s in cpu_runtime.trt.contexts[0].streams] == [1234, 1234]


def test_trt_encoder_rejected_shape_is_an_error(cpu_runtime):
    enc = cpu_runtime.make((1, 2, 4))
    with pytest.raises(RuntimeError, match="rejected input shape"):
        enc._run(torch.zeros(5, 160000))


def test_trt_encoder_bad_engine_bytes(cpu_runtime):
    cpu_runtime.engine.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="could not deserialise"):
        te.TRTEncoder(cpu_runtime.engine)


def test_tensorrt_backend_on_the_stand_in(cpu_runtime):
    from edge.encoder_backends import TensorRTBackend
    from edge.model.audio import int16_roundtrip_torch

    cpu_runtime.trt.engine_profile = (1, 2, 4)
    b = TensorRTBackend(cpu_runtime.engine, max_batch=8, num_features=FakeEngine.D)
    b.runner.device = torch.device("cpu")
    assert b.max_batch == 4  # capped at the engine profile's max
    x = torch.rand(6, 160000) * 2.4 - 1.2
    assert torch.equal(b.encode(x), _expected(int16_roundtrip_torch(x)))


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


# ---- the precision policy (edge/model/precision.py states it; docs/ENGINES.md) ---------------
def test_fp16_is_strongly_typed_on_trt10_by_default_and_clears_tf32(fake_trt, tiny_onnx, tmp_path):
    trt = fake_trt()
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 2, 2))
    assert target.strongly_typed  # parser-added layers cannot drift into fp16
    meta = te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=lambda s: None)
    network, config = trt.built[-1]
    assert network.flags == 1 << 1 and "FP16" not in config.flags and "TF32" in config.cleared
    assert meta.extra["inspector"].startswith("unavailable")  # this stand-in has no inspector


def test_tensorrt_8_6_is_refused_in_one_line(fake_trt):
    fake_trt(version="8.6.1")
    reason = te.trt_status()
    assert reason.startswith("TensorRT 8.6.1 is not supported") and "\n" not in reason


class _Inspector:
    def __init__(self, layers):
        self.layers = layers

    def get_engine_information(self, fmt):
        assert fmt.name == "JSON"
        return json.dumps({"Layers": self.layers})


@pytest.mark.parametrize("fmt,ok", [("Row major linear FP32", True), ("Row major linear Half", False)])
def test_engine_inspector_checks_float32_layers(fake_trt, tiny_onnx, tmp_path, monkeypatch, fmt, ok):
    trt = fake_trt()
    trt.LayerInformationFormat = _ns("LayerInformationFormat", "JSON")
    trt.ProfilingVerbosity = _ns("ProfilingVerbosity", "LAYER_NAMES_ONLY", "DETAILED")
    layers = [{"Name": "/front/Conv + /front/Log", "Outputs": [{"Format/Datatype": fmt}]},
              {"Name": "/stages.0/blk/attn/qkv/MatMul", "Outputs": [{"Format/Datatype": "Row major linear Half"}]}]
    monkeypatch.setattr(FakeEngine, "create_engine_inspector", lambda self: _Inspector(layers), raising=False)
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 2, 2))
    if ok:
        meta = te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=lambda s: None)
        assert meta.extra["inspector"].startswith("checked 2 layers")
        assert trt.built[-1][1].profiling_verbosity.name == "DETAILED"
    else:
        with pytest.raises(te.EngineBuildError, match="/front/Conv"):
            te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=lambda s: None)
        assert not (tmp_path / "e.engine").exists()  # a bad engine is never written


def test_engines_build_puts_the_engine_where_the_daemon_looks(fake_trt, fixture_dir, tmp_path,
                                                              monkeypatch):
    """`engines build --config daemon.yaml` builds in the cache the daemon run with that config
    loads from (<its data_dir>/engines), not in the default data directory; --data-dir wins."""
    from click.testing import CliRunner

    from edge.cli import cli
    from edge.config import load_settings

    monkeypatch.delenv("FLAMINGO_EDGE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # the default data directory
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'node'}\n")
    fake_trt()
    r = CliRunner().invoke(cli, ["engines", "build", "--model", str(fixture_dir / "checkpoint"),
                                 "--config", str(cfg), "--max-batch", "2"])
    assert r.exit_code == 0, r.output
    daemon_cache = load_settings(cfg).engine_cache_dir()  # what Daemon._encoder_backend uses
    assert daemon_cache == tmp_path / "node" / "engines"
    assert (daemon_cache / "encoder-fp16-b2.engine").is_file()
    assert f"{daemon_cache / 'encoder-fp16-b2.engine'}: built" in r.output
    assert not (tmp_path / "xdg").exists()
    r = CliRunner().invoke(cli, ["engines", "info", "--config", str(cfg),
                                 "--data-dir", str(tmp_path / "other")])
    assert r.exit_code == 0 and f"cache {tmp_path / 'other' / 'engines'}: (empty)" in r.output


@pytest.mark.parametrize("shown", [True, False])
def test_engine_build_shows_progress_where_tensorrt_reports_it(fake_trt, tiny_onnx, tmp_path, shown):
    trt = fake_trt(version="10.3.0", weak_fp16=True)
    if not shown:  # a TensorRT build without the progress interface: the build still runs
        del trt.IProgressMonitor
    target = te.current_target(onnx_sha256(tiny_onnx), "fp16", Profile(1, 2, 2))
    logs: list[str] = []
    te.build_engine(tiny_onnx, tmp_path / "e.engine", target, log=logs.append)
    progress = [ln for ln in logs if ln.startswith("build progress:")]
    if shown:
        assert progress[0].startswith("build progress: Building engine started (2 steps)")
        assert progress[-1].startswith("build progress: Building engine finished")
    else:
        assert not progress and any("has no IProgressMonitor" in ln for ln in logs)
