"""The machine a figure was measured on: the CPU's model name and the units that decide which precision is fast.

Every speed figure the project writes (``dcfg bench ...``, ``dcfg evaluate``'s ``metrics.json``) records
:func:`cpu_facts` beside it, because the same command runs at very different speeds on a CPU with AMX /
AVX512-BF16 units (where bf16 autocast is fast) and on an AVX2-only one (where fp32 is the fast path).
"""
from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["cpu_facts"]


def cpu_facts() -> dict[str, Any]:
    """The CPU's model name (``lscpu``'s) and whether it has the AMX / AVX512-BF16 units that make bf16 fast."""
    name = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags, "cores": os.cpu_count()}
