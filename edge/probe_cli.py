"""`flamingo-edge probe URL`: check a camera / stream before adding it to the config.

Connects the way a `source: url` stream does (same options, same converter), prints the
input's audio tracks, then a live level meter of the selected track at 16 kHz mono for a few
seconds. Errors are one line on stderr (URL redacted) and exit status 2.
"""

from __future__ import annotations

import os
import sys
import time

import click
import numpy as np


def _meter(db: float, width: int = 40) -> str:
    filled = round(max(0.0, min(1.0, (db + 60.0) / 60.0)) * width)
    return "#" * filled + "." * (width - filled)


@click.command("probe")
@click.argument("url")
@click.option("--seconds", type=float, default=5.0, show_default=True,
              help="How long to show the level meter.")
@click.option("--track", type=int, default=None, show_default="the first audio track",
              help="Audio track index.")
@click.option("--language", default=None, show_default="any", help="Or the first audio track in this language.")
@click.option("--transport", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True,
              help="RTSP transport.")
@click.option("--credentials-env", default=None, show_default="none",
              help="Environment variable holding user:password.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Connect / read timeout in seconds.")
def probe(url, seconds, track, language, transport, credentials_env, timeout) -> None:
    """Print URL's audio tracks, then a live level meter (dBFS, 16 kHz mono)."""
    from streams.base import SAMPLE_RATE, Converter
    from streams.url import (
        ALL_MEDIA,
        audio_tracks,
        classify,
        frame_samples,
        open_input,
        redact_url,
        select_track,
    )

    safe = redact_url(url)
    creds = None
    if credentials_env:
        creds = os.environ.get(credentials_env)
        if not creds:
            click.echo(f"probe: environment variable {credentials_env} is not set", err=True)
            sys.exit(2)
    try:
        # every media the input offers (the source itself sets up only the audio of an
        # RTSP camera): the installer sees the video streams too
        container = open_input(url, credentials=creds, transport=transport,
                               open_timeout=timeout, read_timeout=timeout,
                               options={"allowed_media_types": ALL_MEDIA}
                               if url.lower().startswith("rtsp") else None)
    except Exception as e:  # noqa: BLE001 - one line, whatever it was
        click.echo(f"probe {safe}: {classify(e)[1]}", err=True)
        sys.exit(2)
    try:
        click.echo(f"{safe}: {container.format.long_name or container.format.name}")
        for s in container.streams:
            if s.type != "audio":
                click.echo(f"  stream {s.index}: {s.type} ({s.codec_context.name})")
        tracks = audio_tracks(container)
        for t in tracks:
            click.echo(f"  {t.describe()}")
        try:
            t = select_track(tracks, track, language)
        except Exception as e:  # noqa: BLE001
            click.echo(f"probe {safe}: {classify(e)[1]}", err=True)
            sys.exit(2)
        click.echo(f"level of audio track {t.index} at {SAMPLE_RATE} Hz mono "
                   f"(one line per 0.5 s):")
        astream = container.streams[t.stream_index]
        conv: Converter | None = None
        block: list[np.ndarray] = []
        n = 0
        end = time.monotonic() + seconds
        corrupt = 0
        last_audio = time.monotonic()
        # every stream's packets: with demux(astream) a camera whose audio stopped while its
        # video flows never returns a packet here, and the meter would never end
        for packet in container.demux():
            if time.monotonic() >= end:
                break
            if packet.stream_index != astream.index:
                continue
            last_audio = time.monotonic()
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                corrupt += 1
                continue
            try:
                frames = astream.codec_context.decode(packet)
            except Exception:  # noqa: BLE001 - a corrupt packet: count and go on
                corrupt += 1
                continue
            for fr in frames:
                if conv is None or conv.in_rate != fr.sample_rate:
                    conv = Converter(fr.sample_rate, SAMPLE_RATE)
                y = conv(frame_samples(fr))
                block.append(y)
                n += y.size
                if n >= SAMPLE_RATE // 2:
                    x = np.concatenate(block)
                    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
                    db = max(-120.0, 20 * np.log10(rms + 1e-12))
                    click.echo(f"{db:7.1f} dBFS |{_meter(db)}|")
                    block, n = [], 0
        if corrupt:
            click.echo(f"{corrupt} corrupt packet(s) skipped")
        silent_s = time.monotonic() - last_audio
        if silent_s >= 1.0:
            click.echo(f"probe {safe}: no audio packet for the last {silent_s:.1f} s "
                       "(the input's other streams still flow)", err=True)
            sys.exit(2)
    except Exception as e:  # noqa: BLE001
        click.echo(f"probe {safe}: {classify(e)[1]}", err=True)
        sys.exit(2)
    finally:
        container.close()
