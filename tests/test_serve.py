"""``ccid serve`` end to end: unmodified pcsc-lite clients (pcsc_scan, opensc-tool, pyscard
through Debian's libpcsclite, protocol 4:4) and a client written here for 4:5 and 4:6,
against the server in a subprocess on virtual readers."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccid.serve import wire

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0  # a hang guard, not a timing assertion


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed (CI must install it)")
        pytest.skip(f"{binary} is not installed")
    return path


def need_pyscard() -> None:
    try:
        import smartcard  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pyscard is not installed (CI must install it)")
        pytest.skip("pyscard is not installed")


class Lines:
    """A subprocess's stdout lines, read by a thread (so reads can have a hang guard)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def until(self, text: str) -> str:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {self.seen[-30:]}") from None
            if line is None:
                raise AssertionError(f"ended without {text!r}: {self.seen[-30:]}")
            self.seen.append(line)
            if text in line:
                return line


class Served:
    def __init__(self, proc: subprocess.Popen[str], path: str) -> None:
        self.proc = proc
        self.path = path
        self.out = Lines(proc)
        self.out.until("listening on")

    def control(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self.out.until(f"ok {line}")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PCSCLITE_CSOCK_NAME": self.path}


def serve(tmp_path: Path, *args: str) -> Served:
    path = str(tmp_path / "sock" / "pcscd.comm")
    code = "import sys; from ccid.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--socket", path, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))
    return Served(proc, path)


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    args = getattr(request, "param", ("gemalto-pc-twin", "extended-apdu=t1"))
    s = serve(tmp_path, "--virtual", *args)
    try:
        yield s
    finally:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(WAIT)
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
        assert s.proc.returncode == 0, s.out.seen[-20:]
        assert not os.path.exists(s.path)  # clean shutdown removes the socket


def run_client(server: Served, args: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(args, env=server.env, capture_output=True, text=True, timeout=WAIT,
                          input=stdin)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


#: pyscard gives some codes as negative, the server as unsigned 32-bit: compare with U()
_PRELUDE = """from smartcard.scard import *
import sys
def U(code):
    return code & 0xFFFFFFFF
"""


def pyscard(server: Served, body: str) -> str:
    need_pyscard()
    script = _PRELUDE + textwrap.dedent(body)
    return run_client(server, [sys.executable, "-c", script])


# --- Debian's clients ------------------------------------------------------------------------


def test_opensc_tool_lists_reads_atrs_and_sends_apdus(server: Served) -> None:
    tool = need("opensc-tool")
    listing = run_client(server, [tool, "-l"])
    assert "Gemplus USB SmartCard Reader 00 00" in listing
    assert "Circle CCR7115 ICC 01 00" in listing
    for index, atr in ((0, "3b:89:80"), (1, "3b:89:81")):  # T=0 and T=1 default protocols
        assert atr in run_client(server, [tool, "-r", str(index), "-a"]).lower()
        out = run_client(server, [tool, "-r", str(index), "-s", "00A4040000"])
        assert "SW1=0x" in out
    # two APDUs in one session, answered with data
    out = run_client(server, [tool, "-r", "1", "-s", "00A4040000", "-s", "0084000008"])
    assert out.count("SW1=0x") == 2 and "SW1=0x90, SW2=0x00" in out


def test_pcsc_scan_sees_readers_insertion_and_removal(server: Served) -> None:
    tool = need("pcsc_scan")
    proc = subprocess.Popen(["stdbuf", "-oL", tool, "-n"], env=server.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = Lines(proc)
        out.until("Gemplus USB SmartCard Reader 00 00")
        out.until("3B 89 80 31")  # the ATR read at insertion, as pcscd publishes it
        server.control("remove 0")
        out.until("Card removed")
        server.control("insert 0")
        out.until("Card inserted")
    finally:
        proc.terminate()
        proc.wait(WAIT)


# --- pyscard on Debian's libpcsclite (protocol 4:4) ------------------------------------------


def test_pyscard_every_call(server: Served) -> None:
    out = pyscard(server, """
        hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
        assert hr == 0, hr
        hr, readers = SCardListReaders(ctx, [])
        assert hr == 0 and len(readers) == 2, (hr, readers)
        hr, states = SCardGetStatusChange(ctx, 0, [(r, SCARD_STATE_UNAWARE) for r in readers])
        assert hr == 0 and all(s[1] & SCARD_STATE_PRESENT for s in states), states
        hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED,
                                       SCARD_PROTOCOL_T0 | SCARD_PROTOCOL_T1)
        assert hr == 0 and proto == SCARD_PROTOCOL_T0, (hr, proto)
        hr, name, state, sproto, atr = SCardStatus(card)
        assert hr == 0 and name == readers[0] and atr[:2] == [0x3B, 0x89], (hr, name, atr)
        hr, resp = SCardTransmit(card, proto, [0x00, 0x84, 0x00, 0x00, 0x08])
        assert hr == 0 and resp[-2:] == [0x90, 0x00] and len(resp) == 10, (hr, resp)
        assert SCardBeginTransaction(card) == 0
        hr, resp = SCardTransmit(card, proto, [0x00, 0xA4, 0x04, 0x00, 0x00])
        assert hr == 0
        assert SCardEndTransaction(card, SCARD_LEAVE_CARD) == 0
        hr, attr = SCardGetAttrib(card, SCARD_ATTR_ATR_STRING)
        assert hr == 0 and attr == atr, (hr, attr)
        hr, attr = SCardGetAttrib(card, SCARD_ATTR_DEVICE_FRIENDLY_NAME)
        assert hr == 0 and bytes(attr).rstrip(b"\\0").decode() == readers[0], attr
        hr, attr = SCardGetAttrib(card, SCARD_ATTR_VENDOR_IFD_VERSION)
        assert hr == 0 and len(attr) == 4
        hr, attr = SCardGetAttrib(card, 0x12345678)
        assert U(hr) == U(SCARD_E_UNSUPPORTED_FEATURE), hr
        hr, feats = SCardControl(card, SCARD_CTL_CODE(3400), [])
        assert hr == 0 and feats[0] == 0x12 and len(feats) == 6, (hr, feats)
        hr, tlv = SCardControl(card, int.from_bytes(bytes(feats[2:6]), "big"), [])
        assert hr == 0 and [0x0B, 2, 0xE6, 0x08] == tlv[-14:-10], tlv
        hr, proto = SCardReconnect(card, SCARD_SHARE_SHARED, SCARD_PROTOCOL_T1,
                                   SCARD_RESET_CARD)
        assert hr == 0 and proto == SCARD_PROTOCOL_T1, (hr, proto)
        assert SCardDisconnect(card, SCARD_UNPOWER_CARD) == 0
        hr, card, proto = SCardConnect(ctx, readers[1], SCARD_SHARE_EXCLUSIVE, SCARD_PROTOCOL_T1)
        assert hr == 0 and proto == SCARD_PROTOCOL_T1
        hr, states = SCardGetStatusChange(ctx, 0, [(readers[1], SCARD_STATE_UNAWARE)])
        assert states[0][1] & SCARD_STATE_EXCLUSIVE, states
        hr, other = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, c2, _ = SCardConnect(other, readers[1], SCARD_SHARE_SHARED, SCARD_PROTOCOL_T1)
        assert U(hr) == U(SCARD_E_SHARING_VIOLATION), hr
        hr, c2, p2 = SCardConnect(other, readers[0], SCARD_SHARE_DIRECT, 0)
        assert hr == 0 and p2 == 0, (hr, p2)
        assert SCardDisconnect(c2, SCARD_LEAVE_CARD) == 0
        # extended APDU: 300 bytes in, 256 + SW out (GET CHALLENGE Le=256 extended)
        hr, resp = SCardTransmit(card, proto, [0, 0x84, 0, 0, 0, 0x01, 0x00])
        assert hr == 0 and len(resp) == 258, (hr, len(resp))
        assert SCardDisconnect(card, SCARD_LEAVE_CARD) == 0
        hr, c3, _ = SCardConnect(ctx, "no such reader", SCARD_SHARE_SHARED, 3)
        assert U(hr) == U(SCARD_E_UNKNOWN_READER), hr
        assert SCardReleaseContext(other) == 0
        assert SCardReleaseContext(ctx) == 0
        print("all good")
    """)
    assert "all good" in out


def test_pyscard_reset_and_removal_warnings(server: Served) -> None:
    need_pyscard()
    script = _PRELUDE + textwrap.dedent("""
        hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, readers = SCardListReaders(ctx, [])
        hr, a, pa = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
        hr, ctx2 = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, b, pb = SCardConnect(ctx2, readers[0], SCARD_SHARE_SHARED, 3)
        assert SCardReconnect(a, SCARD_SHARE_SHARED, 3, SCARD_RESET_CARD)[0] == 0
        hr, resp = SCardTransmit(b, pb, [0, 0x84, 0, 0, 8])
        assert U(hr) == U(SCARD_W_RESET_CARD), hex(hr & 0xFFFFFFFF)
        assert SCardReconnect(b, SCARD_SHARE_SHARED, 3, SCARD_LEAVE_CARD)[0] == 0
        assert SCardTransmit(b, pb, [0, 0x84, 0, 0, 8])[0] == 0
        assert SCardTransmit(a, pa, [0, 0x84, 0, 0, 8])[0] == 0
        print("remove now", flush=True)
        sys.stdin.readline()
        hr, resp = SCardTransmit(b, pb, [0, 0x84, 0, 0, 8])
        assert U(hr) == U(SCARD_W_REMOVED_CARD), hex(hr & 0xFFFFFFFF)
        hr, st = SCardGetStatusChange(ctx, 0, [(readers[0], SCARD_STATE_UNAWARE)])
        assert st[0][1] & SCARD_STATE_EMPTY, st
        print("all good", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=server.env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = Lines(proc)
    out.until("remove now")
    server.control("remove 0")
    # the event reached the server's state once the next wait for a change returns
    wait_state(server, 0, present=False)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out.until("all good")
    assert proc.wait(WAIT) == 0


def wait_state(server: Served, index: int, *, present: bool) -> None:
    with RawClient(server.path, 6) as c:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            state = c.states()[index]
            if bool(state["state"] & wire.SCARD_PRESENT) == present:
                return
            c.wait_change()
        raise AssertionError("the state never changed")


_LOCKER = """
from smartcard.scard import *
import sys
hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
hr, readers = SCardListReaders(ctx, [])
hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
print("trying", flush=True)
assert SCardBeginTransaction(card) == 0
print("locked", flush=True)
sys.stdin.readline()
assert SCardEndTransaction(card, SCARD_LEAVE_CARD) == 0
print("ended", flush=True)
sys.stdin.readline()
"""


def test_transactions_across_processes_and_client_death(server: Served) -> None:
    need_pyscard()

    def start() -> tuple[subprocess.Popen[str], Lines]:
        p = subprocess.Popen([sys.executable, "-c", _LOCKER], env=server.env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        return p, Lines(p)

    a, a_out = start()
    a_out.until("locked")
    b, b_out = start()
    b_out.until("trying")
    time.sleep(0.5)  # B retries meanwhile; it must not get the lock while A holds it
    assert b_out.q.empty(), b_out.seen
    assert a.stdin is not None and b.stdin is not None
    a.stdin.write("end\n")
    a.stdin.flush()
    a_out.until("ended")
    b_out.until("locked")
    # C waits behind B; B dies holding the lock: the server releases it
    c, c_out = start()
    c_out.until("trying")
    b.kill()
    b.wait(WAIT)
    c_out.until("locked")
    for p in (a, c):
        p.kill()
        p.wait(WAIT)


def test_cancel_wakes_a_blocked_get_status_change(server: Served) -> None:
    out = pyscard(server, """
        import threading, time
        hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, readers = SCardListReaders(ctx, [])
        hr, st = SCardGetStatusChange(ctx, 0, [(readers[0], SCARD_STATE_UNAWARE)])
        result = []
        t = threading.Thread(target=lambda: result.append(
            SCardGetStatusChange(ctx, INFINITE, [(readers[0], st[0][1])])))
        t.start()
        while not result:
            time.sleep(0.2)
            assert SCardCancel(ctx) == 0
            t.join(0.5)
        assert U(result[0][0]) == U(SCARD_E_CANCELLED), hex(result[0][0] & 0xFFFFFFFF)
        print("all good")
    """)
    assert "all good" in out


@pytest.mark.parametrize("server", [("ct700=t0", "--virtual-pin", "1234")], indirect=True)
def test_pinpad_features_and_verify_pin_direct(server: Served) -> None:
    out = pyscard(server, """
        import struct
        hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, readers = SCardListReaders(ctx, [])
        hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
        assert hr == 0, hr
        hr, feats = SCardControl(card, SCARD_CTL_CODE(3400), [])
        found = {feats[i]: int.from_bytes(bytes(feats[i + 2:i + 6]), "big")
                 for i in range(0, len(feats), 6)}
        assert sorted(found) == [0x06, 0x07, 0x0A, 0x12], found
        hr, props = SCardControl(card, found[0x0A], [])
        assert hr == 0 and len(props) == 4, props
        hr, tlv = SCardControl(card, found[0x12], [])
        assert hr == 0 and bytes([6, 1, 4, 7, 1, 8]) in bytes(tlv), tlv  # GemPC Pinpad v1
        apdu = bytes.fromhex("0020008008") + b"\\xff" * 8
        head = struct.pack("<BBBBBHBBHB3sI", 15, 0, 0x82, 0x04, 0x00, 0x0408, 0x02, 1,
                           0x0409, 0, b"\\0\\0\\0", len(apdu))
        hr, resp = SCardControl(card, found[0x06], list(head + apdu))
        assert hr == 0 and len(resp) == 2, (hex(hr & 0xFFFFFFFF), resp)
        print("verify", bytes(resp).hex())
    """)
    assert "verify" in out


# --- the 4:5 and 4:6 sides: a client written here -----------------------------------------


class RawClient:
    """Speaks pcsc-lite's protocol as a client of version 4:minor does (winscard_clnt.c)."""

    def __init__(self, path: str, minor: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.minor = minor

    def __enter__(self) -> RawClient:
        major, minor, rv = self.version(4, self.minor)
        assert (major, minor, rv) == (4, self.minor, 0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, command: int, body: bytes = b"") -> None:
        self.sock.sendall(wire.HEADER.pack(len(body), command) + body)

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("server closed")
            out += chunk
        return out

    def version(self, major: int, minor: int) -> tuple[int, int, int]:
        self.send(wire.Command.VERSION, wire.VERSION.pack(major, minor, 0))
        return wire.VERSION.unpack(self.recv(wire.VERSION.size))  # type: ignore[return-value]

    def states(self) -> list[dict[str, object]]:
        if self.minor >= 6:
            self.send(wire.Command.GET_READERS_STATE_SIZE)
            (count,) = wire.STATE_SIZE.unpack(self.recv(4))
            self.send(wire.Command.GET_READERS_STATE_ARRAY)
        else:
            count = wire.PCSCLITE_MAX_READERS_CONTEXTS
            self.send(wire.Command.GET_READERS_STATE)
        return self._parse(self.recv(count * wire.READER_STATE.size), count)

    @staticmethod
    def _parse(raw: bytes, count: int) -> list[dict[str, object]]:
        out = []
        for i in range(count):
            name, counter, state, sharing, atr, atr_len, proto = wire.READER_STATE.unpack_from(
                raw, i * wire.READER_STATE.size)
            if name[0]:
                out.append({"name": wire.c_string(name), "counter": counter, "state": state,
                            "sharing": sharing, "atr": atr[:atr_len], "protocol": proto})
        return out

    def register(self) -> None:
        self.send(wire.Command.WAIT_READER_STATE_CHANGE)
        if self.minor < 6:  # up to 4:5 the array comes with the registration
            self.recv(wire.PCSCLITE_MAX_READERS_CONTEXTS * wire.READER_STATE.size)
        else:  # 4:6 reads it after registering (and so knows the server saw the WAIT)
            self.states()

    def wait_change(self) -> int:
        self.register()
        return int(wire.WAIT_STATE.unpack(self.recv(8))[1])

    def establish(self) -> int:
        self.send(wire.Command.ESTABLISH_CONTEXT, wire.ESTABLISH.pack(0, 0, 0))
        _scope, ctx, rv = wire.ESTABLISH.unpack(self.recv(wire.ESTABLISH.size))
        assert rv == 0
        return int(ctx)

    def connect(self, ctx: int, name: str, share: int = 2, prefs: int = 3) -> tuple[int, int, int]:
        self.send(wire.Command.CONNECT, wire.CONNECT.pack(ctx, name.encode(), share, prefs,
                                                          0, 0, 0))
        f = wire.CONNECT.unpack(self.recv(wire.CONNECT.size))
        return int(f[4]), int(f[5]), int(f[6])

    def transmit(self, h: int, proto: int, apdu: bytes, room: int) -> tuple[int, int, bytes]:
        self.send(wire.Command.TRANSMIT, wire.TRANSMIT.pack(h, proto, 8, len(apdu), proto, 8,
                                                            room, 0))
        self.sock.sendall(apdu)
        f = wire.TRANSMIT.unpack(self.recv(wire.TRANSMIT.size))
        rv, length = int(f[7]), int(f[6])
        return rv, length, self.recv(length) if rv == 0 else b""


@pytest.mark.parametrize("minor", [4, 5, 6])
def test_each_protocol_version(server: Served, minor: int) -> None:
    with RawClient(server.path, minor) as c:
        states = c.states()
        names = [s["name"] for s in states]
        assert names == ["Gemplus USB SmartCard Reader 00 00", "Circle CCR7115 ICC 01 00"]
        assert all(s["state"] & wire.SCARD_PRESENT and s["atr"] for s in states)
        if minor >= 5:
            c.send(wire.Command.GET_READER_EVENTS)
            events, rv = wire.READER_EVENTS.unpack(c.recv(8))
            assert rv == 0 and events >= 1
        ctx = c.establish()
        h, proto, rv = c.connect(ctx, str(names[0]))
        assert rv == 0 and proto == wire.PROTOCOL_T0
        # receive buffer too small: SCARD_E_INSUFFICIENT_BUFFER and the length needed
        rv, length, _ = c.transmit(h, proto, bytes.fromhex("0084000008"), 4)
        assert (rv, length) == (wire.RV["SCARD_E_INSUFFICIENT_BUFFER"], 10)
        rv, length, data = c.transmit(h, proto, bytes.fromhex("0084000008"), 264)
        assert rv == 0 and length == 10 and data[-2:] == b"\x90\x00"
        # a sharing change wakes a registered waiter
        with RawClient(server.path, minor) as other:
            other.register()
            _h2, _, rv = c.connect(ctx, str(names[1]))
            assert rv == 0
            assert wire.WAIT_STATE.unpack(other.recv(8)) == (0, 0)
            assert other.states()[1]["sharing"] == 1


def test_unserved_versions_are_refused(server: Served) -> None:
    c = RawClient(server.path, 7)
    try:
        assert c.version(4, 7) == (4, 6, wire.RV["SCARD_E_SERVICE_STOPPED"])
        assert c.version(4, 6) == (4, 6, 0)  # a newer client steps back, as with pcscd
    finally:
        c.sock.close()
    assert "protocol 4:7 not served" in "\n".join(server.out.seen + _drain(server.out))


def _drain(lines: Lines) -> list[str]:
    out = []
    while True:
        try:
            line = lines.q.get(timeout=0.5)
        except queue.Empty:
            return out
        if line is None:
            return out
        out.append(line)


def test_handles_of_another_connection_are_invalid(server: Served) -> None:
    with RawClient(server.path, 4) as a, RawClient(server.path, 4) as b:
        h, proto, rv = a.connect(a.establish(), "Gemplus USB SmartCard Reader 00 00")
        assert rv == 0
        rv, _, _ = b.transmit(h, proto, bytes.fromhex("0084000008"), 264)
        assert rv == wire.RV["SCARD_E_INVALID_HANDLE"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk=st.binary(min_size=1, max_size=300))
def test_malformed_messages_close_only_that_client(tmp_path_factory: pytest.TempPathFactory,
                                                  junk: bytes) -> None:
    s = _shared_server(tmp_path_factory)
    with RawClient(s.path, 6) as good:
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.settimeout(WAIT)
        bad.connect(s.path)
        bad.sendall(junk)
        bad.shutdown(socket.SHUT_WR)  # a truncated message, or garbage, then nothing
        with contextlib.suppress(OSError):
            while bad.recv(65536):
                pass
        bad.close()
        assert len(good.states()) == 2
    assert s.proc.poll() is None


_SHARED: dict[str, Served] = {}


def _shared_server(factory: pytest.TempPathFactory) -> Served:
    if "s" not in _SHARED:
        _SHARED["s"] = serve(factory.mktemp("shared"), "--virtual", "gemalto-pc-twin",
                             "extended-apdu=t1")
    return _SHARED["s"]


def teardown_module() -> None:
    s = _SHARED.pop("s", None)
    if s is not None:
        s.proc.terminate()
        s.proc.wait(WAIT)
