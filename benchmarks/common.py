"""Shared benchmark helpers: thread pinning, machine and version info, timing, RSS, output.

:mod:`harness` holds the shared data (catalogs, typo queries, cached artifacts, recall) and
:mod:`systems` the compared systems.

Import this module before numpy, faiss or the library, and call :func:`pin_threads` first:
the thread-count environment variables only take effect if set before those imports.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / "data"
RESULTS_DIR = BENCH_DIR / "results"
TEST_DATA = REPO_DIR / "tests" / "data"
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def pin_threads(threads: int) -> dict[str, str]:
    """Set every thread-count variable to ``threads`` (call before importing numpy/faiss).

    Returns the settings, for the results file. Tokenizer parallelism is left on (it uses
    ``RAYON_NUM_THREADS`` threads).
    """
    for name in _THREAD_VARS:
        os.environ[name] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    return {name: os.environ[name] for name in (*_THREAD_VARS, "TOKENIZERS_PARALLELISM")}


def faiss_threads(threads: int) -> int:
    """Set FAISS's OpenMP thread count explicitly; returns what FAISS reports back."""
    import faiss

    faiss.omp_set_num_threads(threads)
    return faiss.omp_get_max_threads()


def _read_key_values(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in out:
                    out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores (usable by this process), RAM, OS and Python."""
    cpu = _read_key_values("/proc/cpuinfo")
    mem = _read_key_values("/proc/meminfo")
    ram_kib = int(mem.get("MemTotal", "0 kB").split()[0])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(ram_kib / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _spin(seconds: float) -> int:
    """Count loop iterations for ``seconds`` of wall time (a CPU-bound probe)."""
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(10_000):
            count += 1
    return count


def parallel_speedup(workers: int, seconds: float = 0.5) -> float:
    """How much CPU-bound work ``workers`` processes get done together, relative to one.

    2.0 on an idle two-core machine; about 1.0 where the cores are shared or throttled,
    which is why batch figures barely gain from a second thread there.
    """
    from concurrent.futures import ProcessPoolExecutor

    if workers < 2:
        return 1.0
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_spin, [0.05] * workers))  # start the workers first
        alone = pool.submit(_spin, seconds).result()
        together = sum(pool.map(_spin, [seconds] * workers))
    return round(together / alone, 2)


def library_versions() -> dict[str, str]:
    """Versions of the packages that shape the figures, plus the repo's git commit."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "novelentitymatcher-faiss",
        "numpy",
        "faiss-cpu",
        "model2vec",
        "tokenizers",
        "scikit-learn",
        "faker",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["git_commit"] = git_commit()
    return out


def git_commit() -> str:
    """Short commit hash of the repo, with ``+dirty`` if the work tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_DIR, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_DIR, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def print_environment(info: dict[str, Any]) -> None:
    """Print machine, versions and thread settings as a short block."""
    machine, versions = info["machine"], info["versions"]
    print(
        f"machine: {machine['cpu_model']}, {machine['usable_cores']} usable of "
        f"{machine['logical_cores']} logical cores, {machine['ram_gib']} GiB RAM, {machine['os']}"
    )
    print("versions: python " + machine["python"] + ", " + ", ".join(
        f"{k} {v}" for k, v in versions.items()
    ))  # fmt: skip
    print("threads: " + ", ".join(f"{k}={v}" for k, v in info["threads"].items()))
    if "parallel_speedup" in machine:
        print(f"parallel speedup of {machine['usable_cores']} busy processes: "
              f"{machine['parallel_speedup']}x")  # fmt: skip


def environment(
    threads: dict[str, Any], machine: dict[str, Any] | None = None,
    versions: dict[str, Any] | None = None, **extra: Any,
) -> dict[str, Any]:
    """``{"machine", "versions", "threads", **extra}`` for a results file, printed first;
    ``machine`` and ``versions`` default to :func:`machine_info` and :func:`library_versions`."""
    info = {"machine": machine or machine_info(), "versions": versions or library_versions(),
            "threads": threads, **extra}  # fmt: skip
    print_environment(info)
    return info


def environment_line(info: dict[str, Any], ram: bool = False) -> str:
    """``machine: CPU, N cores[, R GiB]; versions: name version, ...`` of :func:`environment`."""
    machine = info["machine"]
    return (f"machine: {machine['cpu_model']}, {machine['usable_cores']} cores"
            + (f", {machine['ram_gib']} GiB" if ram else "") + "; versions: "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))  # fmt: skip


def utc_stamp() -> str:
    """The current UTC time as ``2024-06-01T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rss_bytes() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process in bytes (from /proc/self/status)."""
    status = _read_key_values("/proc/self/status")
    out = {}
    for key in ("VmRSS", "RssAnon", "RssFile"):
        value = status.get(key, "0 kB").split()
        out[key] = int(value[0]) * 1024
    return out


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``func`` once; return (seconds, result)."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def median_seconds(func: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls of ``func``, and every run's time."""
    runs = [timed(func)[0] for _ in range(repeats)]
    return statistics.median(runs), runs


def latencies_ms(call: Callable[[Any], Any], inputs: Sequence[Any]) -> list[float]:
    """Wall time of ``call(x)`` for each input, in milliseconds."""
    times = []
    for item in inputs:
        start = time.perf_counter_ns()
        call(item)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def batch_qps(call: Callable[[Any], Any], texts: Sequence[Any], runs: int = 3,
              warm: int = 50) -> float:  # fmt: skip
    """Median queries per second of ``call(texts)`` over ``runs`` calls, after one warm-up
    call on ``texts[:warm]``."""
    call(texts[:warm])
    return len(texts) / median_seconds(lambda: call(texts), runs)[0]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def human_bytes(size: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/NAME.json`` and ``results/NAME.md`` atomically, say so on stderr;
    returns both paths."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = (RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md")
    texts = (json.dumps(data, indent=2, sort_keys=False) + "\n", markdown)
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    shown = [p.relative_to(REPO_DIR) if p.is_relative_to(REPO_DIR) else p for p in paths]
    print(f"wrote {shown[0]} and {shown[1]}", file=sys.stderr)
    return paths


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (PNG files, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
