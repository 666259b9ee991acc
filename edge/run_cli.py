"""`flamingo-edge run`, `replay` and `publish-audio` (imports stay lazy: no torch here)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from .constants import SAMPLE_RATE

if TYPE_CHECKING:
    from .config import Settings
    from .model import AF2


def _settings(config: str | None, data: dict | None = None, data_dir: str | None = None):
    """The settings of a command (`edge.config.command_settings`: config, env, --data-dir)."""
    from .config import ConfigError, command_settings

    try:
        return command_settings(config, data_dir, data=data)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _logging(settings, level: str | None, fmt: Literal["auto", "json", "console"] | None) -> None:
    from .log import configure_logging

    configure_logging(level or settings.log.level, fmt or "auto", secrets=settings.secrets())


def _load_model(model_dir: str | Path | None, settings: Settings, progress: bool = True) -> AF2 | None:
    """The AF2 model of --model / model.dir (None: model-free), with a progress bar on a
    terminal's stderr while the weights stream in; one line on failure."""
    from .daemon import load_model

    d = model_dir or settings.model.dir
    if d is None:
        return None
    bar = None

    def step(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="", unit_scale=True, file=sys.stderr, leave=False,
                       desc="loading AF2 weights", disable=None if progress else True)
        bar.n = done
        bar.refresh()

    try:
        return load_model(d, settings.model.dtype, settings.model.device, settings.model.quantize,
                          settings.model.verify, progress=step)
    except Exception as e:  # noqa: BLE001 - CheckpointError, missing files...
        raise click.ClickException(f"cannot load the AF2 model from {d}: {e}") from None
    finally:
        if bar is not None:
            bar.close()


@click.command("run")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: the embedded demo recording).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              show_default="model.dir of the config; none: the model-free gate only",
              help="AF2 checkpoint directory (enables the AF2 monitors).")
@click.option("--speed", type=float, default=None,
              show_default="each stream's speed; the demo: 8",
              help="Pacing of file streams: 1 = real time, 0 = as fast as possible.")
@click.option("--loop/--no-loop", default=None, show_default="each stream's loop",
              help="Loop file streams forever.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              show_default="data_dir of the config, else $XDG_DATA_HOME/flamingo-edge",
              help="Where alerts, clips and engines are stored.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default=None,
              show_default="log.level of the config, INFO", help="Least severe level logged.")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default=None,
              show_default="auto: console in a terminal, JSON lines otherwise",
              help="How log lines are written.")
def run(config, model_dir, speed, loop, data_dir, log_level, log_format) -> None:
    """Run the daemon. Without --config: the embedded demo (a generated machine-room
    recording with knocking and an alarm) through the whole pipeline, then exit."""
    import structlog

    from .demo import demo_config

    settings = _settings(config, None if config else demo_config(speed), data_dir)
    _logging(settings, log_level, log_format)
    log = structlog.get_logger(__name__)
    if config is None:
        log.info("running the embedded demo: a 4-minute machine-room recording "
                 "(knocking at 1:00 and 3:15, an alarm at 2:20)", speed=8 if speed is None else speed)
    from .sources import SourceUnavailable, check_sources

    try:
        check_sources(settings)  # before a model load that may take minutes
    except SourceUnavailable as e:
        raise click.ClickException(str(e)) from None
    log.info("loading the inference code (PyTorch)")  # seconds on a small machine
    model = _load_model(model_dir, settings)
    from .daemon import Daemon
    from .sdnotify import ShutdownSignal

    d = Daemon(settings, model=model, speed=speed, loop=loop)
    sig = ShutdownSignal().install()
    try:
        d.start()
    except Exception as e:  # noqa: BLE001 - any start failure: stop what started, one line
        d.stop(timeout=5)
        raise click.ClickException(str(e)) from None
    t0 = time.monotonic()
    try:
        while not sig.event.is_set():
            if d.finished():
                log.info("all sources finished")
                break
            sig.wait(0.2)
    finally:
        d.stop(timeout=10)
    w = d.worker
    log.info("stopped", clips=w.clips_processed if w else 0, results=w.results_count if w else 0,
             seconds=round(time.monotonic() - t0, 1))
    if config is None:
        from .demo import demo_summary

        raised = d.alerts_pipeline.raised if d.alerts_pipeline is not None else []
        port = d.http_endpoint.port if d.http_endpoint is not None else None
        click.echo(demo_summary(raised, settings.resolved_data_dir(), port), err=True)


def _replay_settings(config: str | None, path: Path, stream: str | None, data_dir):
    from .demo import DEMO_CONFIG

    if config:
        from .config import ConfigError, read_yaml

        try:
            data = read_yaml(config)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
    else:
        data = json.loads(json.dumps(DEMO_CONFIG))
    streams = data.get("streams") or []
    sid = stream or (streams[0].get("id") if streams and isinstance(streams[0], dict) else "replay")
    orig = next((s for s in streams if isinstance(s, dict) and s.get("id") == sid), {})
    data["streams"] = [{"id": sid, "source": "file", "path": str(path), "speed": 0,
                        "labels": orig.get("labels", {})}]
    mons = []
    for m in data.get("monitors") or []:
        if isinstance(m, dict) and (m.get("streams") is None or sid in m["streams"]):
            m = dict(m)
            m["streams"] = None
            mons.append(m)
    data["monitors"] = mons
    return _settings(None, data, data_dir), sid


def _fmt_offset(s: float) -> str:
    m, sec = divmod(round(s, 1), 60)
    return f"{int(m):02d}:{sec:04.1f}"


@click.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML config whose monitors to run (default: the demo config).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              show_default="model.dir of the config; none: the model-free gate only",
              help="AF2 checkpoint directory (enables the AF2 monitors).")
@click.option("--stream", default=None, show_default="the first stream of the config",
              help="Stream id to replay as.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per monitor result.")
@click.option("--progress/--no-progress", default=True,
              help="A progress bar on stderr while loading and replaying.")
@click.option("--start", "start_iso", default=None,
              show_default="now", help="UTC time of the recording's first sample (ISO 8601).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              show_default="data_dir of the config, else $XDG_DATA_HOME/flamingo-edge",
              help="Where engines are stored.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default="WARNING",
              help="Least severe level logged.")
def replay(file, config, model_dir, stream, as_json, progress, start_iso, data_dir, log_level):
    """Run the monitors over FILE as fast as the hardware allows and print the timeline:
    one line per result, in the order of the spans' starts, answers escaped to one line
    (--json: one object per result as it completes)."""
    from datetime import datetime, timezone

    from streams.file import AudioFileError, FileSource

    settings, sid = _replay_settings(config, Path(file), stream, data_dir)
    _logging(settings, log_level, None)
    try:
        src = FileSource(file, sid, speed=0)  # an unreadable file: one line, before the model
    except AudioFileError as e:
        raise click.ClickException(str(e)) from None
    model = _load_model(model_dir, settings, progress)

    from .daemon import Daemon
    from .sinks import CallbackSink

    t0 = time.time()
    if start_iso:
        dt = datetime.fromisoformat(start_iso)
        t0 = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    src.start_time = t0
    results = []

    def collect(r, audio, sr):
        results.append(r)
        if as_json:
            d = {k: v for k, v in r.to_json_dict().items()}
            d["start_s"] = round(r.start.timestamp() - t0, 3)
            d["end_s"] = round(r.end.timestamp() - t0, 3)
            click.echo(json.dumps(d, default=str))
            sys.stdout.flush()

    d = Daemon(settings, model=model, sources=[src], sinks=[CallbackSink(collect)], lossless=True,
               alerts=False, http=False, log_results=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(src.duration_s, 1), unit="s", unit_scale=True, file=sys.stderr,
                   desc=f"replay {Path(file).name}", leave=False)
    d.start()
    try:
        while not d.finished():
            time.sleep(0.1)
            if bar is not None:
                bar.n = round(min(src.samples_emitted / SAMPLE_RATE, src.duration_s), 1)
                bar.refresh()
    except KeyboardInterrupt:
        pass
    finally:
        d.stop(timeout=5)
        if bar is not None:
            bar.close()
    if not as_json:
        if not results:
            click.echo("no monitor results")
        from .results import printable

        # in time order: by where each result's span starts in the file, then where it ends
        for r in sorted(results, key=lambda r: (r.start, r.end, r.monitor)):
            a, b = r.start.timestamp() - t0, r.end.timestamp() - t0
            what = printable(r.answer) if r.answer else (
                f"level {r.level_dbfs:.1f} dBFS" + (f", novelty {r.novelty:.1f}" if r.novelty is not None else ""))
            click.echo(f"{_fmt_offset(a)}-{_fmt_offset(b)}  {r.stream:<14} {r.monitor:<16} "
                       f"{r.verdict:<8} {what}")


@click.command("publish-audio")
@click.argument("file", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--mic", is_flag=True, help="Publish the microphone instead of a file.")
@click.option("--device", default=None, show_default="the system default input",
              help="Microphone name or index.")
@click.option("--stream", required=True, help="Stream id (topic <prefix>/audio/<stream>).")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None,
              show_default="none: the options below",
              help="Take broker settings (host, port, credentials, TLS) from this daemon config.")
@click.option("--host", default=None, show_default="the config's broker, else localhost",
              help="MQTT broker host.")
@click.option("--port", type=int, default=None, show_default="the config's broker, else 1883",
              help="MQTT broker port.")
@click.option("--prefix", default=None, show_default="the config's topic_prefix, else flamingo-edge",
              help="Topic prefix: frames go to <prefix>/audio/<stream>.")
@click.option("--username", default=None, show_default="the config's, else anonymous",
              help="MQTT user name.")
@click.option("--password-env", default="FLAMINGO_EDGE_MQTT__PASSWORD", show_default=True,
              help="Environment variable holding the broker password (the daemon's variable; "
                   "else the config's password).")
@click.option("--format", "sample_format", type=click.Choice(["int16", "float32"]), default="int16",
              help="Sample format on the wire.")
@click.option("--frame-ms", type=float, default=100.0, show_default=True,
              help="Audio per MQTT message.")
@click.option("--speed", type=float, default=1.0, show_default=True,
              help="File pacing: 1 = real time, 0 = as fast as possible.")
@click.option("--loop", is_flag=True, help="Publish FILE again and again.")
@click.option("--qos", type=click.Choice(["0", "1"]), default="0",
              help="MQTT QoS: 1 waits for the broker's acknowledgement of every frame.")
def publish_audio(file, mic, device, stream, config, host, port, prefix, username, password_env,
                  sample_format, frame_ms, speed, loop, qos):
    """Publish FILE (or --mic) as flamingo-edge audio frames over MQTT. Counts only frames the
    broker acknowledged (--qos 1) or the network took (--qos 0); exits 1 with one line when
    the broker refuses or drops the connection."""
    import os

    from streams.file import AudioFileError, check_audio_file
    from streams.mic import MicUnavailable
    from streams.publisher import PublishCount, PublishError, file_blocks, mic_blocks, publish

    if bool(file) == bool(mic):
        raise click.UsageError("give a FILE or --mic")
    if file:
        try:
            check_audio_file(file, stream)
        except AudioFileError as e:
            raise click.ClickException(str(e)) from None
    cfg = None
    if config:
        cfg = _settings(config).audio_mqtt
    host = host or (cfg.host if cfg else "localhost")
    port = port or (cfg.port if cfg else 1883)
    prefix = prefix or (cfg.topic_prefix if cfg else "flamingo-edge")
    username = username or (cfg.username if cfg else None)
    password = os.environ.get(password_env) or (
        cfg.password.get_secret_value() if cfg and cfg.password else None)
    blocks = mic_blocks(device, frame_ms=frame_ms) if mic else file_blocks(file, frame_ms, loop)
    t0 = time.monotonic()
    count = PublishCount()
    where = f"{prefix}/audio/{stream}"
    try:
        n = publish(blocks, stream, host, port, prefix, username, password, sample_format,
                    tls=cfg.tls if cfg else None, speed=0 if mic else speed, qos=int(qos),
                    count=count)
    except KeyboardInterrupt:
        click.echo(f"interrupted: published {count.sent} frames to {where} in "
                   f"{time.monotonic() - t0:.1f} s", err=True)
        sys.exit(130)
    except PublishError as e:
        raise click.ClickException(f"{e} ({e.sent} frames published to {where})") from None
    except MicUnavailable as e:  # the extra, PortAudio or the device: one line
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot reach the broker at {host}:{port}: {e}") from None
    click.echo(f"published {n} frames to {where} in {time.monotonic() - t0:.1f} s", err=True)
