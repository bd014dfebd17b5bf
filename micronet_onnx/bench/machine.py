"""What a benchmark report says about the machine it ran on: CPU, onnxruntime version, and how busy
the (shared) machine was just before the run, read from /proc where there is one."""

from __future__ import annotations

import os
import platform
import time

# CPUs' worth of other work (measured over a short window before the run) above which a report says
# that the machine was shared. (The load average lags by minutes: it still counts a test run that
# just ended, so it is not used.)
BUSY_CPUS = 0.3


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is no such file."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return fields[3] + fields[4], sum(fields[:8])


def busy_cpus(window: float = 0.25) -> float | None:
    """How many CPUs' worth of work other processes did during ``window`` seconds (we sleep)."""
    a = _cpu_times()
    time.sleep(window)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (1.0 - (b[0] - a[0]) / (b[1] - a[1])) * (os.cpu_count() or 1)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def machine_info() -> dict:
    """CPU model name, logical CPU count, onnxruntime version and how busy the machine was just
    before the run (the machines are shared: other work makes the numbers noisy)."""
    name, ort_version = cpu_name(), onnxruntime_version()  # before the probe: the import is our own work
    busy = busy_cpus()
    return {"cpu": name, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "onnxruntime": ort_version, "busy_cpus_before": None if busy is None else round(busy, 3)}
