"""Outbox, history and evidence clips against real SQLite files and real FLAC/PNG files."""

from __future__ import annotations

import json
import struct
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from alerts.clips import ClipStore, spectrogram_rgb, write_png
from alerts.config import ClipsConfig, OutboxConfig
from alerts.history import History
from alerts.models import Alert
from alerts.outbox import Outbox
from edge.metrics import Metrics
from tests.alerts.helpers import log_events, result


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


# ----------------------------------------------------------------------------- outbox
def test_outbox_order_ack_and_survives_reopen(tmp_path: Path) -> None:
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", OutboxConfig(), m)
    for i in range(5):
        ob.add(f"a{i}", json.dumps({"i": i}), ["mqtt", "webhook"])
    assert ob.count() == 5 and ob.count("mqtt") == 5 and _sample(m, "fe_alerts_queued") == 5
    rows = ob.pending("mqtt")
    assert [r.alert_id for r in rows] == [f"a{i}" for i in range(5)]
    ob.mark_sent(rows[0].row_id)
    ob.mark_sent(rows[1].row_id)
    assert [r.alert_id for r in ob.pending("mqtt", after_row=rows[2].row_id)] == ["a3", "a4"]
    ob.add("a3", "dup", ["mqtt"])  # an id still queued: ignored, not duplicated
    ob.close()
    ob2 = Outbox(tmp_path / "o.db", OutboxConfig(), m)
    assert [r.alert_id for r in ob2.pending("mqtt")] == ["a2", "a3", "a4"]
    assert ob2.pending("mqtt")[1].payload == json.dumps({"i": 3})
    assert [r.alert_id for r in ob2.pending("webhook")] == [f"a{i}" for i in range(5)]


def test_outbox_resend_after_ack_is_idempotent(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", OutboxConfig(), Metrics())
    ob.add("x", "{}", ["mqtt"])
    (row,) = ob.pending("mqtt")
    ob.mark_sent(row.row_id)
    ob.mark_sent(row.row_id)
    assert ob.count() == 0


def test_outbox_bounds_drop_oldest_and_count(tmp_path: Path, log_capture) -> None:
    m = Metrics()
    ob2 = Outbox(tmp_path / "o2.db", OutboxConfig(max_rows=3, max_age_s=100), m)
    for i in range(5):
        ob2._db.execute("INSERT INTO outbox (alert_id, sink, created, payload) VALUES (?,?,?,?)",
                        (f"b{i}", "mqtt", 1000.0 + 10 * i, "{}"))
    assert ob2.enforce_bounds(now=1000.0 + 125) == 3  # b0, b1, b2 are older than 100 s
    left = [r.alert_id for r in ob2.pending("mqtt")]
    assert left == ["b3", "b4"]
    dropped = [e for e in log_events(log_capture) if e["event"] == "outbox dropped alert"]
    assert sorted(e["alert_id"] for e in dropped) == ["b0", "b1", "b2"]
    assert all(e["reason"] == "age" and e["level"] == "warning" for e in dropped)
    assert _sample(m, "fe_alerts_dropped_total", reason="age") == 3


def test_outbox_count_bound(tmp_path: Path) -> None:
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", OutboxConfig(max_rows=3, max_age_s=1e9), m)
    for i in range(6):
        ob.add(f"a{i}", "{}", ["mqtt"])
    assert [r.alert_id for r in ob.pending("mqtt")] == ["a3", "a4", "a5"]
    assert _sample(m, "fe_alerts_dropped_total", reason="count") == 3


def test_outbox_count_bound_is_per_sink(tmp_path: Path) -> None:
    """`max_rows` bounds each sink's backlog: with MQTT and the webhook on, 3 means the 3
    newest alerts for each, not 3 rows shared (1.5 alerts)."""
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", OutboxConfig(max_rows=3, max_age_s=1e9), m)
    for i in range(5):
        ob.add(f"a{i}", "{}", ["mqtt", "webhook"])
    assert [r.alert_id for r in ob.pending("mqtt")] == ["a2", "a3", "a4"]
    assert [r.alert_id for r in ob.pending("webhook")] == ["a2", "a3", "a4"]
    assert _sample(m, "fe_alerts_dropped_total", reason="count") == 4  # a0, a1 for each sink


# ----------------------------------------------------------------------------- history
def test_history_records_lists_shows_and_prunes(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db")
    r = result("positive")
    h.record_result(r, "boot", ts=1000.0)
    h.record_monitor("s1", "knock", ts=1000.0)
    a = Alert.from_result(r, boot_id="boot", seq=1, raised_at=datetime.fromtimestamp(1000.0, timezone.utc))
    b = Alert.from_result(result("positive", monitor="glass"), boot_id="boot", seq=2,
                          raised_at=datetime.fromtimestamp(2000.0, timezone.utc))
    h.record_alert(a)
    h.record_alert(b)
    assert [x["id"] for x in h.list_alerts()] == [b.id, a.id]
    assert [x["id"] for x in h.list_alerts(monitor="knock")] == [a.id]
    assert h.get_alert(a.id[:8])["seq"] == 1  # type: ignore[index]
    assert h.get_alert("") is None  # ambiguous
    assert Alert.from_dict(h.get_alert(b.id)) == b  # type: ignore[arg-type]
    assert h.known_monitors() == [("s1", "knock")]
    ro = History(tmp_path / "h.db", readonly=True)
    assert len(ro.list_alerts()) == 2
    assert h.prune(retention_s=500, now=2100.0) == 2  # the result and alert a at t=1000
    assert [x["id"] for x in h.list_alerts()] == [b.id]
    assert h.count("results") == 0


# ----------------------------------------------------------------------------- clips
def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        out.append((kind, body))
        pos += 12 + n
    return out


def test_png_writer_roundtrip(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", img)
    chunks = _png_chunks((tmp_path / "x.png").read_bytes())
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (w, h, depth, ctype) == (5, 7, 8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(7, 1 + 5 * 3)
    assert (raw[:, 0] == 0).all()
    assert np.array_equal(raw[:, 1:].reshape(7, 5, 3), img)


def test_spectrogram_shows_a_tone_at_the_right_height() -> None:
    sr, n_fft = 16000, 512
    t = np.arange(sr) / sr
    rgb = spectrogram_rgb(0.5 * np.sin(2 * np.pi * 2000 * t), n_fft=n_fft, max_width=100)
    assert rgb.shape[0] == n_fft // 2 + 1 and rgb.shape[1] <= 100 and rgb.shape[2] == 3
    brightness = rgb.astype(int).sum(axis=2).mean(axis=1)
    row = int(np.argmax(brightness))
    expected = (n_fft // 2) - round(2000 / (sr / n_fft))  # flipped: high frequencies on top
    assert abs(row - expected) <= 1


def test_clip_store_flac_png_and_disk_retention(tmp_path: Path) -> None:
    sr = 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)).astype(np.float32)
    store = ClipStore(tmp_path / "clips", ClipsConfig(max_bytes=10**9))
    when = datetime(2026, 3, 1, tzinfo=timezone.utc)
    flac, png = store.save("a1", audio, sr, when)
    assert flac == "2026-03-01/a1.flac" and png == "2026-03-01/a1.png"
    data, got_sr = sf.read(str(tmp_path / "clips" / flac), dtype="float32")
    assert got_sr == sr and data.shape == audio.shape
    assert np.max(np.abs(data - audio)) < 1e-3  # 16-bit quantisation only
    _png_chunks((tmp_path / "clips" / png).read_bytes())
    one = store.total_bytes
    # a store that holds about two clips: the oldest go first
    small = ClipStore(tmp_path / "clips", ClipsConfig(max_bytes=int(one * 2.5)))
    for i in range(2, 6):
        small.save(f"a{i}", audio, sr, when)
    names = sorted(p.name for p in (tmp_path / "clips").rglob("*.flac"))
    assert names == ["a4.flac", "a5.flac"]
    assert small.total_bytes <= one * 2.5
    assert small.total_bytes == sum(p.stat().st_size for p in (tmp_path / "clips").rglob("*") if p.is_file())


def test_clip_store_accepts_int16_and_stereo(tmp_path: Path) -> None:
    store = ClipStore(tmp_path, ClipsConfig())
    pcm = (np.random.default_rng(1).normal(0, 3000, size=(8000, 2))).astype(np.int16)
    flac, png = store.save("st", pcm, 8000, datetime(2026, 1, 1, tzinfo=timezone.utc))
    data, sr = sf.read(str(tmp_path / flac), dtype="int16")
    assert sr == 8000 and np.array_equal(data, pcm)
    assert png is not None
    # the spectrogram of int16 stereo is scaled like the same audio as float, not saturated
    chunks = _png_chunks((tmp_path / png).read_bytes())
    w, h = struct.unpack(">II", chunks[0][1][:8])
    rgb = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(h, 1 + w * 3)[:, 1:].reshape(h, w, 3)
    want = spectrogram_rgb((pcm / 32767.0).mean(axis=1))
    assert np.abs(rgb.astype(int) - want.astype(int)).max() <= 1


def test_outbox_per_topic_delivery_survives_reopen_and_refusals_are_bounded(tmp_path: Path) -> None:
    topics = ("p/s1/event", "p/events")
    ob = Outbox(tmp_path / "o.db", OutboxConfig(), Metrics())
    ob.add("a1", "{}", ["mqtt"])
    ob.add("a2", "{}", ["mqtt"])
    r1, r2 = ob.pending("mqtt")
    out = ob.record_topic(r1.row_id, topics[0], acked=True, required=topics, max_refusals=2)
    assert not out.done
    ob.close()
    ob = Outbox(tmp_path / "o.db", OutboxConfig(), Metrics())  # a crash: the ack is on disk
    r1, r2 = ob.pending("mqtt")
    assert r1.done_topics() == {topics[0]} and r2.done_topics() == set()
    assert ob.record_topic(r1.row_id, topics[1], acked=True, required=topics, max_refusals=2).done
    # a refused topic: counted, given up at the bound; the row ends when the other acked
    out = ob.record_topic(r2.row_id, topics[1], acked=False, required=topics, max_refusals=2, error="0x87")
    assert (out.refusals, out.gave_up, out.done) == (1, False, False)
    out = ob.record_topic(r2.row_id, topics[1], acked=False, required=topics, max_refusals=2, error="0x87")
    assert (out.refusals, out.gave_up, out.done) == (2, True, False)
    assert ob.pending("mqtt")[0].done_topics() == {topics[1]}
    out = ob.record_topic(r2.row_id, topics[0], acked=True, required=topics, max_refusals=2)
    assert out.done and out.given_up == (topics[1],) and ob.count() == 0
    assert ob.record_topic(r2.row_id, topics[0], acked=True, required=topics, max_refusals=2).missing


def test_outbox_written_before_per_topic_state_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "o.db")
    db.executescript(
        "CREATE TABLE outbox (row_id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT NOT NULL, sink TEXT NOT NULL,"
        " created REAL NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,"
        " UNIQUE (alert_id, sink));"
        "INSERT INTO outbox (alert_id, sink, created, payload) VALUES ('old', 'mqtt', 1e12, '{\"x\": 1}');")
    db.commit()
    db.close()
    ob = Outbox(tmp_path / "o.db", OutboxConfig(), Metrics())
    (row,) = ob.pending("mqtt")
    assert row.alert_id == "old" and row.delivery == {} and row.payload == '{"x": 1}'
