"""bench/gpu_check.py's logic on the CPU at tiny dims (`--tiny`): the device check must not be
found broken only when a GPU box is finally lent. It runs here the way it runs there: through
scripts/gpu_check.sh with $OUT set, on a box where only torch and `pip install -e .`'s packages
import (the optional ones are blocked), every section."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
OPTIONAL = ("soundfile", "sounddevice", "onnxruntime", "tensorrt", "onnx", "torchao", "av")


def test_gpu_check_tiny_runs_every_section_on_a_bare_box_and_writes_json_and_tables(tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sitecustomize.py").write_text(
        f"import sys\nfor name in {OPTIONAL!r}:\n    sys.modules[name] = None\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(bare), OMP_NUM_THREADS="1", OUT=str(out))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny"],
                       check=False, capture_output=True, text=True, timeout=600, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    tables = (out / "gpu_check.txt").read_text()
    assert data["tiny"]
    assert all(data["preflight"]["optional"][n].startswith("absent") for n in ("onnxruntime", "tensorrt",
                                                                            "soundfile", "onnx"))
    enc = data["encoder"]
    assert {(x["dtype"], x["batch"]) for x in enc} == {(d, b) for d in ("float16", "bfloat16")
                                                       for b in (1, 2)}
    assert all(x["ok"] and set(x["rel_err"]) == {"noise", "tone_full_scale", "fixture_clip"}
               for x in enc)
    dec = data["decoder"]
    assert set(dec["variants"]) == {"bf16", "int8", "int4"}
    for name, v in dec["variants"].items():
        assert v["identical_ids"] is True
        assert v["paths"]["static"]["tokens_per_s"] > 0 and v["bytes_per_token"]["total"] > 0
        # no CUDA here: the graph path must fail cleanly and say so
        assert "capture failed" in v["paths"]["graph"]["error"]
        s = v["score"]  # AF2.score of a yes/no question through the fixture tokenizer
        assert abs(s["probs"]["yes"] + s["probs"]["no"] - 1) < 1e-6 and 0 < s["coverage"] <= 1
        assert s["seconds"] > 0 and s["prompt_tokens"] > 5
        if name != "bf16":
            d = v["deviation"]
            assert d["reference"] == "bf16" and 0 <= d["greedy_agreement"] <= 1
            assert d["p_yes_abs_diff"] < 0.05  # measured 1e-4 (int8), 6e-3 (int4) at tiny dims
    rows = {x["backend"]: x for x in data["rows"]}
    assert all(rows[f"torch cpu {d}"]["ok"] for d in ("float32", "float16", "bfloat16"))
    assert "tensorrt" in rows["tensorrt"]["skipped"]
    # the tables are on stdout and beside the JSON
    for line in ("decoder tiny: read bandwidth", "bf16     score   P(yes)", "int4     vs bf16:",
                 "torch cpu float32", "float16        2"):
        assert line in tables and line in r.stdout, line
