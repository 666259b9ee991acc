"""Ingest benchmark: CPU per camera stream (decode + downmix + resample to 16 kHz mono).

    python bench/bench_ingest.py --cpu 1 [--seconds 60] [--rtsp-streams 4] [--rtsp-seconds 10]

``--cpu 1`` runs this process on core 1 only (as ``taskset -c 1`` would) and the RTSP server on
the other cores, so what is measured is what one core does. Two codecs cameras send: G.711
µ-law at 8 kHz mono and AAC at 48 kHz stereo.

1. **decode**: `--seconds` of a tone + noise, encoded once with FFmpeg (PyAV), then demuxed,
   decoded and converted exactly as `streams/url.py` does (`frame_samples` + the project's
   `Converter`), single-threaded, from memory: the codec and resampler alone.
2. **rtsp**: `--rtsp-streams` `UrlSource`s read a real GStreamer RTSP server on loopback
   (tests/streams/rtsp_server.py, run with /usr/bin/python3) for `--rtsp-seconds`; this
   process's CPU time (all threads: RTSP/RTP demux, decode, convert, the sources' Python)
   divided by the audio seconds received. The server runs in its own process and is not counted.
3. **camera**: the same with a camera's session, MJPEG video (320x240, 30 fps, about 3 Mbit/s)
   + AAC 48 kHz stereo: the source's default (RTSP sets up the audio media only) against asking for the
   video too (``allowed_media_types=video+audio``, what a source that demuxes everything pays).
4. **saturate**: N sources on the one core against one shared server pipeline, N doubled
   from `--saturate-from` for `--saturate-s` each, until they fall behind (audio received
   < 97 % of N x real time, or a source not streaming): the largest N that keeps up is the
   number of camera streams one core ingests in real time, measured, not extrapolated.
5. **encoder**: the released AF-CLAP encoder (random weights, 1 thread) on the same core, CPU
   seconds per 10-s clip in float32 and bfloat16, so ingest/encoder ratios come from one run.

Writes bench/results/ingest.json with the machine and the load average before and after (the
machine is shared: compare ratios within one run).
"""

from __future__ import annotations

import argparse
import io
import os
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
    from tests.streams.servers import encode_audio

    if codec == "g711":
        fmt, name, rate, layout, sample_fmt = "wav", "pcm_mulaw", 8000, "mono", "s16"
    else:
        fmt, name, rate, layout, sample_fmt = "adts", "aac", 48000, "stereo", "fltp"
    x = _signal(seconds, rate, 1 if layout == "mono" else 2)
    return encode_audio(x, fmt, name, rate, layout, sample_fmt), fmt


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


SERVER_CPUS: set[int] | None = None  # where the RTSP server runs (off the measured core)
# MJPEG 320x240 at 30 fps: about 3 Mbit/s, a camera main stream's bitrate
VIDEO = "videotestsrc is-live=true ! jpegenc ! rtpjpegpay name=pay0"


def launch_for(codec: str) -> str:
    from tests.streams.servers import tone_aac, tone_mulaw

    if codec == "g711":
        return tone_mulaw(440, 0.3)
    if codec == "aac":
        return tone_aac(440, 0.3)
    # a camera: video + AAC 48 kHz stereo
    return f"{VIDEO} {tone_aac(440, 0.3).replace('pay0', 'pay1')}"


def read_streams(url: str, n: int, seconds: float, options: dict | None = None,
                 connect_s: float = 30.0) -> dict:
    """``n`` UrlSources on ``url`` for ``seconds`` (after all stream and settle): this
    process's CPU and the audio received."""
    from streams.url import UrlSource

    samples = [0] * n
    stop = threading.Event()

    def sink(i):
        def emit(f):
            samples[i] += f.samples.size
        return emit

    srcs = [UrlSource(f"cam{i}", url, settle=0.5, options=options) for i in range(n)]
    threads = [threading.Thread(target=s.run, args=(sink(i), stop), daemon=True)
               for i, s in enumerate(srcs)]
    try:
        for t in threads:
            t.start()
        end = time.monotonic() + connect_s
        while time.monotonic() < end and not all(s.state == "streaming" for s in srcs):
            time.sleep(0.05)
        streaming = sum(s.state == "streaming" for s in srcs)
        if streaming < n:
            return {"streams": n, "streaming": streaming, "kept_up": False,
                    "note": f"only {streaming} of {n} sources streaming after {connect_s:g} s"}
        time.sleep(1.5)  # past connecting and settling
        s0 = sum(samples)
        r0 = sum(s.reconnects for s in srcs)
        with C.Clock() as clk:
            time.sleep(seconds)
        got = (sum(samples) - s0) / SR
        reconnects = sum(s.reconnects for s in srcs) - r0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    cpu = clk.cpu / got if got else float("inf")
    share = got / (n * clk.wall)  # of real time, per stream
    return {"streams": n, "seconds": round(clk.wall, 2), "audio_s_received": round(got, 2),
            "real_time_share": round(share, 4), "process_cpu_s": round(clk.cpu, 3),
            "core_busy": round(clk.cpu / clk.wall, 3), "reconnects": reconnects,
            "cpu_s_per_audio_s": cpu, "streams_per_core": 1.0 / cpu if cpu else None,
            "kept_up": share >= 0.97 and reconnects == 0}


def bench_rtsp(codec: str, n: int, seconds: float, options: dict | None = None) -> dict:
    from tests.streams.servers import RtspServer

    srv = RtspServer([{"path": "/cam", "launch": launch_for(codec)}], cpus=SERVER_CPUS).start()
    try:
        return read_streams(srv.url("/cam"), n, seconds, options)
    finally:
        srv.kill()


def saturate(codec: str, start: int, seconds: float, limit: int) -> dict:
    """Double N until the sources on this core fall behind. Each step has its own server
    (one shared pipeline for its N clients: a shared media does not survive its clients)."""
    from tests.streams.servers import RtspServer

    steps = []
    n = start
    while n <= limit:
        srv = RtspServer([{"path": "/cam", "launch": launch_for(codec), "shared": True}],
                         cpus=SERVER_CPUS).start()
        try:
            r = read_streams(srv.url("/cam"), n, seconds, connect_s=30.0 + 0.1 * n)
        finally:
            srv.kill()
        steps.append(r)
        print(f"saturate {codec}: {n} streams -> "
              + (f"{r['real_time_share']:.1%} of real time, core {r['core_busy']:.0%} busy"
                 if "real_time_share" in r else r["note"]), flush=True)
        if not r["kept_up"]:
            break
        n *= 2
    good = [r["streams"] for r in steps if r["kept_up"]]
    bad = [r["streams"] for r in steps if not r["kept_up"]]
    return {"largest_kept_up": max(good, default=0), "first_behind": min(bad, default=None),
            "steps": steps}


def bench_encoder() -> dict:
    """CPU seconds per 10-s clip of the released encoder, 1 thread, float32 and bfloat16."""
    import torch

    from bench_encoder import encoder_model

    torch.set_num_threads(1)
    out = {}
    clip = 0.1 * torch.randn(1, 160000, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16):
        m, notes = encoder_model(dtype)
        r = C.timeit(lambda m=m: m.encode(clip), warmup=1, repeats=3)
        name = str(dtype).replace("torch.", "")
        out[name] = {"cpu_s_per_clip": r["cpu_min_s"], "wall_s_per_clip": r["min_s"],
                     "cpu_s_per_audio_s": r["cpu_min_s"] / 10.0, "notes": notes}
        print(f"encoder {name}: {r['cpu_min_s']:.2f} s CPU per 10-s clip", flush=True)
        del m
    return out


def main() -> None:
    global SERVER_CPUS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", type=int, default=None,
                    help="run on this core only (the RTSP server on the others)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rtsp-streams", type=int, default=4)
    ap.add_argument("--rtsp-seconds", type=float, default=10.0)
    ap.add_argument("--saturate-from", type=int, default=8)
    ap.add_argument("--saturate-s", type=float, default=8.0)
    ap.add_argument("--saturate-max", type=int, default=256)
    ap.add_argument("--skip", action="append", default=[],
                    help="decode | rtsp | camera | saturate | encoder")
    args = ap.parse_args()
    import av

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    own = os.sched_getaffinity(0)
    others = set(range(os.cpu_count() or 1)) - own
    SERVER_CPUS = others or None
    machine = C.machine_info()
    out: dict = {"pyav": av.__version__, "ffmpeg": str(av.ffmpeg_version_info),
                 "cpus": sorted(own), "server_cpus": sorted(others), "decode": {}, "rtsp": {},
                 "camera": {}, "saturate": {}}
    if "decode" not in args.skip:
        for codec in ("g711", "aac"):
            out["decode"][codec] = r = bench_decode(codec, args.seconds)
            print(f"decode {codec}: {r['cpu_s_per_audio_s'] * 1000:.2f} ms CPU per audio s, "
                  f"{r['streams_per_core']:.0f} streams/core", flush=True)
    def save() -> None:  # after every section: a run cut short keeps what it measured
        out["loadavg_end"] = os.getloadavg()
        C.write_result("ingest", out, machine=dict(machine))

    save()
    if "rtsp" not in args.skip:
        for codec in ("g711", "aac"):
            out["rtsp"][codec] = r = bench_rtsp(codec, args.rtsp_streams, args.rtsp_seconds)
            print(f"rtsp {codec} x{args.rtsp_streams}: {r['cpu_s_per_audio_s'] * 1000:.2f} ms "
                  f"CPU per audio s, {r['streams_per_core']:.0f} streams/core", flush=True)
    save()
    if "camera" not in args.skip:
        for label, opts in (("audio_only", None),
                            ("video_and_audio", {"allowed_media_types": "video+audio"})):
            out["camera"][label] = r = bench_rtsp("camera", args.rtsp_streams, args.rtsp_seconds,
                                                  opts)
            print(f"camera ({label}) x{args.rtsp_streams}: {r['cpu_s_per_audio_s'] * 1000:.2f} "
                  f"ms CPU per audio s", flush=True)
    save()
    if "saturate" not in args.skip:
        for codec in ("g711", "aac"):
            out["saturate"][codec] = saturate(codec, args.saturate_from, args.saturate_s,
                                              args.saturate_max)
    save()
    if "encoder" not in args.skip:
        out["encoder"] = enc = bench_encoder()
        ratios = {}
        for codec, r in out["rtsp"].items():
            for dt, e in enc.items():
                ratios[f"{codec}/{dt}"] = r["cpu_s_per_audio_s"] / e["cpu_s_per_audio_s"]
        for label, r in out["camera"].items():
            for dt, e in enc.items():
                ratios[f"camera-{label}/{dt}"] = r["cpu_s_per_audio_s"] / e["cpu_s_per_audio_s"]
        out["ingest_over_encoder"] = ratios
        for k, v in ratios.items():
            print(f"ingest / encoder, {k}: {v:.1%}", flush=True)
    save()


if __name__ == "__main__":
    main()
