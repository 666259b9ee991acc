"""The embedded default: a generated machine-room recording and the config that plays it.

`flamingo-edge run` with no ``--config`` plays `demo_recording()` through the whole
pipeline. The recording is synthesised (deterministically, seeded) on first use and cached
under the data dir, so the project ships no audio and no weights:

    0:00-1:00  machine hum (50 Hz mains hum with harmonics, motor noise, a faint bearing whine)
    1:00-1:40  + intermittent knocking (a loose part, every ~1.3 s)
    1:40-2:20  hum
    2:20-2:45  + an alarm (two-tone 960/770 Hz, switching every 0.5 s)
    2:45-3:15  hum
    3:15-3:45  + knocking again, faster and louder
    3:45-4:00  hum
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .constants import SAMPLE_RATE as SR

DEMO_VERSION = 1
DEMO_SECONDS = 240.0
DEMO_SEED = 20240611
DEMO_SPEED = 8.0
BUILTIN_DEMO = "builtin:demo"
#: the demo's alert cooldown / de-duplication span, in seconds of the recording
DEMO_RULE_SPAN_S = 20.0

#: (start_s, end_s, what) - the ground truth of the demo recording
DEMO_EVENTS = (
    (60.0, 100.0, "knocking"),
    (140.0, 165.0, "alarm"),
    (195.0, 225.0, "knocking"),
)


def _shaped_noise(rng: np.random.Generator, n: int, corner_hz: float) -> np.ndarray:
    white = rng.standard_normal(n)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1.0 / SR)
    spec /= 1.0 + (f / corner_hz) ** 2
    y = np.fft.irfft(spec, n)
    return y / np.sqrt(np.mean(y ** 2))


def _knock(rng: np.random.Generator, amp: float) -> np.ndarray:
    n = int(0.25 * SR)
    t = np.arange(n) / SR
    y = np.zeros(n)
    for f, a, tau in ((180.0, 1.0, 0.08), (420.0, 0.7, 0.05), (1100.0, 0.4, 0.02)):
        f = f * (1 + 0.03 * rng.standard_normal())
        y += a * np.sin(2 * np.pi * f * t) * np.exp(-t / tau)
    click = rng.standard_normal(n) * np.exp(-t / 0.004)
    y += 0.5 * click
    return amp * y / np.max(np.abs(y))


def generate_demo(seconds: float = DEMO_SECONDS, seed: int = DEMO_SEED) -> np.ndarray:
    """The demo recording as float32 mono at 16 kHz (deterministic for a given seed; the last
    two are kept, so a process that needs it twice synthesises it once: ~3 s)."""
    return _generate_demo(float(seconds), int(seed)).copy()


@functools.lru_cache(maxsize=2)
def _generate_demo(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    # machine hum: mains hum and harmonics, slowly breathing, motor noise, bearing whine
    hum = np.zeros(n)
    for k, a in ((1, 1.0), (2, 0.5), (3, 0.35), (4, 0.2), (6, 0.1)):
        hum += a * np.sin(2 * np.pi * 50.0 * k * t + rng.uniform(0, 2 * np.pi))
    hum *= 1.0 + 0.1 * np.sin(2 * np.pi * 0.07 * t)
    x = 0.06 * hum + 0.02 * _shaped_noise(rng, n, 300.0)
    x += 0.004 * np.sin(2 * np.pi * 1230.0 * t) * (1.0 + 0.3 * np.sin(2 * np.pi * 0.5 * t))
    x += 0.002 * rng.standard_normal(n)
    # knocking
    for (start, end, _what), (period, amp) in zip(
        [e for e in DEMO_EVENTS if e[2] == "knocking"], ((1.3, 0.5), (0.8, 0.6))
    ):
        s = start + 0.2
        while s < end - 0.3:
            knock = _knock(rng, amp * (0.8 + 0.4 * rng.random()))
            i = int(s * SR)
            x[i:i + knock.size] += knock[: max(0, min(knock.size, n - i))]
            s += period * (0.85 + 0.3 * rng.random())
    # alarm: two tones with a few harmonics, switching every 0.5 s, soft edges
    a0, a1 = (min(n, int(v * SR)) for v in DEMO_EVENTS[1][:2])
    if a1 - a0 < SR:
        return np.clip(x, -1.0, 1.0).astype(np.float32)
    ta = np.arange(a1 - a0) / SR
    freq = np.where((ta // 0.5) % 2 == 0, 960.0, 770.0)
    phase = 2 * np.pi * np.cumsum(freq) / SR
    alarm = np.sin(phase) + 0.3 * np.sin(3 * phase) + 0.15 * np.sin(5 * phase)
    env = np.minimum(1.0, np.minimum(ta, ta[-1] - ta) / 0.05)
    x[a0:a1] += 0.3 * alarm * env
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def demo_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "demo" / f"machine-room-v{DEMO_VERSION}.flac"


def demo_recording(data_dir: str | Path) -> Path:
    """Path of the cached demo recording, generating it on first use."""
    import soundfile as sf

    p = demo_path(data_dir)
    if p.exists():
        return p
    import structlog

    structlog.get_logger(__name__).info("generating the demo recording (first run only)",
                                        path=str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    sf.write(str(tmp), generate_demo(), SR, subtype="PCM_16", format="FLAC")
    os.replace(tmp, p)
    return p


def demo_digest() -> str:
    """SHA-256 of the generated samples (int16), for determinism checks."""
    x = generate_demo()
    return hashlib.sha256((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).hexdigest()


#: The embedded default configuration (configs/demo.yaml is the same, written out).
DEMO_CONFIG: dict[str, Any] = {
    "streams": [
        {
            "id": "machine-room",
            "source": "file",
            "path": BUILTIN_DEMO,
            "speed": 8,  # DEMO_SPEED
            "labels": {"location": "machine room"},
        }
    ],
    "gate": {"warmup_clips": 3},
    "monitors": [
        {
            "name": "loud",
            "kind": "gate",
            "triggers": ["level_dbfs > -18"],
            "cooldown": "30s",
            "severity": "warning",
        },
        {
            "name": "unusual-sound",
            "kind": "gate",
            "triggers": ["novelty > 2.5"],
            "cooldown": "20s",
            "severity": "info",
        },
        {
            "name": "knocking",
            "question": "Is there a knocking or banging sound? Answer yes or no.",
            "answer": "yes_no",
            "every": "60s",
            "triggers": ["novelty > 2.5"],
            "cooldown": "30s",
            "severity": "warning",
        },
        {
            "name": "alarm",
            "question": "Is an alarm or a siren sounding? Answer yes or no.",
            "answer": "yes_no",
            "every": "60s",
            "triggers": ["level_dbfs > -18"],
            "cooldown": "30s",
            "severity": "critical",
        },
        {
            "name": "describe",
            "question": "Describe the sounds in this recording from the {labels.location}.",
            "answer": "text",
            "alert_if": "alarm|siren|knock|bang",
            "every": "120s",
            "window": "60s",
        },
    ],
    "alerts": {"mqtt": {"enabled": False},
               "rules": {"cooldown_s": DEMO_RULE_SPAN_S / DEMO_SPEED,
                         "dedupe_window_s": DEMO_RULE_SPAN_S / DEMO_SPEED}},
}


def demo_config(speed: float | None = None) -> dict[str, Any]:
    """`DEMO_CONFIG` played at ``speed`` (None: 8x). The alert rules count wall-clock seconds,
    so they are scaled to mean the same 20 s of the recording at any speed (0: no cooldown)."""
    import copy

    cfg = copy.deepcopy(DEMO_CONFIG)
    speed = DEMO_SPEED if speed is None else float(speed)
    span = DEMO_RULE_SPAN_S / speed if speed > 0 else 0.0
    cfg["alerts"]["rules"] = {"cooldown_s": span, "dedupe_window_s": span}
    return cfg


def demo_summary(alerts: list[dict[str, Any]], data_dir: str | Path, http_port: int | None) -> str:
    """What the demo raised and where to look, for the end of `flamingo-edge run`."""
    lines = [f"demo finished: {len(alerts)} alert(s) raised"]
    from .results import printable
    from .sinks import mmss

    for a in alerts:
        off = a.get("offset_s")
        at = f"{mmss(off[0])}-{mmss(off[1])}" if off else ""
        lines.append(f"  {at:<13} {a['monitor']:<14} {a['severity']:<8} {printable(a.get('answer') or '')}".rstrip())
    truth = ", ".join(f"{what} at {int(s // 60)}:{int(s % 60):02d}" for s, _e, what in DEMO_EVENTS)
    lines.append(f"the recording holds: {truth}")
    lines.append(f"see them again: flamingo-edge alerts list --data-dir {data_dir}")
    if http_port is not None:
        lines.append(f"while the daemon runs: http://127.0.0.1:{http_port}/ (http.enabled)")
    return "\n".join(lines)
