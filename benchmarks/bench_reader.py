#!/usr/bin/env python3
"""The library's cost per APDU and its throughput, on virtual readers.

    python benchmarks/bench_reader.py [--seconds 2] [--repeat 3] [--rounds 10]

1. Per-APDU cost at APDU level: ``card.transmit`` of a short ECHO against a bare XfrBlock
   loop (pyusb write + read, no library code) on the same kind of virtual reader. CPU time
   per APDU is compared (target: the library adds at most 50% over the bare loop).
2. 64 KB ECHO (65,535 data bytes, extended Lc/Le) over T=1 TPDU at IFSD 254 and over the
   extended APDU level. The virtual device's own time (inside the pyusb backend calls) is
   measured and subtracted: what is left is the library's work (target: >= 20 MB/s of
   APDU data, i.e. far beyond what USB full speed carries).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import usb.core  # noqa: E402
import usb.util  # noqa: E402

import ccid  # noqa: E402
from ccid.framing import build_frame  # noqa: E402
from ccid.testing import VirtualBackend, VirtualCard  # noqa: E402
from ccid.testing.presets import preset, preset_reader  # noqa: E402

SHORT_ECHO = bytes.fromhex("8010000003010203") + b"\x00"


def bare_loop(name: str, apdu: bytes, seconds: float) -> float:
    """CPU seconds per XfrBlock round trip with plain pyusb."""
    backend = preset(name)
    dev = usb.core.find(backend=backend)
    dev.set_configuration()
    intf = dev.get_active_configuration()[(0, 0)]
    usb.util.claim_interface(dev, intf.bInterfaceNumber)
    eps = list(intf)
    out = next(e for e in eps if not e.bEndpointAddress & 0x80)
    inp = next(e for e in eps if e.bEndpointAddress & 0x80 and e.bmAttributes == 2)
    bufsize = -(-backend.readers[0].max_message // 64) * 64
    auto_voltage = backend.readers[0].descriptor.dwFeatures & 0x08
    out.write(build_frame(0x62, 0, 0, 0 if auto_voltage else 1))
    assert bytes(inp.read(bufsize, 1000))[7] == 0, "power on failed"
    seq, n = 1, 0
    c0 = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(200):
            out.write(build_frame(0x6F, 0, seq, 0, 0, 0, apdu))
            inp.read(bufsize, 1000)
            seq = (seq + 1) & 0xFF
        n += 200
    cpu = (time.process_time() - c0) / n
    usb.util.dispose_resources(dev)
    return cpu


def library_loop(name: str, apdu: bytes, seconds: float, events: bool) -> float:
    """CPU seconds per card.transmit on a fresh reader of the same kind."""
    backend = preset(name)
    with ccid.open_reader(backend=backend, events=events) as reader, \
            reader.connect() as card:
        assert card.transmit(apdu)[-2:] == b"\x90\x00"
        n = 0
        c0 = time.process_time()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(200):
                card.transmit(apdu)
            n += 200
        return (time.process_time() - c0) / n


class TimedBackend(VirtualBackend):
    """A virtual backend that counts the time spent inside the device model."""

    device_time = 0.0
    pyusb_time = 0.0

    def bulk_write(self, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return super().bulk_write(*args)
        finally:
            TimedBackend.device_time += time.perf_counter() - t

    def bulk_read(self, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return super().bulk_read(*args)
        finally:
            TimedBackend.device_time += time.perf_counter() - t


_orig_read = usb.core.Device.read
_orig_write = usb.core.Device.write


def _timed_read(self: Any, *args: Any) -> Any:
    t = time.perf_counter()
    try:
        return _orig_read(self, *args)
    finally:
        TimedBackend.pyusb_time += time.perf_counter() - t


def _timed_write(self: Any, *args: Any) -> Any:
    t = time.perf_counter()
    try:
        return _orig_write(self, *args)
    finally:
        TimedBackend.pyusb_time += time.perf_counter() - t


def throughput(name: str, rounds: int, **options: Any
               ) -> tuple[float, float, float, float, int]:
    """(library MB/s, ccid-code MB/s, total MB/s, library share, frames) for 64 KB ECHOs.

    library = total - time inside the device model; ccid code = total - time inside
    pyusb's read/write (device included).
    """
    data = bytes(i & 0xFF for i in range(65535))
    apdu = bytes([0x80, 0x10, 0, 0, 0, 0xFF, 0xFF]) + data + b"\x00\x00"
    vr = preset_reader(name, card=VirtualCard(protocols=(1,)))
    backend = TimedBackend(vr)
    with ccid.open_reader(backend=backend, events=False, **options) as reader, \
            reader.connect() as card:
        assert card.transmit(apdu) == data + b"\x90\x00"
        TimedBackend.device_time = TimedBackend.pyusb_time = 0.0
        seen = vr.commands_seen
        usb.core.Device.read, usb.core.Device.write = _timed_read, _timed_write
        try:
            t0 = time.perf_counter()
            for _ in range(rounds):
                card.transmit(apdu)
            total = time.perf_counter() - t0
        finally:
            usb.core.Device.read, usb.core.Device.write = _orig_read, _orig_write
        frames = (vr.commands_seen - seen) // rounds
    library = max(total - TimedBackend.device_time, 1e-9)
    own = max(total - TimedBackend.pyusb_time, 1e-9)
    mb = rounds * len(data) / 1e6
    return mb / library, mb / own, mb / total, library / total, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"framing backend {__import__('ccid.framing').framing.BACKEND}")
    print("\nPer-APDU CPU cost, short ECHO (3 bytes), APDU level:")
    for name in ("short-apdu", "extended-apdu"):
        # Interleaved repeats, best of each: the machine may be shared.
        bare = lib = lib_ev = float("inf")
        for _ in range(args.repeat):
            bare = min(bare, bare_loop(name, SHORT_ECHO, args.seconds))
            lib = min(lib, library_loop(name, SHORT_ECHO, args.seconds, events=False))
            lib_ev = min(lib_ev, library_loop(name, SHORT_ECHO, args.seconds, events=True))
        print(f"  {name:14} bare XfrBlock {bare * 1e6:6.1f} us   card.transmit "
              f"{lib * 1e6:6.1f} us (+{(lib / bare - 1) * 100:4.0f}%)   with event monitor "
              f"{lib_ev * 1e6:6.1f} us (+{(lib_ev / bare - 1) * 100:4.0f}%)")
    print("\n64 KB ECHO throughput (APDU data bytes, one direction):")
    for label, name, options in (
        ("T=1 TPDU, IFSD 254", "gemalto-pc-twin", {"ifsd": 254}),
        ("extended APDU, 64 KB messages", "two-slot-concurrent", {}),
        ("extended APDU, 272-byte messages", "extended-apdu", {}),
    ):
        lib_rate, own_rate, total_rate, share, frames = throughput(name, args.rounds,
                                                                   **options)
        print(f"  {label:34} {frames:4d} XfrBlocks/APDU  library (with pyusb) "
              f"{lib_rate:7.1f} MB/s  ccid code alone {own_rate:7.1f} MB/s  end to end "
              f"{total_rate:6.2f} MB/s (library {share * 100:3.0f}% of the time)")


if __name__ == "__main__":
    main()
