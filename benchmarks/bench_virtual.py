#!/usr/bin/env python3
"""The virtual reader's own cost: a bare XfrBlock loop through pyusb, no library code above.

    python benchmarks/bench_virtual.py [--seconds 2] [--preset short-apdu]

The card answers instantly (ECHO of 3 bytes at APDU level, 250 bytes for a bigger frame);
each round trip is one bulk-OUT write of a PC_to_RDR_XfrBlock and one bulk-IN read of the
RDR_to_PC_DataBlock. This is the floor the library's per-APDU cost is measured against.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import usb.util  # noqa: E402
from _common import bulk_endpoints  # noqa: E402

from ccid.framing import build_frame  # noqa: E402
from ccid.testing.presets import preset  # noqa: E402


def run(name: str, payload: bytes, seconds: float) -> tuple[float, float, int]:
    """(round trips per second, best CPU seconds per round trip, reply size).

    Batches of 200 round trips for ``seconds``; the CPU figure is the best batch's (the
    machine may be shared), the rate is over the whole run (wall clock).
    """
    backend = preset(name)
    dev, out, inp = bulk_endpoints(backend)
    # a driver reads with a buffer of dwMaxCCIDMessageLength, whole packets
    bufsize = -(-backend.readers[0].max_message // 64) * 64
    auto_voltage = backend.readers[0].descriptor.dwFeatures & 0x08
    out.write(build_frame(0x62, 0, 0, 0 if auto_voltage else 1))
    assert bytes(inp.read(bufsize, 1000))[7] == 0, "power on failed"
    frames = [build_frame(0x6F, 0, seq, 0, 0, 0, payload) for seq in range(256)]
    reply = b""
    n = 0
    best = float("inf")
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        c0 = time.process_time()
        for frame in frames[:200]:
            out.write(frame)
            reply = inp.read(bufsize, 1000)
        best = min(best, (time.process_time() - c0) / 200)
        n += 200
        if time.perf_counter() >= end:
            break
    rate = n / (time.perf_counter() - t0)
    usb.util.dispose_resources(dev)
    return rate, best, len(reply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--preset", default="short-apdu",
                        help="an APDU-level preset (short-apdu, extended-apdu, no-interrupt…)")
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, preset {args.preset}")
    small = bytes.fromhex("8010000003010203") + b"\x00"
    big = bytes.fromhex("80100000FA") + bytes(250) + b"\x00"
    for label, apdu in (("echo 3 bytes", small), ("echo 250 bytes", big)):
        rate, cpu, size = run(args.preset, apdu, args.seconds)
        print(f"{label:>15}: {rate:9.0f} round trips/s (wall)  {cpu * 1e6:7.1f} us CPU each "
              f"(best batch)  "
              f"(reply {size} bytes)")


if __name__ == "__main__":
    main()
