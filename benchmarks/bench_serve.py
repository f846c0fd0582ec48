"""``ccid serve`` against pcscd, side by side in one run (pyscard on Debian's libpcsclite).

(a) Per-APDU cost of the server: pyscard -> ccid serve -> virtual reader, minus the same
    APDU sent in-process with ``card.transmit`` on the same virtual reader; against pcscd's,
    measured the same way: pyscard -> a private Debian pcscd -> vsmartcard's vpcd driver ->
    a card stub here answering over vpcd's TCP socket, minus the stub's own CPU time.
(b) 32 clients x 1,000 ECHO APDUs (each its own payload, checked) over 4 virtual readers:
    throughput, latency percentiles, mismatches.
(c) GetStatusChange wake-up latency after a removal / an insertion.
(d) Server CPU with 10 clients waiting in GetStatusChange (over 5 s, from /proc).

    PYTHONPATH=. python benchmarks/bench_serve.py [--n 2000] [--clients 32] [--apdus 1000]

Needs pyscard, and for pcscd's side (skipped if missing; root, for a private mount
namespace so that the private pcscd's /run/pcscd hides no system one): Debian's ``pcscd``
and ``vsmartcard-vpcd``, ``unshare`` (util-linux).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

ROOT = Path(__file__).resolve().parent.parent
APDU = bytes.fromhex("0084000008")  # GET CHALLENGE, 8 bytes + 90 00 back
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
STUB_ATR = bytes.fromhex("3B8080010101")  # T=1

CLIENT = """
import sys, time
from smartcard.scard import *
n = int(sys.argv[1])
hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
hr, readers = SCardListReaders(ctx, [])
hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
assert hr == 0, hr
apdu = [0x00, 0x84, 0x00, 0x00, 0x08]
for _ in range(200):
    SCardTransmit(card, proto, apdu)
best = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(n):
        hr, resp = SCardTransmit(card, proto, apdu)
        assert hr == 0 and len(resp) == 10, (hr, resp)
    best.append((time.perf_counter() - t) / n)
print(min(best) * 1e6)
"""

LOAD_CLIENT = """
import json, sys, time
from smartcard.scard import *
me, n, index = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
hr, readers = SCardListReaders(ctx, [])
hr, card, proto = SCardConnect(ctx, readers[index % 4], SCARD_SHARE_SHARED, 3)
assert hr == 0, hr
print("ready", flush=True)
sys.stdin.readline()
lat, bad = [], 0
start = time.monotonic()
for i in range(n):
    payload = [me, i >> 8 & 0xFF, i & 0xFF] + [(me + i) & 0xFF] * 13
    t = time.perf_counter()
    hr, resp = SCardTransmit(card, proto, [0x80, 0x10, 0, 0, len(payload)] + payload + [0])
    lat.append(time.perf_counter() - t)
    if hr != 0 or resp != payload + [0x90, 0x00]:
        bad += 1
end = time.monotonic()
print(json.dumps({"lat": lat, "bad": bad, "start": start, "end": end}), flush=True)
"""

WAKE_CLIENT = """
import sys, time
from smartcard.scard import *
hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
hr, readers = SCardListReaders(ctx, [])
while True:
    hr, st = SCardGetStatusChange(ctx, 0, [(readers[0], SCARD_STATE_UNAWARE)])
    print("ready", st[0][1] & SCARD_STATE_PRESENT != 0, flush=True)
    if sys.stdin.readline().strip() != "wait":
        break
    hr, new = SCardGetStatusChange(ctx, INFINITE, [(readers[0], st[0][1])])
    print("woke", time.monotonic(), new[0][1] & SCARD_STATE_PRESENT != 0, flush=True)
"""

IDLE_CLIENT = """
from smartcard.scard import *
hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
hr, readers = SCardListReaders(ctx, [])
hr, st = SCardGetStatusChange(ctx, 0, [(r, SCARD_STATE_UNAWARE) for r in readers])
print("waiting", flush=True)
SCardGetStatusChange(ctx, INFINITE, [(r, s) for r, s, _ in st])
"""


def _python(code: str, *args: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True, **kw)


# --- the servers ---------------------------------------------------------------------------


@contextmanager
def ccid_serve(virtual: list[str]) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pcscd.comm")
        code = "import sys; from ccid.cli import main; sys.exit(main())"
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--socket", path,
                                 "--virtual", *virtual], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "listening on" in line:
                    break
            yield proc, {**os.environ, "PCSCLITE_CSOCK_NAME": path}
        finally:
            proc.terminate()
            proc.wait(10)


def control(proc: subprocess.Popen[str], line: str) -> None:
    """A control line to ``ccid serve --virtual`` (remove / insert), and its ``ok``."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    for answer in proc.stdout:
        if answer.startswith(("ok ", "error ")):
            return


class CardStub(threading.Thread):
    """A card behind vpcd (2-byte big-endian length + payload; 1-byte payloads are control:
    0 off, 1 on, 2 reset, 4 ATR request) answering GET CHALLENGE at once. Counts its own
    CPU time (``thread_time``) per APDU: subtracted from pcscd's figure."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.apdus = 0
        self.cpu = 0.0
        self.sock: socket.socket | None = None

    def run(self) -> None:
        sock = None
        for _ in range(200):  # vpcd listens once pcscd has loaded it
            try:
                sock = socket.create_connection(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)
        if sock is None:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        answer = bytes(range(8)) + b"\x90\x00"
        recv, send = sock.recv, sock.sendall
        # vpcd writes the length and the payload separately: without quick ACKs, Nagle
        # on its side and delayed ACKs on ours add 40 ms per APDU
        quick = getattr(socket, "TCP_QUICKACK", None)
        while True:
            t = time.thread_time()
            if quick is not None:
                sock.setsockopt(socket.IPPROTO_TCP, quick, 1)
            head = recv(2)
            if len(head) < 2:
                return
            size = int.from_bytes(head, "big")
            if quick is not None:
                sock.setsockopt(socket.IPPROTO_TCP, quick, 1)
            msg = recv(size)
            while len(msg) < size:
                msg += recv(size - len(msg))
            if size == 1:
                if msg[0] == 4:
                    send(len(STUB_ATR).to_bytes(2, "big") + STUB_ATR)
                continue
            send(len(answer).to_bytes(2, "big") + answer)
            self.apdus += 1
            self.cpu += time.thread_time() - t


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@contextmanager
def private_pcscd() -> Iterator[tuple[CardStub, dict[str, str], int]]:
    """Debian's pcscd in a mount namespace of its own (a tmpfs on /run), serving vpcd only;
    clients reach its socket through /proc/PID/root."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as conf:
        Path(conf, "vpcd").write_text(
            f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x{port:X}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:X}\n")
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs tmpfs /run && exec pcscd -f -c {conf}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stub = CardStub(port)
        try:
            stub.start()
            path = f"/proc/{proc.pid}/root/run/pcscd/pcscd.comm"
            deadline = time.monotonic() + 10
            while not (os.path.exists(path) and stub.sock is not None):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the private pcscd did not start")
                time.sleep(0.05)
            time.sleep(0.5)  # pcscd powers the card and reads its ATR
            # (unshare and sh exec: the pid is pcscd's)
            yield stub, {**os.environ, "PCSCLITE_CSOCK_NAME": path}, proc.pid
        finally:
            proc.terminate()
            proc.wait(10)


def pcscd_available() -> str | None:
    """Why pcscd's side cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (a private pcscd needs its own mount namespace)"
    for tool in ("pcscd", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists(VPCD_DRIVER):
        return "vsmartcard-vpcd is not installed"
    return None


# --- (a) per-APDU cost ----------------------------------------------------------------------


def in_process(preset: str, n: int) -> tuple[float, float]:
    """(best wall time, CPU time) per card.transmit, in microseconds."""
    import ccid
    from ccid.testing import VirtualCard
    from ccid.testing import preset as make

    backend = make(preset, VirtualCard(protocols=(1,)))
    with ccid.open_reader(backend=backend) as reader, reader.connect() as card:
        for _ in range(200):
            card.transmit(APDU)
        best = []
        cpu = time.process_time()
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                card.transmit(APDU)
            best.append((time.perf_counter() - t) / n)
        cpu = (time.process_time() - cpu) / (5 * n)
    return min(best) * 1e6, cpu * 1e6


def client_cost(env: dict[str, str], n: int, server_pid: int) -> tuple[float, float]:
    """(best wall time per APDU, server process CPU per APDU), in microseconds."""
    cpu = _cpu_seconds(server_pid)
    out = subprocess.run([sys.executable, "-c", CLIENT, str(n)], check=True,
                         capture_output=True, text=True, env=env)
    cpu = _cpu_seconds(server_pid) - cpu
    return float(out.stdout.strip()), cpu / (200 + 5 * n) * 1e6


def per_apdu(n: int, preset: str) -> None:
    local, local_cpu = in_process(preset, n)
    with ccid_serve([f"{preset}=t1"]) as (proc, env):
        remote, remote_cpu = client_cost(env, n, proc.pid)
    print(f"(a) per short APDU ({APDU.hex()}), best of 5 x {n}; CPU: of the server process,"
          " over the whole client run")
    print("                                                   wall      CPU")
    print(f"    in-process card.transmit ({preset}, T=1)  {local:8.1f} {local_cpu:8.1f} us")
    print(f"    pyscard -> ccid serve -> same reader        {remote:8.1f} {remote_cpu:8.1f} us")
    print(f"    ccid serve's added cost                     {remote - local:8.1f} "
          f"{remote_cpu - local_cpu:8.1f} us")
    why = pcscd_available()
    if why is not None:
        print(f"    pcscd: not measured ({why})")
        return
    with private_pcscd() as (stub, env, pid):
        before_apdus, before_cpu = stub.apdus, stub.cpu
        theirs, theirs_cpu = client_cost(env, n, pid)
        stub_cost = (stub.cpu - before_cpu) / max(1, stub.apdus - before_apdus) * 1e6
    print(f"    pyscard -> pcscd -> vpcd -> card stub       {theirs:8.1f} {theirs_cpu:8.1f} us")
    print(f"    card stub's own CPU                         {stub_cost:8.1f}")
    print(f"    pcscd's (+ vpcd's TCP hop) added cost       {theirs - stub_cost:8.1f} "
          f"{theirs_cpu:8.1f} us")


# --- (b) many clients -----------------------------------------------------------------------


READERS4 = ["extended-apdu=t1", "gemalto-pc-twin=t1", "short-apdu=t1",
            "two-slot-concurrent=t1"]


def load(clients: int, apdus: int) -> None:
    with ccid_serve(READERS4) as (_proc, env):
        procs = [_python(LOAD_CLIENT, str(i), str(apdus), str(i), env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in range(clients)]
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            results.append(json.loads(p.stdout.readline()))
            p.wait(60)
    lat = sorted(x for r in results for x in r["lat"])
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    bad = sum(r["bad"] for r in results)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3

    print(f"(b) {clients} clients x {apdus} ECHO APDUs (16 bytes each way) over 4 readers")
    print(f"    throughput {len(lat) / wall:8.0f} APDU/s ({len(lat)} in {wall:.2f} s)")
    print(f"    latency median {pct(0.5):.2f} ms, p90 {pct(0.9):.2f} ms, "
          f"p99 {pct(0.99):.2f} ms, max {lat[-1] * 1e3:.2f} ms")
    print(f"    mismatched or failed responses: {bad}")


# --- (c) wake-up, (d) idle CPU -------------------------------------------------------------


def wakeup(rounds: int) -> None:
    with ccid_serve(READERS4) as (proc, env):
        c = _python(WAKE_CLIENT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert c.stdin is not None and c.stdout is not None
        took: dict[str, list[float]] = {"removal": [], "insertion": []}
        for i in range(2 * rounds):
            ready = c.stdout.readline().split()
            present = ready[1] == "True"
            c.stdin.write("wait\n")
            c.stdin.flush()
            time.sleep(0.05)  # the client is inside GetStatusChange
            t = time.monotonic()
            control(proc, "remove 0" if present else "insert 0")
            woke = c.stdout.readline().split()
            took["removal" if present else "insertion"].append(float(woke[1]) - t)
            del i
        c.stdin.write("stop\n")
        c.stdin.flush()
        c.wait(10)
    print(f"(c) GetStatusChange wake-up ({rounds} each; from the control line written to "
          "ccid serve's stdin to the client's return)")
    for what, values in took.items():
        values.sort()
        print(f"    {what:9s} median {statistics.median(values) * 1e3:.2f} ms, "
              f"max {values[-1] * 1e3:.2f} ms")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(clients: int, seconds: float) -> None:
    with ccid_serve(READERS4) as (proc, env):
        waiting = [_python(IDLE_CLIENT, env=env, stdout=subprocess.PIPE)
                   for _ in range(clients)]
        for w in waiting:
            assert w.stdout is not None
            assert w.stdout.readline().strip() == "waiting"
        time.sleep(0.5)
        cpu, t = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu, t = _cpu_seconds(proc.pid) - cpu, time.monotonic() - t
        for w in waiting:
            w.kill()
            w.wait(10)
    print(f"(d) server CPU with {clients} clients in GetStatusChange: "
          f"{100 * cpu / t:.2f} % of a core ({cpu:.2f} s CPU over {t:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="APDUs per batch in (a)")
    parser.add_argument("--preset", default="extended-apdu")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--apdus", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", choices="abcd", default=None)
    args = parser.parse_args()
    print(machine())
    if args.only in (None, "a"):
        per_apdu(args.n, args.preset)
    if args.only in (None, "b"):
        load(args.clients, args.apdus)
    if args.only in (None, "c"):
        wakeup(args.rounds)
    if args.only in (None, "d"):
        idle_cpu(10, 5.0)


if __name__ == "__main__":
    main()
