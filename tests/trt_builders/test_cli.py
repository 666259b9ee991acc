"""`flamingo-edge engines ...` on a machine without TensorRT or CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from edge.cli import cli


def test_cli_import_does_not_import_torch():
    code = "import sys, edge.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_build_without_tensorrt_is_one_line(tmp_path, monkeypatch):
    import trt_builders.tensorrt_engine as te

    monkeypatch.setattr(te, "trt_status", lambda: "python package 'tensorrt' is not installed")
    r = CliRunner().invoke(cli, ["engines", "build", "--random-released", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output
    assert lines[0].startswith("TensorRT unavailable: python package 'tensorrt' is not installed.")
    assert "Next best encoder backend here:" in lines[0]


def test_build_rejects_bad_profile(tmp_path):
    r = CliRunner().invoke(cli, ["engines", "build", "--random-released", "--profile", "8:1"])
    assert r.exit_code == 2 and "profile" in r.output


def test_export_verify_and_info(fixture_dir, tmp_path):
    out = tmp_path / "enc.onnx"
    r = CliRunner().invoke(cli, ["engines", "export", "--model", str(fixture_dir / "checkpoint"),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "onnx.checker" in r.output and "relative error" in r.output
    r = CliRunner().invoke(cli, ["engines", "info", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0 and "enc.onnx: fp32 opset 17" in r.output
    assert "onnxruntime CPU" in r.output
    r = CliRunner().invoke(cli, ["engines", "info", "--cache-dir", str(tmp_path), "--json"])
    assert json.loads(r.output)[0]["kind"] == "onnx"


def test_check_falls_back_and_reports(fixture_dir, tmp_path):
    r = CliRunner().invoke(cli, ["engines", "check", "--model", str(fixture_dir / "checkpoint"),
                                 "--backend", "tensorrt", "--device", "cuda", "--cache-dir",
                                 str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    if res["fallback"]:
        assert res["requested"] == "tensorrt float16" and "\n" not in res["fallback"]
    assert res["rel_error_vs_torch_fp32"] < 1e-4 or res["backend"].startswith("tensorrt")


def test_model_xor_random(tmp_path):
    r = CliRunner().invoke(cli, ["engines", "export", "--out", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "--random-released" in r.output
