"""Ingest benchmark: CPU per camera stream (decode + downmix + resample to 16 kHz mono).

    python bench/bench_ingest.py [--seconds 60] [--rtsp-streams 4] [--rtsp-seconds 10]

Two codecs cameras send: G.711 µ-law at 8 kHz mono and AAC at 48 kHz stereo.

1. **decode**: `--seconds` of a tone + noise, encoded once with FFmpeg (PyAV), then demuxed,
   decoded and converted exactly as `streams/url.py` does (`frame_samples` + the project's
   `Converter`), single-threaded, from memory. CPU seconds per audio second = the fraction of
   one core one stream costs; its inverse is the number of streams one core ingests in real
   time (an upper bound: no network).
2. **rtsp**: `--rtsp-streams` `UrlSource`s read a real GStreamer RTSP server on loopback
   (tests/streams/rtsp_server.py, run with /usr/bin/python3) for `--rtsp-seconds`; this
   process's CPU time (all threads: RTSP/RTP demux, decode, convert, the sources' Python)
   divided by the audio seconds received. The server runs in its own process and is not counted.

Writes bench/results/ingest.json with the machine and the load average before and after (the
machine is shared: compare the two codecs' ratios within one run).
"""

from __future__ import annotations

import argparse
import io
import threading
import time

import numpy as np

import _common as C  # puts the repo on sys.path

SR = 16000


def _signal(seconds: float, rate: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    return np.repeat(x[None, :], channels, axis=0).astype(np.float32)


def encode(codec: str, seconds: float) -> tuple[bytes, str]:
    import av

    if codec == "g711":
        fmt, name, rate, layout, sample_fmt = "wav", "pcm_mulaw", 8000, "mono", "s16"
    else:
        fmt, name, rate, layout, sample_fmt = "adts", "aac", 48000, "stereo", "fltp"
    ch = 1 if layout == "mono" else 2
    x = _signal(seconds, rate, ch)
    buf = io.BytesIO()
    out = av.open(buf, "w", format=fmt)
    st = out.add_stream(name, rate=rate, layout=layout)
    step = 1024
    for i in range(0, x.shape[1], step):
        blk = x[:, i:i + step]
        if sample_fmt == "s16":
            fr = av.AudioFrame.from_ndarray((blk * 32767).astype(np.int16).reshape(1, -1),
                                            format="s16", layout=layout)
        else:
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(blk), format="fltp",
                                            layout=layout)
        fr.sample_rate = rate
        fr.pts = i
        for p in st.encode(fr):
            out.mux(p)
    for p in st.encode(None):
        out.mux(p)
    out.close()
    return buf.getvalue(), fmt


def decode_all(data: bytes, fmt: str) -> int:
    """Demux + decode + convert as the URL source does; returns 16-kHz samples produced."""
    import av

    from streams.base import Converter
    from streams.url import frame_samples

    c = av.open(io.BytesIO(data), format=fmt)
    a = c.streams.audio[0]
    conv = None
    n = 0
    for packet in c.demux(a):
        if packet.size == 0:
            continue
        for fr in a.codec_context.decode(packet):
            if conv is None:
                conv = Converter(fr.sample_rate, SR)
            n += conv(frame_samples(fr)).size
    c.close()
    return n


def bench_decode(codec: str, seconds: float) -> dict:
    data, fmt = encode(codec, seconds)
    res = C.timeit(lambda: decode_all(data, fmt), warmup=1, repeats=3)
    cpu = res["cpu_min_s"] / seconds
    return {"audio_s": seconds, "encoded_bytes": len(data), **res,
            "cpu_s_per_audio_s": cpu, "streams_per_core": 1.0 / cpu}


def bench_rtsp(codec: str, n: int, seconds: float) -> dict:
    from streams.url import UrlSource
    from tests.streams.servers import RtspServer, tone_aac, tone_mulaw

    launch = tone_mulaw(440, 0.3) if codec == "g711" else tone_aac(440, 0.3)
    srv = RtspServer([{"path": "/cam", "launch": launch}]).start()
    samples = [0] * n
    stop = threading.Event()

    def sink(i):
        def emit(f):
            samples[i] += f.samples.size
        return emit

    srcs = [UrlSource(f"cam{i}", srv.url("/cam"), settle=0.5) for i in range(n)]
    threads = [threading.Thread(target=s.run, args=(sink(i), stop), daemon=True)
               for i, s in enumerate(srcs)]
    try:
        for t in threads:
            t.start()
        end = time.monotonic() + 15
        while time.monotonic() < end and not all(s.state == "streaming" for s in srcs):
            time.sleep(0.05)
        assert all(s.state == "streaming" for s in srcs), [s.status() for s in srcs]
        time.sleep(1.0)  # past connecting and settling
        s0 = sum(samples)
        with C.Clock() as clk:
            time.sleep(seconds)
        got = (sum(samples) - s0) / SR
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        srv.kill()
    cpu = clk.cpu / got
    return {"streams": n, "seconds": seconds, "audio_s_received": got, "process_cpu_s": clk.cpu,
            "cpu_s_per_audio_s": cpu, "streams_per_core": 1.0 / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rtsp-streams", type=int, default=4)
    ap.add_argument("--rtsp-seconds", type=float, default=10.0)
    args = ap.parse_args()
    import av

    machine = C.machine_info()
    out = {"pyav": av.__version__, "ffmpeg": str(av.ffmpeg_version_info), "decode": {},
           "rtsp": {}}
    for codec in ("g711", "aac"):
        out["decode"][codec] = r = bench_decode(codec, args.seconds)
        print(f"decode {codec}: {r['cpu_s_per_audio_s'] * 1000:.2f} ms CPU per audio s, "
              f"{r['streams_per_core']:.0f} streams/core")
    for codec in ("g711", "aac"):
        out["rtsp"][codec] = r = bench_rtsp(codec, args.rtsp_streams, args.rtsp_seconds)
        print(f"rtsp {codec} x{args.rtsp_streams}: {r['cpu_s_per_audio_s'] * 1000:.2f} ms CPU "
              f"per audio s, {r['streams_per_core']:.0f} streams/core")
    C.write_result("ingest", out, machine=machine)


if __name__ == "__main__":
    main()
