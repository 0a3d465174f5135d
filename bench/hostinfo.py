"""What every benchmark report states about the machine it ran on."""

from __future__ import annotations

import os


def machine() -> str:
    memory = "?"
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return f"{os.cpu_count()} CPUs, {memory} RAM"


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())
