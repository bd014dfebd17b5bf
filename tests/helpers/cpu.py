"""What this CPU offers the library's instruction-set paths (read from /proc/cpuinfo, as the library
itself decides from cpuid): the kernel tests run every path the machine has and skip the others."""

from __future__ import annotations


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = cpu_flags()
HAS_AVX2 = {"avx2", "fma"} <= FLAGS
HAS_AVX512 = {"avx512f", "avx512vl", "avx512bw", "avx512dq", "fma"} <= FLAGS
BEST_ISA = "avx512" if HAS_AVX512 else "avx2" if HAS_AVX2 else "portable"
ISAS = ["portable"] + (["avx2"] if HAS_AVX2 else []) + (["avx512"] if HAS_AVX512 else [])
