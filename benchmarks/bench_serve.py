"""Per-APDU cost of ``ccid serve``: pyscard -> server -> virtual reader, minus the same
APDU sent in-process with ``card.transmit`` on the same kind of virtual reader.

    PYTHONPATH=. python benchmarks/bench_serve.py [--n 2000] [--preset extended-apdu]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APDU = bytes.fromhex("0084000008")

CLIENT = """
import sys, time
from smartcard.scard import *
n = int(sys.argv[1])
hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
hr, readers = SCardListReaders(ctx, [])
hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
apdu = [0x00, 0x84, 0x00, 0x00, 0x08]
for _ in range(200):
    SCardTransmit(card, proto, apdu)
best = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(n):
        hr, resp = SCardTransmit(card, proto, apdu)
        assert hr == 0 and len(resp) == 10
    best.append((time.perf_counter() - t) / n)
print(min(best) * 1e6)
"""


def in_process(preset: str, n: int) -> float:
    import ccid
    from ccid.testing import preset as make

    with ccid.open_reader(backend=make(preset)) as reader, reader.connect() as card:
        for _ in range(200):
            card.transmit(APDU)
        best = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                card.transmit(APDU)
            best.append((time.perf_counter() - t) / n)
    return min(best) * 1e6


def served(preset: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pcscd.comm")
        code = "import sys; from ccid.cli import main; sys.exit(main())"
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--socket", path,
                                 "--virtual", preset], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "listening on" in line:
                    break
            out = subprocess.run([sys.executable, "-c", CLIENT, str(n)], check=True,
                                 capture_output=True, text=True,
                                 env={**os.environ, "PCSCLITE_CSOCK_NAME": path})
            return float(out.stdout.strip())
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--preset", default="extended-apdu")
    args = parser.parse_args()
    local = in_process(args.preset, args.n)
    remote = served(args.preset, args.n)
    print(f"preset {args.preset}, short APDU {APDU.hex()}, best of 5 x {args.n}")
    print(f"in-process card.transmit      {local:8.1f} us/APDU")
    print(f"pyscard -> ccid serve         {remote:8.1f} us/APDU")
    print(f"server's added cost           {remote - local:8.1f} us/APDU")


if __name__ == "__main__":
    main()
