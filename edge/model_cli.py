"""`flamingo-edge model ...`: getting and preparing AF2 checkpoints.

    flamingo-edge model fetch 3B --dir models/af2-3b

`fetch` downloads an AF2 release from the Hugging Face hub in the official layout (`clap_ckpt/`,
`safe_ckpt/`) and puts the matching Qwen2.5 config and tokenizer files (never the Qwen weights:
AF2's safe_ckpt already holds the whole language model) into `DIR/lm/`, which is what
`AF2.load(DIR)` reads. The weights are NVIDIA non-commercial / Qwen research licensed and are
never bundled with this software.

Keep this module cheap to import (the CLI imports it at start-up): no torch, and
`huggingface_hub` (the optional `hub` extra) only inside the command.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

HUB_EXTRA_HINT = "pip install 'flamingo-edge[hub]'"
DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 3.0

# release -> (AF2 repository, the Qwen2.5 base model whose config/tokenizer it was trained with)
RELEASE_REPOS: dict[str, tuple[str, str]] = {
    "0.5B": ("nvidia/audio-flamingo-2-0.5B", "Qwen/Qwen2.5-0.5B"),
    "1.5B": ("nvidia/audio-flamingo-2-1.5B", "Qwen/Qwen2.5-1.5B"),
    "3B": ("nvidia/audio-flamingo-2", "Qwen/Qwen2.5-3B"),
}
# Qwen2.5 files for DIR/lm: config + tokenizer. Required ones must exist upstream.
LM_FILES_REQUIRED = ("config.json", "tokenizer.json")
LM_FILES_OPTIONAL = ("tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json")


@dataclass(frozen=True)
class FetchPlan:
    release: str
    af2_repo: str  # downloaded whole into model_dir (as the official inference script does)
    lm_repo: str
    lm_files: tuple[str, ...]  # downloaded into lm_dir; never weights
    lm_required: tuple[str, ...]
    model_dir: Path
    lm_dir: Path


def fetch_plan(release: str, dest: str | os.PathLike) -> FetchPlan:
    """What `model fetch RELEASE --dir DEST` downloads, and where (pure; no network)."""
    try:
        af2_repo, lm_repo = RELEASE_REPOS[release]
    except KeyError:
        raise ValueError(f"unknown AF2 release {release!r}; expected one of "
                         f"{', '.join(RELEASE_REPOS)}") from None
    dest = Path(dest)
    return FetchPlan(release, af2_repo, lm_repo, LM_FILES_REQUIRED + LM_FILES_OPTIONAL,
                     LM_FILES_REQUIRED, dest, dest / "lm")


# ---- connectivity ------------------------------------------------------------------------------

def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _target(endpoint: str) -> tuple[str, int, str]:
    """(host, port, what) the first connection goes to: the hub, or the proxy in front of it."""
    u = urllib.parse.urlsplit(endpoint)
    host = u.hostname or "huggingface.co"
    port = u.port or (443 if u.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(u.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or 8080, f"proxy {p.hostname}:{p.port or 8080} for {host}"
    return host, port, f"{host}:{port}"


def hub_unreachable_reason(endpoint: str | None = None,
                           timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if a TCP connection to the hub (or its proxy) opens within `timeout` s, else why not.

    Runs in a helper thread with a hard deadline: name resolution ignores socket timeouts.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host, port, what = _target(endpoint or hub_endpoint())
    result: dict[str, BaseException | bool] = {}

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except BaseException as e:  # noqa: BLE001 - reported, never raised
            result["error"] = e

    t = threading.Thread(target=attempt, daemon=True, name="hub-connectivity")
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return None
    err = result.get("error")
    if err is None:
        return f"no answer from {what} within {timeout:g} s"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve {host} (no network or DNS)"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return f"no answer from {what} within {timeout:g} s"
    return f"cannot connect to {what} ({getattr(err, 'strerror', None) or err})"


# ---- the command group ---------------------------------------------------------------------------

@click.group("model")
def model() -> None:
    """Get and prepare Audio Flamingo 2 checkpoints."""


@model.command("fetch")
@click.argument("release", type=click.Choice(list(RELEASE_REPOS)))
@click.option("--dir", "dest", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to put the checkpoint (official layout; the LM files go to DIR/lm).")
@click.option("--token", envvar="HF_TOKEN", default=None, show_envvar=True, show_default="anonymous",
              help="Hugging Face access token (for gated repositories).")
@click.option("--revision", default=None, show_default="main", help="AF2 repository revision (branch, tag or commit).")
def fetch(release: str, dest: Path, token: str | None, revision: str | None) -> None:
    """Download AF2 RELEASE (0.5B, 1.5B or 3B) and its Qwen2.5 config/tokenizer into DIR.

    Needs the optional `hub` extra and network access to the Hugging Face hub (HF_ENDPOINT and
    HTTPS_PROXY are honoured); without them it fails at once. The checkpoints are licensed for
    non-commercial use only (NVIDIA OneWay Noncommercial License, Qwen research licence).
    """
    plan = fetch_plan(release, dest)
    try:
        import huggingface_hub as hub
    except ImportError:
        raise click.ClickException(
            f"`model fetch` needs huggingface_hub, which is not installed: {HUB_EXTRA_HINT}"
        ) from None
    endpoint = hub_endpoint()
    reason = hub_unreachable_reason(endpoint)
    if reason:
        raise click.ClickException(
            f"cannot reach the Hugging Face hub at {endpoint}: {reason}; `model fetch` needs "
            f"network access (or download {plan.af2_repo} elsewhere and copy it to {dest})"
        )
    click.echo(f"AF2 {release}: {plan.af2_repo} -> {plan.model_dir}", err=True)
    _download(hub, plan, token, revision)
    missing = [p for p in ("safe_ckpt/metadata.json", "clap_ckpt/epoch_16.pt")
               if not (plan.model_dir / p).is_file()]
    if missing:
        raise click.ClickException(
            f"{plan.af2_repo} downloaded but {', '.join(missing)} is missing: not the AF2 "
            f"layout this version expects")
    from .model.checkpoint import MANIFEST, write_manifest

    # the hashes of what was downloaded: checked by `model verify` (and at every load unless
    # model.verify: quick); the content hash names the model (model_id af2-...@sha256:...)
    click.echo(f"recording the content hashes in {plan.model_dir / MANIFEST}", err=True)
    content = write_manifest(plan.model_dir)
    click.echo(f"AF2 {release} is ready in {plan.model_dir} (load it with that directory; "
               f"content sha256:{content[:16]}). "
               "Non-commercial licence: see the model card of " + plan.af2_repo)


def _download(hub, plan: FetchPlan, token: str | None, revision: str | None) -> None:
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.24 keeps them in utils
        from huggingface_hub import utils as errors  # type: ignore[no-redef]

    def fail(repo: str, e: Exception) -> click.ClickException:
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, errors.GatedRepoError) or status in (401, 403):
            return click.ClickException(
                f"access to {repo} was refused: accept its licence on the hub "
                f"(https://huggingface.co/{repo}) and pass a token (HF_TOKEN or --token)")
        if isinstance(e, errors.RepositoryNotFoundError):
            return click.ClickException(f"repository {repo} not found (or private without a token)")
        return click.ClickException(f"download of {repo} failed: {first}")

    try:
        hub.snapshot_download(repo_id=plan.af2_repo, local_dir=str(plan.model_dir),
                              revision=revision, token=token)
    except Exception as e:  # noqa: BLE001 - every hub/network error becomes one line
        raise fail(plan.af2_repo, e) from None
    click.echo(f"Qwen2.5 config and tokenizer: {plan.lm_repo} -> {plan.lm_dir}", err=True)
    plan.lm_dir.mkdir(parents=True, exist_ok=True)
    for name in plan.lm_files:
        try:
            hub.hf_hub_download(repo_id=plan.lm_repo, filename=name, local_dir=str(plan.lm_dir),
                                token=token)
        except errors.EntryNotFoundError:
            if name in plan.lm_required:
                raise click.ClickException(f"{plan.lm_repo} has no {name}") from None
        except Exception as e:  # noqa: BLE001
            raise fail(plan.lm_repo, e) from None


@model.command("convert")
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float16",
              show_default=True, help="Precision of the written weights.")
def convert(src: str, dst: str, dtype: str) -> None:
    """Write a compact checkpoint of SRC into DST: one deduplicated safetensors file in DTYPE
    plus a small JSON config and the tokenizer. `AF2.load` (and --model) accept both layouts."""
    import time

    from edge.model.checkpoint import CheckpointError, convert as convert_checkpoint

    t = time.perf_counter()
    try:
        out = convert_checkpoint(src, dst, dtype=dtype)
    except (CheckpointError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    size = (out / "model.safetensors").stat().st_size
    click.echo(f"wrote {out} ({size / 1e9:.2f} GB, {dtype}) in {time.perf_counter() - t:.1f} s")


@model.command("verify")
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--record", is_flag=True,
              help="Write (or rewrite) the manifest of hashes from the files as they are now: "
                   "right after `model fetch`, for a checkpoint you trust.")
def verify(model_dir: str, record: bool) -> None:
    """Check MODEL_DIR against its content hashes (flamingo_edge.sha256.json, written by
    `model convert` or `--record`), then load-check every tensor (safetensors headers,
    NaN/Inf). Exits 1 naming the first file that differs. The daemon checks sizes, headers and
    NaN/Inf at every load, and the hashes too, beside the load, unless model.verify: quick."""
    import time

    from edge.model.checkpoint import (
        MANIFEST, CheckpointError, scan_checkpoint, verify_manifest, write_manifest)

    t = time.perf_counter()
    d = Path(model_dir)
    try:
        if record:
            content = write_manifest(d)
            click.echo(f"recorded {d / MANIFEST}: sha256:{content}")
        else:
            found = verify_manifest(d, full=True)
            if found is None:
                raise click.ClickException(
                    f"{d} has no {MANIFEST}: nothing to compare with (run `flamingo-edge model "
                    f"verify --record {d}` once, for a checkpoint you trust)")
            content = found
            click.echo(f"every file matches {MANIFEST} (sha256:{content})")
        n = scan_checkpoint(d)
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{n} tensors: headers consistent, every value finite ({time.perf_counter() - t:.1f} s)")
