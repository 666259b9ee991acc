"""Shared helpers of the benchmarks: timing, peak memory of child processes, result files.

Every benchmark is a standalone script (`python bench/bench_x.py`) that writes
`bench/results/<name>.json` with the measurements and the machine they were taken on.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

if str(REPO_ROOT) not in sys.path:  # `python bench/bench_x.py` from anywhere, no install needed
    sys.path.insert(0, str(REPO_ROOT))

# The FLOP count of one 10-s clip through the released HTS-AT encoder (AF2_REFERENCE.md §3,
# measured with the official code). Our own count (FlopCounterMode) is reported beside it.
ENCODER_GFLOP_PER_CLIP = 121.4


# ---- timing ------------------------------------------------------------------------------------

class Clock:
    """Wall time and this process's CPU time (all threads) of a block.

    On a shared machine other processes take the cores away; wall time then grows but the CPU
    time of a single-threaded run (`--threads 1`) barely moves, so both are recorded.
    """

    def __enter__(self) -> Clock:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def timeit(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Run `fn` `warmup` times untimed, then `repeats` times timed. Seconds per call."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        with Clock() as c:
            fn()
        times.append(c.wall)
        cpu.append(c.cpu)
    return summarise(times, cpu)


def summarise(times: list[float], cpu: list[float] | None = None) -> dict[str, Any]:
    out = {
        "times_s": [round(t, 6) for t in times],
        "min_s": min(times),
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
    }
    if cpu:
        out["cpu_times_s"] = [round(t, 6) for t in cpu]
        out["cpu_min_s"] = min(cpu)
    return out


# ---- memory --------------------------------------------------------------------------------------

def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The memory lines of /proc/<pid>/status, in bytes (VmHWM, VmRSS, RssAnon, RssFile, ...)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key.startswith(("Vm", "Rss")):
                    parts = rest.split()
                    if len(parts) == 2 and parts[1] == "kB":
                        out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


class PeakSampler:
    """Samples RssAnon / RssFile of this process every `interval` s in a background thread.

    VmHWM (the kernel's RSS high-water mark) counts file-backed pages mapped into the process
    (memory-mapped checkpoint files) as well as anonymous memory; the sampler tells them apart.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_anon = 0
        self.peak_file = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        s = proc_status()
        self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
        self.peak_file = max(self.peak_file, s.get("RssFile", 0))
        self.peak_rss = max(self.peak_rss, s.get("VmRSS", 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, int]:
        return {"peak_rss_anon_sampled": self.peak_anon, "peak_rss_file_sampled": self.peak_file,
                "peak_rss_sampled": self.peak_rss}


def run_child(args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run `python <args>` in a fresh process; it must print one JSON object as its last line.

    Adds `ru_maxrss_bytes` (the child's peak RSS as the kernel accounts it, from wait4) and the
    child's wall time as seen from here.
    """
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=str(REPO_ROOT))
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"child {args} timed out after {timeout} s:\n{err[-2000:]}") from None
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"child {args} failed with exit code {p.returncode}:\n{err[-4000:]}")
    lines = [line for line in out.strip().splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"child {args} printed nothing:\n{err[-2000:]}")
    res = json.loads(lines[-1])
    res["process_wall_s"] = wall
    return res


def child_maxrss_bytes() -> int:
    """Largest peak RSS of any waited-for child so far (getrusage, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


# ---- machine and results ---------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=5, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def add_model_args(ap) -> None:
    """The options every model benchmark takes: which dtypes, how many torch threads."""
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def apply_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def machine_info() -> dict[str, Any]:
    import torch

    mem = proc_meminfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        affinity = os.cpu_count()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "mem_total_bytes": mem.get("MemTotal"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "loadavg_at_start": _loadavg(),
        "note": "shared machine: other processes may run during the benchmark; see loadavg",
    }


def proc_meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return out


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def result_name(bench: str, threads: int | None) -> str:
    """`bench/results/<bench>.json` at torch's default threads, `<bench>-t<N>.json` at --threads N."""
    return bench if not threads else f"{bench}-t{threads}"


def write_result(name: str, data: dict[str, Any], machine: dict[str, Any] | None = None,
                 out_dir: Path | None = None) -> Path:
    """Write `bench/results/<name>.json`: {"benchmark", "machine", "results"}."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = dict(machine or machine_info())
    machine["loadavg_at_end"] = _loadavg()
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine, "results": data},
                               indent=1, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def gib(n: float) -> float:
    return n / 2**30


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def matmul_peak_gflops(dtype_name: str = "float32", n: int = 4096, repeats: int = 3) -> float:
    """This CPU's achievable dense matmul rate (GFLOP/s) for one big square product."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    r = timeit(lambda: torch.matmul(a, b), warmup=1, repeats=repeats)
    return 2 * n**3 / r["min_s"] / 1e9
