#!/usr/bin/env python3
"""Reader database: cold first lookup in a fresh process, warm lookups in process.

    python benchmarks/bench_database.py [--runs 21]

Targets (issue 6): cold first lookup < 30 ms on top of ``import ccid``; warm < 2 us.
Subprocesses use a private bytecode cache (PYTHONPYCACHEPREFIX) so that they measure an
installed package (.pyc present), not the compiler, whatever PYTHONDONTWRITEBYTECODE says.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLD = """
import time
t0, c0 = time.perf_counter(), time.process_time()
import ccid
t1, c1 = time.perf_counter(), time.process_time()
entry = ccid.lookup(0x08E6, 0x3478)
t2, c2 = time.perf_counter(), time.process_time()
assert entry is not None
print(t1 - t0, t2 - t1, c2 - c1)
"""

IMPORTS = """
import sys
import ccid
before = set(sys.modules)
ccid.lookup(0x08E6, 0x3478)
print(" ".join(sorted(set(sys.modules) - before)))
"""

YAML_ONLY = """
import time
import ccid.database as d
t0 = time.perf_counter()
d.load_database(use_cache=False)
print(time.perf_counter() - t0)
"""


def _env(prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = prefix
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cold(runs: int) -> tuple[list[float], list[float], list[float]]:
    imports: list[float] = []
    lookups: list[float] = []
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as prefix:
        env = _env(prefix)
        for i in range(runs + 1):
            out = subprocess.run(
                [sys.executable, "-c", COLD], env=env, cwd=ROOT, capture_output=True,
                text=True, check=True,
            ).stdout.split()
            if i == 0:
                continue  # the first run writes the bytecode cache
            imports.append(float(out[0]))
            lookups.append(float(out[1]))
            cpu.append(float(out[2]))
    return imports, lookups, cpu


def lookup_imports() -> str:
    """The modules the first lookup imports on top of ``import ccid``."""
    with tempfile.TemporaryDirectory() as prefix:
        return subprocess.run(
            [sys.executable, "-c", IMPORTS], env=_env(prefix), cwd=ROOT, capture_output=True,
            text=True, check=True,
        ).stdout.strip()


def yaml_only() -> float:
    with tempfile.TemporaryDirectory() as prefix:
        env = _env(prefix)
        out = subprocess.run(
            [sys.executable, "-c", YAML_ONLY], env=env, cwd=ROOT, capture_output=True,
            text=True, check=True,
        ).stdout
    return float(out)


def warm() -> dict[str, float]:
    import ccid
    from ccid import database

    ccid.lookup(0x08E6, 0x3478)
    database.quirks_for(0x08E6, 0x3478, bcd_device=0x0100, interface=0)
    database.lookup(0x1234, 0x5678)
    cases = {
        "ccid.lookup(08E6:3478)": lambda: ccid.lookup(0x08E6, 0x3478),
        "database.lookup(08E6:3478, bcd, interface)": lambda: database.lookup(
            0x08E6, 0x3478, 0x0100, 0
        ),
        "database.lookup(unlisted)": lambda: database.lookup(0x1234, 0x5678),
        "ccid.is_supported(08E6:3478)": lambda: ccid.is_supported(0x08E6, 0x3478),
        "database.quirks_for(08E6:3478, bcd, interface)": lambda: database.quirks_for(
            0x08E6, 0x3478, bcd_device=0x0100, interface=0
        ),
    }
    results: dict[str, float] = {}
    for name, fn in cases.items():
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()
        best = min(timer.repeat(repeat=5, number=number)) / number
        results[name] = best * 1e6
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()

    imports, lookups, cpu = cold(args.runs)
    print(f"machine: {platform.machine()} {platform.processor() or ''} "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"cold, {args.runs} fresh processes (median / min):")
    print(f"  import ccid                 {statistics.median(imports) * 1e3:7.2f} ms"
          f" / {min(imports) * 1e3:.2f} ms")
    print(f"  first lookup on top of it   {statistics.median(lookups) * 1e3:7.2f} ms"
          f" / {min(lookups) * 1e3:.2f} ms   (target < 30 ms)")
    print(f"  ... its CPU time            {statistics.median(cpu) * 1e3:7.2f} ms"
          f" / {min(cpu) * 1e3:.2f} ms")
    print(f"  modules it imports: {lookup_imports()}")
    print(f"  YAML without cache (C safe loader + schema): {yaml_only() * 1e3:.0f} ms")
    print("warm (best of 5 repeats):")
    for name, us in warm().items():
        print(f"  {name:48s} {us:6.3f} us   (target < 2 us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
