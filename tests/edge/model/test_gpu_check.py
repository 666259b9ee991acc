"""bench/gpu_check.py's logic on the CPU at tiny dims (`--tiny`): the device check must not be
found broken only when a GPU box is finally lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_gpu_check_tiny_runs_every_model_section_and_writes_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny",
                        "--sections", "preflight,encoder,decoder", "--out", str(out)],
                       check=False, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["tiny"] and data["preflight"]["optional"].keys() >= {"onnxruntime", "tensorrt"}
    enc = data["encoder"]
    assert {(x["dtype"], x["batch"]) for x in enc} == {(d, b) for d in ("float16", "bfloat16")
                                                       for b in (1, 2)}
    assert all(x["ok"] and set(x["rel_err"]) >= {"noise", "tone_full_scale"} for x in enc)
    dec = data["decoder"]
    assert set(dec["variants"]) == {"bf16", "int8", "int4"}
    for v in dec["variants"].values():
        assert v["identical_ids"] is True
        assert v["paths"]["static"]["tokens_per_s"] > 0 and v["bytes_per_token"]["total"] > 0
        # no CUDA here: the graph path must fail cleanly and say so
        assert "capture failed" in v["paths"]["graph"]["error"]
    assert "decoder tiny bf16 static" in r.stdout and "read bandwidth" in r.stdout
