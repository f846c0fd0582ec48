"""``ccid serve`` run inside the test process (so a test can reach its readers, plug and
unplug them, and share them with in-process ``ccid`` users), driven by real clients:
pyscard on Debian's libpcsclite in subprocesses, and a raw client speaking the protocol."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import in_child
from test_serve import _PRELUDE, WAIT, Lines, RawClient, need_pyscard

from ccid.errors import SharingViolationError
from ccid.serve import wire
from ccid.serve.server import SYSTEM_SOCKET, Server
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice
from ccid.testing.presets import preset_reader

APDU = [0x00, 0x84, 0x00, 0x00, 0x08]


@dataclass
class InProc:
    server: Server
    backend: VirtualBackend
    vreaders: list[Any]
    path: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PCSCLITE_CSOCK_NAME": self.path}

    def names(self) -> list[str]:
        with self.server.lock:
            return [e.name for e in self.server.entries if e is not None]

    def until(self, what: str, pred: Callable[[], bool]) -> None:
        """Wait for the server's state (a hang guard, not a timing assertion)."""
        deadline = time.monotonic() + WAIT
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"never: {what}")
            time.sleep(0.02)


def start_server(path: str, **kw: Any) -> InProc:
    backend = VirtualBackend()
    vreaders = [preset_reader("gemalto-pc-twin", VirtualCard(protocols=(0, 1))),
                preset_reader("extended-apdu", VirtualCard(protocols=(1,)))]
    for r in vreaders:
        backend.plug(VirtualDevice(r))
    server = Server(path, backend=backend, interval=0.05, **kw)
    server.start()
    return InProc(server, backend, vreaders, path)


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProc]:
    s = start_server(str(tmp_path / "sock" / "pcscd.comm"))
    try:
        yield s
    finally:
        s.server.close()


class Script:
    """A pyscard program stepping on stdin lines, reporting on stdout lines."""

    def __init__(self, s: InProc, body: str) -> None:
        need_pyscard()
        code = f"{_PRELUDE}APDU = {APDU!r}\n{textwrap.dedent(body)}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], env=s.env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = Lines(self.proc)

    def until(self, text: str) -> str:
        return self.out.until(text)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        self.until("all good")
        assert self.proc.wait(WAIT) == 0, self.out.seen

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@contextlib.contextmanager
def script(s: InProc, body: str) -> Iterator[Script]:
    sc = Script(s, body)
    try:
        yield sc
    finally:
        sc.kill()


# --- fork ------------------------------------------------------------------------------


def test_forked_child_neither_disturbs_nor_releases_the_parents_handles(inproc: InProc) -> None:
    """The seed's fork article: a child using the context and handle it inherited works
    and leaves the parent's alone; its exit closes only its own connections."""
    with script(inproc, """
        import os
        hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, readers = SCardListReaders(ctx, [])
        hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
        assert hr == 0 and SCardBeginTransaction(card) == 0
        pid = os.fork()
        if pid == 0:
            hr, again = SCardListReaders(ctx, [])
            assert hr == 0 and again == readers, (hr, again)
            hr, resp = SCardTransmit(card, proto, APDU)
            assert hr == 0 and resp[-2:] == [0x90, 0], (hr, resp)
            hr, own = SCardEstablishContext(SCARD_SCOPE_USER)
            hr, c2, p2 = SCardConnect(own, readers[0], SCARD_SHARE_SHARED, 3)
            assert hr == 0, hr
            print("child done", flush=True)
            sys.exit(0)  # releasing nothing: the exit closes the child's sockets
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("child exited", flush=True)
        sys.stdin.readline()
        hr, resp = SCardTransmit(card, proto, APDU)
        assert hr == 0 and resp[-2:] == [0x90, 0], (hr, resp)
        assert SCardEndTransaction(card, SCARD_LEAVE_CARD) == 0  # still ours
        assert SCardDisconnect(card, SCARD_LEAVE_CARD) == 0
        assert SCardReleaseContext(ctx) == 0
        print("all good", flush=True)
    """) as sc:
        sc.until("child done")
        sc.until("child exited")
        # the child's own connection is gone (one handle left: the parent's)
        inproc.until("child's handle dropped", lambda: len(inproc.server.handles) == 1)
        entry = inproc.server.entries[0]
        assert entry is not None and entry.lock_owner is not None
        sc.go()
        sc.finish()
    assert not inproc.server.handles


# --- sharing with in-process ccid users ------------------------------------------------------


def test_sharing_violation_between_pcsc_client_and_in_process_user(inproc: InProc) -> None:
    entry = inproc.server.entries[0]
    assert entry is not None
    reader = entry.reader
    mine = reader.connect(0, mode="exclusive")
    with script(inproc, """
        hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, readers = SCardListReaders(ctx, [])
        hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
        assert U(hr) == U(SCARD_E_SHARING_VIOLATION), hex(U(hr))
        hr, st = SCardGetStatusChange(ctx, 0, [(readers[0], SCARD_STATE_UNAWARE)])
        print("refused", flush=True)
        sys.stdin.readline()
        hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_EXCLUSIVE, 3)
        assert hr == 0, hex(U(hr))
        print("exclusive", flush=True)
        sys.stdin.readline()
        assert SCardDisconnect(card, SCARD_LEAVE_CARD) == 0
        print("all good", flush=True)
    """) as sc:
        sc.until("refused")
        mine.disconnect("leave")
        sc.go()
        sc.until("exclusive")
        with pytest.raises(SharingViolationError) as info:
            reader.connect(0, mode="shared")
        assert reader.name in str(info.value)
        sc.go()
        sc.finish()
    inproc.until("the client's handle dropped", lambda: not inproc.server.handles)
    with reader.connect(0, mode="exclusive") as card:
        assert card.transmit(bytes(APDU))[-2:] == b"\x90\x00"


# --- hot-plug ---------------------------------------------------------------------------


def test_reader_unplug_and_replug(inproc: InProc) -> None:
    first, second = inproc.names()
    with script(inproc, """
        hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, readers = SCardListReaders(ctx, [])
        assert len(readers) == 2, readers
        hr, card, proto = SCardConnect(ctx, readers[0], SCARD_SHARE_SHARED, 3)
        assert hr == 0
        import threading
        pnp = chr(92) * 2 + "?PnP?" + chr(92) + "Notification"
        hr, ctx2 = SCardEstablishContext(SCARD_SCOPE_USER)
        hr, st = SCardGetStatusChange(ctx2, 0, [(pnp, SCARD_STATE_UNAWARE)])
        woke = []
        t = threading.Thread(target=lambda: woke.append(
            SCardGetStatusChange(ctx2, INFINITE, [(pnp, st[0][1])])))
        t.start()
        print("connected", flush=True)
        sys.stdin.readline()
        t.join(20)
        assert woke and woke[0][0] == 0, woke  # the PnP reader saw the reader go
        assert woke[0][1][0][1] & SCARD_STATE_CHANGED, woke
        hr, resp = SCardTransmit(card, proto, APDU)
        assert U(hr) == U(SCARD_E_READER_UNAVAILABLE), hex(U(hr))
        hr, _n, _s, _p, _a = SCardStatus(card)
        assert U(hr) == U(SCARD_E_READER_UNAVAILABLE), hex(U(hr))
        hr, now = SCardListReaders(ctx, [])
        assert hr == 0 and now == readers[1:], (hr, now)
        print("first gone", flush=True)
        sys.stdin.readline()
        hr, now = SCardListReaders(ctx, [])
        assert U(hr) == U(SCARD_E_NO_READERS_AVAILABLE), (hex(U(hr)), now)
        print("none", flush=True)
        sys.stdin.readline()
        hr, now = SCardListReaders(ctx, [])
        assert hr == 0 and len(now) == 1, (hr, now)
        hr, c2, p2 = SCardConnect(ctx, now[0], SCARD_SHARE_SHARED, 3)
        assert hr == 0, hex(U(hr))
        hr, resp = SCardTransmit(c2, p2, APDU)
        assert hr == 0 and resp[-2:] == [0x90, 0], (hr, resp)
        hr, resp = SCardTransmit(card, proto, APDU)  # the old handle stays dead
        assert hr != 0
        SCardDisconnect(card, SCARD_LEAVE_CARD)
        assert SCardDisconnect(c2, SCARD_LEAVE_CARD) == 0
        print("all good", flush=True)
    """) as sc:
        sc.until("connected")
        inproc.backend.unplug(inproc.vreaders[0])
        inproc.until("first reader gone", lambda: inproc.names() == [second])
        sc.go()
        sc.until("first gone")
        inproc.backend.unplug(inproc.vreaders[1])
        inproc.until("no reader", lambda: inproc.names() == [])
        sc.go()
        sc.until("none")
        inproc.backend.plug(inproc.vreaders[0])
        inproc.until("first reader back, card probed", lambda: any(
            e is not None and e.atr for e in inproc.server.entries))
        sc.go()
        sc.finish()
    assert first  # (named at start)


# --- peer credentials ----------------------------------------------------------------------


NOBODY = 65534


def _as_nobody_version(path: str, gid: int) -> int:
    """In a child: become uid nobody (group ``gid``), send CMD_VERSION; 0: answered,
    3: the server closed the connection without an answer."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(NOBODY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(path)
    with contextlib.suppress(OSError):
        sock.sendall(wire.HEADER.pack(wire.VERSION.size, wire.Command.VERSION)
                     + wire.VERSION.pack(4, 4, 0))
    try:
        answer = sock.recv(wire.VERSION.size)
    except ConnectionResetError:
        answer = b""
    if not answer:
        return 3
    return 0 if wire.VERSION.unpack(answer) == (4, 4, 0) else 4


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_peer_credentials_refuse_other_users(caplog: pytest.LogCaptureFixture) -> None:
    # a socket anyone can reach, so that only the credential check stands in the way
    base = tempfile.mkdtemp(prefix="ccid-serve-cred-")
    os.chmod(base, 0o755)
    path = os.path.join(base, "pcscd.comm")
    s = start_server(path, socket_mode=0o666)
    try:
        with caplog.at_level(logging.INFO, logger="ccid.serve"):
            assert in_child(lambda: _as_nobody_version(path, NOBODY)) == 3
            inproc_until_logged(caplog, f"uid {NOBODY}")
        with RawClient(path, 4) as good:  # the server goes on
            assert len(good.states()) == 2
        s.server.allow_gids = (NOBODY,)  # --allow-group: now that group is served
        assert in_child(lambda: _as_nobody_version(path, NOBODY)) == 0
    finally:
        s.server.close()
        os.rmdir(base)


def inproc_until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while not any("rejected" in r.getMessage() and text in r.getMessage()
                  for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)


# --- clients that go away, clients that misbehave --------------------------------------------


def _raw_transmit_request(h: int, proto: int, apdu: bytes, room: int = 264) -> bytes:
    return (wire.HEADER.pack(wire.TRANSMIT.size, wire.Command.TRANSMIT)
            + wire.TRANSMIT.pack(h, proto, 8, len(apdu), proto, 8, room, 0) + apdu)


def _begin(c: RawClient, h: int) -> int:
    c.send(wire.Command.BEGIN_TRANSACTION, wire.BEGIN.pack(h, 0))
    return int(wire.BEGIN.unpack(c.recv(wire.BEGIN.size))[1])


def _end(c: RawClient, h: int) -> int:
    c.send(wire.Command.END_TRANSACTION, wire.END.pack(h, wire.LEAVE_CARD, 0))
    return int(wire.END.unpack(c.recv(wire.END.size))[2])


def test_client_gone_mid_command_and_mid_transaction_releases_everything(
        inproc: InProc) -> None:
    name = inproc.names()[0]
    # mid-command: the card is slow, the client hangs up while its transmit runs
    inproc.vreaders[0].slots[0].card.faults.slow(0.5)
    with RawClient(inproc.path, 4) as a:
        h, proto, rv = a.connect(a.establish(), name, share=wire.SHARE_EXCLUSIVE)
        assert rv == 0 and _begin(a, h) == 0
        a.sock.sendall(_raw_transmit_request(h, proto, bytes(APDU)))
        # the command is at the reader, its answer scheduled half a second away
        inproc.until("the transmit runs", lambda: bool(inproc.vreaders[0]._pending))
    inproc.until("the client's handle dropped", lambda: not inproc.server.handles)
    inproc.vreaders[0].slots[0].card.faults.slow(0)
    entry = inproc.server.entries[0]
    assert entry is not None and entry.lock_owner is None and not entry.handles
    # mid-transaction: the next client gets the card, exclusively
    with RawClient(inproc.path, 4) as b:
        h, proto, rv = b.connect(b.establish(), name, share=wire.SHARE_EXCLUSIVE)
        assert rv == 0, hex(rv)
        assert _begin(b, h) == 0
        rv, _, data = b.transmit(h, proto, bytes(APDU), 264)
        assert rv == 0 and data[-2:] == b"\x90\x00"
    inproc.until("b's handle dropped", lambda: not inproc.server.handles)
    assert entry.lock_owner is None


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(WAIT)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


_VERSION_44 = wire.HEADER.pack(wire.VERSION.size, wire.Command.VERSION) + wire.VERSION.pack(
    4, 4, 0)

#: (what, bytes sent, then half-close?) each must close that client only
BAD: list[tuple[str, bytes, bool]] = [
    ("unknown command", wire.HEADER.pack(0, 0x7777), False),
    ("body size not the command's", wire.HEADER.pack(3, wire.Command.ESTABLISH_CONTEXT)
     + b"abc", False),
    ("oversized header size", wire.HEADER.pack(0xFFFFFFFF, wire.Command.TRANSMIT), False),
    ("oversized send buffer", wire.HEADER.pack(wire.TRANSMIT.size, wire.Command.TRANSMIT)
     + wire.TRANSMIT.pack(1, 1, 8, 0x7FFFFFFF, 1, 8, 264, 0), False),
    ("a 4:6 command after negotiating 4:4", _VERSION_44
     + wire.HEADER.pack(0, wire.Command.GET_READERS_STATE_SIZE), False),
    ("a 4:5 command before any version", wire.HEADER.pack(0, wire.Command.GET_READER_EVENTS),
     False),
    ("LIST_READERS (client-side only)", _VERSION_44 + wire.HEADER.pack(
        0, wire.Command.LIST_READERS), False),
    ("truncated message, then end of stream", wire.HEADER.pack(
        wire.CONNECT.size, wire.Command.CONNECT) + b"\0" * 40, True),
    ("a megabyte of garbage", b"\xff" * (1 << 20), False),
]


def test_bad_messages_close_that_client_only_while_another_holds_a_transaction(
        inproc: InProc) -> None:
    name = inproc.names()[0]
    with RawClient(inproc.path, 6) as good, RawClient(inproc.path, 4) as third:
        h, proto, rv = good.connect(good.establish(), name)
        assert rv == 0 and _begin(good, h) == 0
        h3, _, rv = third.connect(third.establish(), name)
        assert rv == 0
        for what, data, half_close in BAD:
            bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bad.connect(inproc.path)
            with contextlib.suppress(OSError):  # the server may hang up mid-send
                bad.sendall(data)
                if half_close:
                    bad.shutdown(socket.SHUT_WR)
            assert _closed_by_server(bad), what
            bad.close()
            # the transaction still holds: the other client is kept out, the owner goes on
            assert _begin(third, h3) == wire.RV["SCARD_E_SHARING_VIOLATION"], what
            rv, _, resp = good.transmit(h, proto, bytes(APDU), 264)
            assert rv == 0 and resp[-2:] == b"\x90\x00", what
        assert _end(good, h) == 0
        assert _begin(third, h3) == 0
        assert _end(third, h3) == 0
    inproc.until("every handle dropped", lambda: not inproc.server.handles)
    assert inproc.server.clients == set() or all(c.closed for c in inproc.server.clients)


# --- SCardCancel ---------------------------------------------------------------------------


def test_cancel_ends_a_transmit_blocked_on_a_slow_card(inproc: InProc) -> None:
    """libpcsclite sends SCARD_CANCEL only while a GetStatusChange runs (winscard_clnt.c's
    ``cancellable``); a client library that sends it during a card call (on a second
    connection, as SCardCancel does) ends that call with SCARD_E_CANCELLED."""
    name = inproc.names()[1]
    card = inproc.vreaders[1].slots[0].card
    with RawClient(inproc.path, 4) as a, RawClient(inproc.path, 4) as b:
        ctx = a.establish()
        h, proto, rv = a.connect(ctx, name)
        assert rv == 0
        ctx = ctx - (1 << 32) if ctx >= 1 << 31 else ctx  # CANCEL's hContext is signed
        card.faults.slow(WAIT)  # answered only after the hang guard: cancel must end it
        a.sock.sendall(_raw_transmit_request(h, proto, bytes(APDU)))
        a.sock.settimeout(0.2)
        answer = b""
        while not answer:  # until the transmit has begun and been cancelled
            b.send(wire.Command.CANCEL, wire.CANCEL.pack(ctx, 0))
            assert wire.CANCEL.unpack(b.recv(wire.CANCEL.size)) == (ctx, 0)
            with contextlib.suppress(TimeoutError):
                answer = a.recv(wire.TRANSMIT.size)
        a.sock.settimeout(WAIT)
        assert wire.TRANSMIT.unpack(answer)[7] == wire.RV["SCARD_E_CANCELLED"]
        card.faults.slow(0)
        rv, _, data = a.transmit(h, proto, bytes(APDU), 264)  # the card stays usable
        assert rv == 0 and data[-2:] == b"\x90\x00"
        # a CANCEL for a context that is idle changes nothing
        b.send(wire.Command.CANCEL, wire.CANCEL.pack(ctx, 0))
        assert wire.CANCEL.unpack(b.recv(wire.CANCEL.size)) == (ctx, 0)
        rv, _, data = a.transmit(h, proto, bytes(APDU), 264)
        assert rv == 0 and data[-2:] == b"\x90\x00"


# --- --system --------------------------------------------------------------------------------


def _serve_system(path: str, *args: str) -> subprocess.Popen[str]:
    code = "import sys; from ccid.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    if path != SYSTEM_SOCKET:
        env["CCID_SERVE_SYSTEM_SOCKET"] = path
    return subprocess.Popen([sys.executable, "-c", code, "serve", "--system", *args],
                            env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _system_paths(tmp_path: Path) -> list[str]:
    """A temporary path; and pcscd's own when we may use it and nothing is there."""
    paths = [str(tmp_path / "pcscd" / "pcscd.comm")]
    if os.geteuid() == 0 and not os.path.lexists(SYSTEM_SOCKET) and \
            not os.path.exists(os.path.dirname(SYSTEM_SOCKET)) and \
            os.access(os.path.dirname(os.path.dirname(SYSTEM_SOCKET)), os.W_OK):
        paths.append(SYSTEM_SOCKET)
    return paths


def test_system_refuses_when_a_server_listens_and_replaces_a_stale_socket(
        tmp_path: Path) -> None:
    for path in _system_paths(tmp_path):
        made = not os.path.exists(os.path.dirname(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            # something (a pcscd) listens there: refused, said so, its socket left alone
            pcscd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            pcscd.bind(path)
            pcscd.listen(1)
            proc = _serve_system(path, "--virtual", "gemalto-pc-twin")
            out, err = proc.communicate(timeout=WAIT)
            assert proc.returncode == 1, (out, err)
            assert f"already listens on {path}" in err and "Traceback" not in err, err
            assert os.path.exists(path)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(path)  # still the other server's
            probe.close()
            pcscd.close()
            # the socket of a server that died: replaced; --system's socket is for everyone
            assert os.path.exists(path)
            proc = _serve_system(path, "--virtual", "gemalto-pc-twin")
            try:
                assert proc.stdout is not None
                assert "listening on " + path in proc.stdout.readline()
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
                with RawClient(path, 4) as c:
                    assert len(c.states()) == 1
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=WAIT)
                assert proc.returncode == 0
                assert not os.path.exists(path)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(WAIT)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(path))


# --- insertion as pcscd publishes it --------------------------------------------------------


def test_an_inserted_card_is_published_with_its_atr(inproc: InProc) -> None:
    """A card is never present without its ATR (libpcsclite's GetStatusChange sleeps
    400 ms when it sees that, waiting for the server to power the card)."""
    vreader = inproc.vreaders[0]
    card = vreader.remove(0)
    inproc.until("the removal is published", lambda: not inproc.server.entries[0].present)
    card.faults.slow(0.5)  # powering up takes a while
    with RawClient(inproc.path, 6) as c:
        before = c.states()[0]
        seen = []
        c.register()
        vreader.insert(card, 0)
        while True:
            assert wire.WAIT_STATE.unpack(c.recv(8)) == (0, 0)
            state = c.states()[0]
            seen.append((state["state"], state["atr"]))
            if state["state"] & wire.SCARD_PRESENT:
                break
            c.register()
    card.faults.slow(0)
    for flags, atr in seen:
        assert not flags & wire.SCARD_PRESENT or atr, seen
    assert state["atr"][:2] == b"\x3b\x89"
    assert state["counter"] != before["counter"]


def test_a_waiter_that_stops_reading_blocks_no_one(inproc: InProc,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A client registered for GetStatusChange that sends requests and never reads the
    answers (its socket buffer full) is closed at the next event; the others go on."""
    stuck = RawClient(inproc.path, 6)
    stuck.__enter__()
    stuck.send(wire.Command.WAIT_READER_STATE_CHANGE)
    ask = wire.HEADER.pack(0, wire.Command.GET_READERS_STATE_ARRAY)
    with contextlib.suppress(OSError):
        stuck.sock.setblocking(False)
        for _ in range(2000):  # answers of ~3 KB each: megabytes nobody reads
            stuck.sock.send(ask)
    entry = inproc.server.entries[0]
    assert entry is not None
    inproc.until("the stuck client's thread is blocked sending", lambda: any(
        c.send_lock.locked() for c in inproc.server.clients))
    inproc.vreaders[0].remove(0)  # an event: the waiters are notified
    with RawClient(inproc.path, 4) as other:  # (a hang here fails on its socket timeout)
        inproc.until("the removal is published", lambda: not entry.present)
        h, proto, rv = other.connect(other.establish(), inproc.names()[1])
        assert rv == 0
        rv, _, data = other.transmit(h, proto, bytes(APDU), 264)
        assert rv == 0 and data[-2:] == b"\x90\x00"
    stuck.sock.setblocking(True)
    assert _closed_by_server(stuck.sock)
    stuck.sock.close()
    inproc.until("logged", lambda: any("stopped reading its answers" in r.getMessage()
                                       for r in caplog.records))


def tgkill(pid: int, tid: int, sig: int) -> int:
    """Send ``sig`` to one thread of another process (glibc >= 2.30)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "tgkill"):
        pytest.skip("no tgkill() in this C library")
    return int(libc.tgkill(pid, tid, sig))


def _serve_once(path: str) -> subprocess.Popen[str]:
    code = "import sys; from ccid.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--socket", path, "--virtual", "gemalto-pc-twin"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert "listening on" in proc.stdout.readline()
    return proc


def _main_thread_asleep(proc: subprocess.Popen[str]) -> None:
    """Wait until the server's main thread sleeps in its wait for a signal (the control
    thread answers, so the main thread is past starting it)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("remove 0\n")
    proc.stdin.flush()
    while not proc.stdout.readline().startswith("ok remove 0"):
        pass
    deadline = time.monotonic() + WAIT
    wchan = Path(f"/proc/{proc.pid}/wchan")
    asleep = 0
    while asleep < 5:  # asleep at five looks in a row
        assert time.monotonic() < deadline, wchan.read_text()
        asleep = asleep + 1 if wchan.read_text().startswith("futex") else 0
        time.sleep(0.02)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux threads in /proc")
def test_sigterm_caught_by_any_thread_stops_the_server(tmp_path: Path) -> None:
    """The kernel may hand a process's SIGTERM to any of its threads; Python runs the
    handler only when the main thread runs, so the main thread must not sleep for long."""
    index = 0
    while True:
        path = str(tmp_path / f"{index}.comm")
        proc = _serve_once(path)
        try:
            _main_thread_asleep(proc)
            others = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task")
                            if int(t) != proc.pid)
            if index >= len(others):
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(WAIT) == 0
                break
            assert tgkill(proc.pid, others[index], signal.SIGTERM) == 0
            assert proc.wait(WAIT) == 0, f"thread {index} of {len(others)}"
            assert not os.path.exists(path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
        index += 1
    assert index >= 3  # (the accept, reader-watch and reader-monitor threads at least)
