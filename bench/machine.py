"""The machine line every bench prints: CPU model, core count, bf16-relevant CPU flags, versions.

Imported by the bench scripts (``from machine import machine``: they run as ``python bench/X.py``,
which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import os
import platform


def machine(threads: int | None = None) -> str:
    """CPU model (``/proc/cpuinfo``), logical CPUs, AVX-512 / AVX512-BF16 / AMX-BF16 support,
    the torch thread count when given, torch version and, when installed, TRL's."""
    import torch

    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}"
                     for f in ("avx512f", "avx512_bf16", "amx_bf16"))
    line = f"{model}; {os.cpu_count()} logical CPUs; {have}"
    if threads is not None:
        line += f"; {threads} torch thread{'s' if threads != 1 else ''}"
    line += f"; torch {torch.__version__}"
    if importlib.util.find_spec("trl") is not None:
        import trl

        line += f"; TRL {trl.__version__}"
    return line
