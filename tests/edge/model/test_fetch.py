"""`flamingo-edge model fetch`: which files come from where, and failing at once when offline.

No test here downloads anything: the network paths use an unreachable endpoint, HF_HUB_OFFLINE,
or (only where the hub really cannot be reached) the default endpoint; the download paths use a
fake hub module.
"""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge import model_cli
from edge.cli import cli
from edge.model_cli import fetch_plan, hub_unreachable_reason

QWEN_FILES = {"config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
              "merges.txt", "generation_config.json"}


@pytest.fixture(autouse=True)
def _clean_hub_env(monkeypatch):
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "HTTPS_PROXY", "https_proxy",
                "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def _run(args, env=None):
    return CliRunner().invoke(cli, ["model", "fetch", *args], env=env)


def _refuse_downloads(monkeypatch):
    """Any download attempt fails the test: the command must stop before trying one."""
    import huggingface_hub

    def boom(*a, **kw):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)


# ---- file selection (pure) -------------------------------------------------------------------------

@pytest.mark.parametrize("release, af2, qwen", [
    ("0.5B", "nvidia/audio-flamingo-2-0.5B", "Qwen/Qwen2.5-0.5B"),
    ("1.5B", "nvidia/audio-flamingo-2-1.5B", "Qwen/Qwen2.5-1.5B"),
    ("3B", "nvidia/audio-flamingo-2", "Qwen/Qwen2.5-3B"),
])
def test_plan_per_release(tmp_path, release, af2, qwen):
    plan = fetch_plan(release, tmp_path / "m")
    assert plan.release == release
    assert plan.af2_repo == af2
    assert plan.lm_repo == qwen
    assert plan.model_dir == tmp_path / "m"
    assert plan.lm_dir == tmp_path / "m" / "lm"
    assert set(plan.lm_files) == QWEN_FILES
    assert set(plan.lm_required) <= set(plan.lm_files)
    assert {"config.json", "tokenizer.json"} <= set(plan.lm_required)


def test_plan_never_fetches_qwen_weights(tmp_path):
    for release in ("0.5B", "1.5B", "3B"):
        for name in fetch_plan(release, tmp_path).lm_files:
            assert not name.endswith((".safetensors", ".bin", ".pt", ".pth", ".index.json"))


def test_plan_rejects_unknown_release(tmp_path):
    with pytest.raises(ValueError, match="7B"):
        fetch_plan("7B", tmp_path)


def test_cli_rejects_unknown_release(tmp_path):
    r = _run(["7B", "--dir", str(tmp_path)])
    assert r.exit_code != 0
    assert "7B" in r.output


# ---- offline: fails at once, in one line ----------------------------------------------------------

def _one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_offline_unreachable_endpoint_fails_before_downloading(tmp_path, monkeypatch):
    _refuse_downloads(monkeypatch)
    # port 9 (discard) on the loopback: nothing listens, the connection is refused at once
    r = _run(["0.5B", "--dir", str(tmp_path / "m")], env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert r.exit_code == 1
    line = _one_line(r.output)
    assert "cannot reach the Hugging Face hub" in line
    assert "127.0.0.1:9" in line
    assert not (tmp_path / "m").exists()


def test_hf_hub_offline_fails_before_downloading(tmp_path, monkeypatch):
    _refuse_downloads(monkeypatch)
    r = _run(["3B", "--dir", str(tmp_path / "m")], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 1
    assert "HF_HUB_OFFLINE" in _one_line(r.output)
    assert not (tmp_path / "m").exists()


def _hub_resolves() -> bool:
    try:
        socket.getaddrinfo("huggingface.co", 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_hub_resolves(), reason="this machine can reach huggingface.co")
def test_offline_default_endpoint_fails_before_downloading(tmp_path, monkeypatch):
    """The real thing on a machine without network: the default endpoint, nothing faked but the
    download functions (which must not be reached)."""
    _refuse_downloads(monkeypatch)
    r = _run(["1.5B", "--dir", str(tmp_path / "m")])
    assert r.exit_code == 1
    line = _one_line(r.output)
    assert "https://huggingface.co" in line and "nvidia/audio-flamingo-2-1.5B" in line


def test_unreachable_reason_honours_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    reason = hub_unreachable_reason("https://huggingface.co")
    assert reason is not None and "proxy 127.0.0.1:9" in reason


def test_unreachable_reason_none_when_listening():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        port = srv.getsockname()[1]
        assert hub_unreachable_reason(f"http://127.0.0.1:{port}") is None
    finally:
        srv.close()


def test_missing_hub_extra_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    r = _run(["0.5B", "--dir", str(tmp_path / "m")])
    assert r.exit_code == 1
    assert "pip install 'flamingo-edge[hub]'" in _one_line(r.output)


# ---- what is downloaded where (fake hub) --------------------------------------------------------

class FakeHub(types.SimpleNamespace):
    """Records the calls; writes the files a real download would."""

    def __init__(self, lm_missing=()):
        super().__init__(calls=[], lm_missing=set(lm_missing))

    def snapshot_download(self, repo_id, local_dir, revision=None, token=None, **kw):
        self.calls.append(("snapshot", repo_id, Path(local_dir), revision, token))
        d = Path(local_dir)
        (d / "safe_ckpt").mkdir(parents=True, exist_ok=True)
        (d / "clap_ckpt").mkdir(parents=True, exist_ok=True)
        (d / "safe_ckpt" / "metadata.json").write_text("{}")
        (d / "clap_ckpt" / "epoch_16.pt").write_bytes(b"")
        return str(d)

    def hf_hub_download(self, repo_id, filename, local_dir, token=None, **kw):
        from huggingface_hub import errors

        self.calls.append(("file", repo_id, filename, Path(local_dir), token))
        if filename in self.lm_missing:
            raise errors.EntryNotFoundError(f"{filename} not found")
        (Path(local_dir) / filename).write_text("{}")
        return str(Path(local_dir) / filename)


def _fake_online(monkeypatch, hub):
    monkeypatch.setattr(model_cli, "hub_unreachable_reason", lambda *a, **k: None)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)


def test_fetch_downloads_af2_repo_and_qwen_files(tmp_path, monkeypatch):
    hub = FakeHub()
    _fake_online(monkeypatch, hub)
    dest = tmp_path / "af2"
    r = _run(["1.5B", "--dir", str(dest)], env={"HF_TOKEN": "hf_secret"})
    assert r.exit_code == 0, r.output
    snaps = [c for c in hub.calls if c[0] == "snapshot"]
    files = [c for c in hub.calls if c[0] == "file"]
    assert snaps == [("snapshot", "nvidia/audio-flamingo-2-1.5B", dest, None, "hf_secret")]
    assert {c[1] for c in files} == {"Qwen/Qwen2.5-1.5B"}
    assert {c[2] for c in files} == QWEN_FILES
    assert {c[3] for c in files} == {dest / "lm"}
    assert {c[4] for c in files} == {"hf_secret"}
    assert "ready" in r.output


def test_fetch_tolerates_missing_optional_lm_file(tmp_path, monkeypatch):
    hub = FakeHub(lm_missing={"generation_config.json"})
    _fake_online(monkeypatch, hub)
    r = _run(["0.5B", "--dir", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output


def test_fetch_fails_on_missing_required_lm_file(tmp_path, monkeypatch):
    hub = FakeHub(lm_missing={"tokenizer.json"})
    _fake_online(monkeypatch, hub)
    r = _run(["0.5B", "--dir", str(tmp_path / "m")])
    assert r.exit_code == 1
    assert "Qwen/Qwen2.5-0.5B has no tokenizer.json" in r.output


def test_fetch_records_the_content_hashes_of_what_it_downloaded(tmp_path, monkeypatch):
    """A fetched checkpoint had no manifest: its model_id carried no content hash and a later
    silent overwrite could only be caught after a manual `model verify --record`."""
    import json

    from edge.model.checkpoint import MANIFEST, verify_manifest

    _fake_online(monkeypatch, FakeHub())
    dest = tmp_path / "af2"
    # huggingface_hub keeps its own bookkeeping under DIR/.cache: not part of the checkpoint
    (dest / ".cache" / "huggingface").mkdir(parents=True)
    (dest / ".cache" / "huggingface" / "safe_ckpt.metadata").write_text("etag 1")
    r = _run(["0.5B", "--dir", str(dest)])
    assert r.exit_code == 0, r.output
    man = json.loads((dest / MANIFEST).read_text())
    assert "safe_ckpt/metadata.json" in man["files"] and "lm/config.json" in man["files"]
    assert not [f for f in man["files"] if f.startswith(".")]
    assert verify_manifest(dest, full=True) == man["content_sha256"]
    assert f"sha256:{man['content_sha256'][:16]}" in r.output
