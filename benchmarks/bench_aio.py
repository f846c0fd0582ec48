#!/usr/bin/env python3
"""The asyncio front door's cost: ``await card.transmit`` against ``card.transmit``.

    python benchmarks/bench_aio.py [--batch 500] [--rounds 15] [--idle 3] [--card-delay 0.001]

1. Per APDU, side by side in one run on the same virtual reader and the same session
   objects (the blocking handle is the one ``ccid.aio.Card`` drives): a 3-byte ECHO at
   APDU level and on a T=1 TPDU reader, and a 1000-byte ECHO on that T=1 reader (a chain
   of four blocks each way), batches interleaved, best of ``--rounds``. Wall time per
   APDU and CPU time per APDU (``time.process_time``: every thread of the process).
   Target: aio at most 1.3x blocking. Then the first with every exchange taking
   ``--card-delay`` seconds at the card (default 1 ms, about one full-speed USB round trip
   plus a fast card): the reply is then waited for in the handle's worker thread, a
   thread hop per APDU whose share depends on what an APDU costs without it.
2. CPU while an asyncio task waits for a card event that does not come, over ``--idle``
   seconds: the reader's slot monitor (interrupt endpoint) plus ccid.aio's event thread,
   against the same reader open with the monitor alone (no task waiting). Target: < 1 %
   of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402

import ccid  # noqa: E402
import ccid.aio  # noqa: E402
from ccid.testing import VirtualBackend, VirtualCard  # noqa: E402
from ccid.testing.presets import preset_reader  # noqa: E402

SHORT_ECHO = bytes.fromhex("8010000003010203") + b"\x00"
EXPECTED = bytes.fromhex("0102039000")
_LONG = bytes(i & 0xFF for i in range(1000))
LONG_ECHO = bytes.fromhex("80100000") + b"\x00" + len(_LONG).to_bytes(2, "big") + _LONG \
    + b"\x00\x00"
LONG_EXPECTED = _LONG + b"\x90\x00"

#: (title, preset, card protocols, APDU, its response)
CASES = [
    ("3-byte ECHO, APDU level", "extended-apdu", (0, 1), SHORT_ECHO, EXPECTED),
    ("3-byte ECHO, T=1 TPDU", "gemalto-pc-twin", (1,), SHORT_ECHO, EXPECTED),
    ("1000-byte ECHO, T=1 TPDU (IFSC 254: 4 chained blocks each way)", "gemalto-pc-twin", (1,),
     LONG_ECHO, LONG_EXPECTED),
]


async def per_apdu(batch: int, rounds: int, delay: float = 0.0, case: int = 0
                   ) -> dict[str, tuple[float, float]]:
    """Best (wall, cpu) seconds per APDU for each way of sending it."""
    _title, preset, protocols, apdu, expected = CASES[case]
    card_model = VirtualCard(protocols=protocols)
    vr = preset_reader(preset, card=card_model)
    if delay:
        card_model.faults.slow(delay)
    best = {"blocking": (1e9, 1e9), "aio": (1e9, 1e9), "aio gather x4": (1e9, 1e9)}
    async with await ccid.aio.open_reader(backend=VirtualBackend(vr), events=False) as reader, \
            reader.connect() as card:
        blocking = card.blocking
        assert blocking.transmit(apdu) == expected
        assert await card.transmit(apdu) == expected
        others = [await reader.connect() for _ in range(3)]

        def run_blocking() -> None:
            for _ in range(batch):
                blocking.transmit(apdu)

        async def run_aio() -> None:
            for _ in range(batch):
                await card.transmit(apdu)

        async def run_gather() -> None:
            # four handles on one slot, each its own worker: the slot lock orders them
            async def one(c: ccid.aio.Card) -> None:
                for _ in range(batch // 4):
                    await c.transmit(apdu)
            await asyncio.gather(*(one(c) for c in (card, *others)))

        for _ in range(rounds):
            for name in best:
                wall, cpu = time.perf_counter(), time.process_time()
                if name == "blocking":
                    run_blocking()
                elif name == "aio":
                    await run_aio()
                else:
                    await run_gather()
                wall = (time.perf_counter() - wall) / batch
                cpu = (time.process_time() - cpu) / batch
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        for c in others:
            await c.disconnect()
    return best


async def idle_cpu(seconds: float) -> tuple[float, float]:
    """(monitor only, monitor + a task awaiting an event): CPU share of one core."""
    vr = preset_reader("gemalto-pc-twin", card=None)
    async with await ccid.aio.open_reader(backend=VirtualBackend(vr), quirks=False) as reader:
        assert reader.has_interrupt
        await asyncio.sleep(0.5)  # let the open settle
        cpu = time.process_time()
        await asyncio.sleep(seconds)
        alone = (time.process_time() - cpu) / seconds
        assert await reader.wait_for_event(0.01) is None  # the event thread runs from here
        cpu = time.process_time()
        assert await reader.wait_for_event(seconds) is None
        waiting = (time.process_time() - cpu) / seconds
    return alone, waiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--card-delay", type=float, default=0.001)
    args = parser.parse_args()
    print(machine())
    for case, (title, *_rest) in enumerate(CASES):
        batch = args.batch if case < 2 else max(4, args.batch // 10)
        best = asyncio.run(per_apdu(batch, args.rounds, case=case))
        base_wall, base_cpu = best["blocking"]
        print(f"\nper APDU ({title}), best of {args.rounds} x {batch}:")
        print(f"  {'':16} {'wall us':>9} {'x':>6} {'cpu us':>9} {'x':>6}")
        for name, (wall, cpu) in best.items():
            print(f"  {name:16} {wall * 1e6:9.1f} {wall / base_wall:6.2f} "
                  f"{cpu * 1e6:9.1f} {cpu / base_cpu:6.2f}")
        ratio = best["aio"][0] / base_wall
        print(f"  aio / blocking (wall): {ratio:.2f}x  (target <= 1.3x: "
              f"{'met' if ratio <= 1.3 else 'MISSED'})")
    if args.card_delay > 0:
        batch = max(4, min(args.batch, 200))
        rounds = max(1, args.rounds // 3)
        slow = asyncio.run(per_apdu(batch, rounds, args.card_delay))
        print(f"\nthe first with {args.card_delay * 1e3:g} ms per exchange at the card, "
              f"best of {rounds} x {batch}:")
        for name, (wall, _cpu) in slow.items():
            print(f"  {name:16} {wall * 1e6:9.1f} us wall "
                  f"{wall / slow['blocking'][0]:6.2f}x")
    alone, waiting = asyncio.run(idle_cpu(args.idle))
    print(f"\nCPU over {args.idle:g} s with no card event (share of one core):")
    print(f"  slot monitor alone:            {alone * 100:.3f} %")
    print(f"  + asyncio task awaiting event: {waiting * 100:.3f} %  (target < 1 %: "
          f"{'met' if waiting < 0.01 else 'MISSED'})")


if __name__ == "__main__":
    main()
