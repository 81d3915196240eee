"""Print two CPU lists that share no physical core (SMT siblings stay together), for
``stepx bench --model-cpus A --sink-cpus B``, and the topology they come from (Linux).

    python bench/cpu_halves.py            # -> "0-3,8-11 4-7,12-15"
"""

from __future__ import annotations

import glob
import os
import sys


def cpulist(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def main() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    cores: dict[str, list[int]] = {}
    for cpu in allowed:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        siblings = open(path).read().strip() if glob.glob(path) else str(cpu)
        cores.setdefault(siblings, []).append(cpu)
    groups = sorted(cores.values())
    half = len(groups) // 2
    a = [c for g in groups[:half] for c in g]
    b = [c for g in groups[half:] for c in g]
    print(f"{len(allowed)} CPUs, {len(groups)} cores: {sorted(cores)}", file=sys.stderr)
    print(cpulist(a), cpulist(b))


if __name__ == "__main__":
    main()
