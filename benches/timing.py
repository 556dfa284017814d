"""What the benchmark scripts share: timing, the machine's copy bandwidth (the memory floor),
peak-memory readings and table formatting, so every script measures and prints the same way."""

from __future__ import annotations

import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np


def bench(fn: Callable[[], object], repeats: int, warmup: int = 2) -> Tuple[float, float]:
    """(median, best) seconds of ``fn()`` over ``repeats`` timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def copy_bandwidth(nbytes: int, repeats: int, threads: int) -> Tuple[float, float, float]:
    """Copy bandwidth in bytes/s counting read + write (2 x nbytes, the STREAM "copy"
    convention): best ``np.copyto`` between two ``nbytes`` arrays on one thread, and split over
    ``threads`` threads (numpy releases the GIL for large copies). Third: the extra seconds per
    byte of a copy into a freshly allocated array (page faults and zeroing of new pages), which
    every kernel pays that returns a new output array."""
    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src)
    warm = bench(lambda: np.copyto(dst, src), repeats, warmup=1)[1]
    fresh = bench(lambda: np.array(src, copy=True), repeats, warmup=1)[1]
    chunks = np.array_split(np.arange(src.size), threads)
    bounds = [(int(c[0]), int(c[-1]) + 1) for c in chunks if c.size]
    with ThreadPoolExecutor(threads) as pool:

        def parallel() -> None:
            list(pool.map(lambda b: np.copyto(dst[b[0] : b[1]], src[b[0] : b[1]]), bounds))

        multi = 2 * nbytes / bench(parallel, repeats, warmup=1)[1]
    return 2 * nbytes / warm, multi, max(fresh - warm, 0.0) / nbytes


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def reset_peak() -> bool:
    """Resets this process's peak resident set (VmHWM) to its current one; False where the
    kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_kb(key: str) -> int:
    """A ``/proc/self/status`` value in kB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(num: Optional[float], den: Optional[float]) -> str:
    if num is None or den is None or den <= 0:
        return "-"
    return f"{num / den:.2f}x"


def table(headers: Sequence[str], rows: List[Sequence[str]], left: int = 1) -> None:
    """A plain-text table: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[object]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    header = line(headers)
    print(header)
    print("-" * len(header))
    for r in rows:
        print(line(r))
    print()
