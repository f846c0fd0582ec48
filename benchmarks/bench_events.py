#!/usr/bin/env python3
"""Cost of waiting for card events, and of the wire trace per APDU.

    python benchmarks/bench_events.py [--wait 5] [--batches 30] [--batch 200]

1. CPU time (all threads of the process, ``time.process_time``) used while a program waits
   ``--wait`` seconds for a card event that never comes: on a reader with an interrupt
   endpoint (the monitor thread blocks in the USB read), on a polled reader (GetSlotStatus
   every ``poll_interval``, default 0.5 s), and in ``ccid.watch()`` (enumeration every
   0.5 s plus the reader's monitor). Target: well under 1% of a core.
2. Per-APDU CPU time of ``card.transmit`` (3-byte ECHO at short APDU level) with tracing
   off, then on (text to /dev/null, and JSON lines), beside the naive bare XfrBlock loop,
   interleaved batch by batch (bench_reader's loops): tracing off must cost nothing, i.e.
   equal the reader benchmark's figure for the same loop. Off, the trace costs one flag
   test per APDU and one per frame.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ccid  # noqa: E402
from ccid import trace  # noqa: E402
from ccid.testing import preset  # noqa: E402

ECHO = bytes.fromhex("8010000003010203")


def idle_cpu(name: str, wait: float, **options: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds) spent in wait_for_event with nothing happening."""
    with ccid.open_reader(backend=preset(name, card=None), quirks=False, **options) as reader:
        while reader.wait_for_event(0.3) is not None:
            pass
        c0, t0 = time.process_time(), time.perf_counter()
        event = reader.wait_for_event(wait)
        c1, t1 = time.process_time(), time.perf_counter()
        assert event is None, event
    return t1 - t0, c1 - c0


def idle_watch(wait: float) -> tuple[float, float]:
    backend = preset("gemalto-pc-twin", card=None)
    gen = ccid.watch(backend=backend, interval=0.5, timeout=wait + 1.0, quirks=False)
    first = next(gen)  # ReaderAdded
    assert type(first).__name__ == "ReaderAdded"
    c0, t0 = time.process_time(), time.perf_counter()
    rest = list(gen)
    c1, t1 = time.process_time(), time.perf_counter()
    assert rest == [], rest
    return t1 - t0, c1 - c0


def per_apdu(batches: int, batch: int) -> dict[str, float]:
    """Best CPU seconds per card.transmit (3-byte ECHO, short-apdu preset, events on as by
    default) with tracing off, text to /dev/null and JSON lines to /dev/null, beside the
    naive bare XfrBlock loop of bench_reader, interleaved batch by batch."""
    from bench_reader import SHORT_ECHO, BareLoop, LibraryLoop

    devnull = open(os.devnull, "w")  # noqa: SIM115
    bare = BareLoop("short-apdu", SHORT_ECHO, tuned=False)
    lib = LibraryLoop("short-apdu", SHORT_ECHO, events=True)
    best = {"bare": float("inf"), "off": float("inf"), "text": float("inf"),
            "jsonl": float("inf")}
    try:
        for _ in range(batches):
            for mode in best:
                if mode in ("text", "jsonl"):
                    trace.enable(devnull, fmt=mode)
                try:
                    c0 = time.process_time()
                    (bare if mode == "bare" else lib).run(batch)
                    best[mode] = min(best[mode], (time.process_time() - c0) / batch)
                finally:
                    trace.disable()
    finally:
        lib.close()
        bare.close()
        devnull.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=5.0)
    parser.add_argument("--batches", type=int, default=30,
                        help="interleaved per-APDU batches (best kept)")
    parser.add_argument("--batch", type=int, default=200, help="APDUs per batch")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}")
    print(f"\nCPU used while waiting {args.wait:.0f} s for a card event (no event comes):")
    for label, (wall, cpu) in (
        ("interrupt endpoint (gemalto-pc-twin)", idle_cpu("gemalto-pc-twin", args.wait)),
        ("polled, 0.5 s (no-interrupt)", idle_cpu("no-interrupt", args.wait)),
        ("polled, 0.1 s (no-interrupt)", idle_cpu("no-interrupt", args.wait,
                                                  poll_interval=0.1)),
        ("ccid.watch(), 0.5 s enumeration", idle_watch(args.wait)),
    ):
        print(f"  {label:38s} {cpu * 1000:8.1f} ms CPU in {wall:5.2f} s = "
              f"{100 * cpu / wall:6.3f}% of a core")
    print(f"\nPer-APDU CPU time of card.transmit (3-byte ECHO, short-apdu preset, event "
          f"monitor on), best batch of {args.batch} out of {args.batches}, interleaved:")
    best = per_apdu(args.batches, args.batch)
    bare = best["bare"]
    for mode, label in (("bare", "bare XfrBlock loop (naive)"), ("off", "tracing off"),
                        ("text", "tracing text -> /dev/null"),
                        ("jsonl", "tracing JSON lines -> /dev/null")):
        print(f"  {label:34s} {best[mode] * 1e6:7.1f} us/APDU CPU"
              f"  ({(best[mode] / bare - 1) * 100:+5.0f}% vs bare)")


if __name__ == "__main__":
    main()
