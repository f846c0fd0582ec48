#!/usr/bin/env python3
"""Per-APDU cost on an ICCD token: the library against a bare control-transfer loop.

    python benchmarks/bench_iccd.py [--seconds 2] [--preset iccd-b]

Both sides drive the same virtual token through pyusb: the bare loop sends each APDU with
one XFR_BLOCK (version B) and reads its answer with one DATA_BLOCK, no library code above;
the library runs ``Card.transmit`` (the session, the CCID frames, the control transport).
The card answers instantly (ECHO of 3 bytes). Version A runs T=0: the bare loop does
header, status, data, status, SW1 SW2 (61 03), then GET RESPONSE the same way, as the
library does.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import usb.core  # noqa: E402
import usb.util  # noqa: E402
from _common import machine  # noqa: E402

import ccid  # noqa: E402
from ccid.testing import VirtualBackend, VirtualCard  # noqa: E402
from ccid.testing.presets import preset_reader  # noqa: E402

ECHO3 = bytes.fromhex("8010000003010203" "00")
ECHO_T0 = bytes.fromhex("8010000003010203")  # T=0 case 3: the data comes back with 61xx


def timed(step: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(round trips per second over the run, best CPU microseconds per round trip)."""
    best = float("inf")
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        cpu = time.process_time()
        for _ in range(200):
            step()
        best = min(best, (time.process_time() - cpu) / 200)
        done += 200
    return done / (time.perf_counter() - start), best * 1e6


def bare(name: str, seconds: float) -> tuple[float, float]:
    vr = preset_reader(name, card=VirtualCard(protocols=(0,) if name == "iccd-a" else (1,)))
    dev = usb.core.find(backend=VirtualBackend(vr))
    dev.set_configuration()
    usb.util.claim_interface(dev, 0)
    ctrl = dev.ctrl_transfer
    if name == "iccd-a":
        ctrl(0x21, 0x63, 0, 0, None, 1000)
        ctrl(0xA1, 0x62, 0, 0, 33, 1000)

        def step() -> object:
            ctrl(0x21, 0x65, 0, 0, ECHO_T0[:5], 1000)
            ctrl(0xA1, 0xA0, 0, 0, 1, 1000)
            ctrl(0x21, 0x65, 0, 0, ECHO_T0[5:], 1000)
            ctrl(0xA1, 0xA0, 0, 0, 1, 1000)
            ctrl(0xA1, 0x6F, 0, 0, 2, 1000)  # 61 03: GET RESPONSE, as the library does
            ctrl(0x21, 0x65, 0, 0, b"\x80\xc0\x00\x00\x03", 1000)
            ctrl(0xA1, 0xA0, 0, 0, 1, 1000)
            ctrl(0xA1, 0x6F, 0, 0, 3, 1000)
            ctrl(0xA1, 0xA0, 0, 0, 1, 1000)
            return ctrl(0xA1, 0x6F, 0, 0, 2, 1000)
    else:
        ctrl(0x21, 0x62, 1, 0, None, 1000)
        ctrl(0xA1, 0x6F, 0, 0, 0x1000, 1000)

        def step() -> object:
            ctrl(0x21, 0x65, 0, 0, ECHO3, 1000)
            return ctrl(0xA1, 0x6F, 0, 0, 0x1000, 1000)
    return timed(step, seconds)


def library(name: str, seconds: float) -> tuple[float, float]:
    vr = preset_reader(name, card=VirtualCard(protocols=(0,) if name == "iccd-a" else (1,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = ccid.open_reader(backend=VirtualBackend(vr), events=False,
                                  allow_bad_firmware=True)
    apdu = ECHO_T0 if name == "iccd-a" else ECHO3
    with reader, reader.connect() as card:
        return timed(lambda: card.transmit(apdu), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--preset", default="iccd-b", choices=["iccd-a", "iccd-b"])
    args = parser.parse_args()
    print(machine())
    rate_b, cpu_b = bare(args.preset, args.seconds)
    rate_l, cpu_l = library(args.preset, args.seconds)
    print(f"{args.preset}: bare control loop {rate_b:8.0f} APDU/s, best {cpu_b:6.1f} us CPU")
    print(f"{args.preset}: ccid transmit     {rate_l:8.0f} APDU/s, best {cpu_l:6.1f} us CPU")
    print(f"{args.preset}: library overhead  {100 * (cpu_l / cpu_b - 1):+.0f} % CPU per APDU")


if __name__ == "__main__":
    main()
