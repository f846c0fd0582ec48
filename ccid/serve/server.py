"""The PC/SC server: a UNIX socket, one thread per client connection, readers from ccid.watch.

Each client connection has its own thread, blocked in ``recv`` while idle; requests are
answered in order. GetStatusChange waiters are a set: a reader event writes the 8-byte
notification to each of them from the event thread (what pcscd's event handler does), so
an idle waiter costs nothing. A card operation runs in its client's thread on the public
blocking API (``Reader.connect``, ``Card.transmit`` ...), so a slow card holds only the
clients using it.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import secrets
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ccid.errors import (
    CardRemovedError,
    CardResetError,
    CCIDError,
    NoCardError,
    ReaderRemovedError,
    ServerError,
    SharingViolationError,
)
from ccid.serve import features, wire
from ccid.serve.protocol import ProtocolViolation, Request, RequestParser, negotiate

__all__ = ["SYSTEM_SOCKET", "Server", "ServerError", "default_socket_path"]

log = logging.getLogger("ccid.serve")

SYSTEM_SOCKET = "/run/pcscd/pcscd.comm"
#: Limits per client connection (pcscd: one context per connection, 16 handles each).
MAX_CONTEXTS = 16
MAX_HANDLES = 64
MAX_CLIENTS = 256
#: How long a notification waits for a client's own answer to go out (seconds).
SEND_WAIT = 0.5
_SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
_UCRED = struct.Struct("=iII")  # pid, uid, gid

# attributes (reader.h: SCARD_ATTR_VALUE(class, tag))
ATTR_VENDOR_NAME = 0x00010100
ATTR_VENDOR_IFD_VERSION = 0x00010102
ATTR_VENDOR_IFD_SERIAL_NO = 0x00010103
ATTR_CHANNEL_ID = 0x00020110
ATTR_MAXINPUT = 0x0007A007
ATTR_CURRENT_PROTOCOL_TYPE = 0x00080201
ATTR_ICC_PRESENCE = 0x00090300
ATTR_ICC_INTERFACE_STATUS = 0x00090301
ATTR_ATR_STRING = 0x00090303
ATTR_DEVICE_FRIENDLY_NAME = 0x7FFF0003

_MODES = {wire.SHARE_EXCLUSIVE: "exclusive", wire.SHARE_SHARED: "shared",
          wire.SHARE_DIRECT: "direct"}
_DISPOSITIONS = {wire.LEAVE_CARD: "leave", wire.RESET_CARD: "reset",
                 wire.UNPOWER_CARD: "unpower", wire.EJECT_CARD: "eject"}


def default_socket_path() -> str:
    """$XDG_RUNTIME_DIR/ccid/pcscd.comm, else /tmp/ccid-serve-UID/pcscd.comm."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "ccid", "pcscd.comm")
    return os.path.join("/tmp", f"ccid-serve-{os.getuid()}", "pcscd.comm")


def _rv(name: str) -> int:
    return wire.RV[name]


def _rv_of(exc: BaseException) -> int:
    if isinstance(exc, ReaderRemovedError):
        return _rv("SCARD_E_READER_UNAVAILABLE")
    if isinstance(exc, CCIDError) and exc.pcsc_code in wire.RV:
        return wire.RV[exc.pcsc_code]
    return _rv("SCARD_F_COMM_ERROR")


# --- readers -------------------------------------------------------------------------------


@dataclass(eq=False)
class Entry:
    """One reader slot in the reader-state array."""

    name: str
    reader: Any
    slot: int
    event_counter: int = 0
    present: bool = False
    mute: bool = False
    atr: bytes = b""
    gone: bool = False
    probed: bool = False
    generation: int = 0  # insertions and removals seen (a probe's result may be stale)
    handles: set[Handle] = field(default_factory=set)
    lock_owner: Handle | None = None

    def state(self) -> tuple[int, int, bytes, int]:
        """(readerState, readerSharing, ATR, cardProtocol) as pcscd publishes them."""
        if self.gone:
            return wire.SCARD_UNKNOWN, 0, b"", 0
        sharing = len(self.handles)
        if any(h.mode == "exclusive" for h in self.handles):
            sharing = wire.SHARING_EXCLUSIVE_CONTEXT
        if not self.present:
            return wire.SCARD_ABSENT, sharing, b"", 0
        if self.mute:
            return wire.SCARD_PRESENT | wire.SCARD_SWALLOWED, sharing, b"", 0
        powered = protocol = None
        with contextlib.suppress(CCIDError, IndexError):
            info = self.reader.slots[self.slot]
            powered, protocol = info.powered, info.protocol
        if powered:
            proto = {"T=0": wire.PROTOCOL_T0, "T=1": wire.PROTOCOL_T1}.get(protocol or "", 0)
            return (wire.SCARD_PRESENT | wire.SCARD_POWERED | wire.SCARD_NEGOTIABLE, sharing,
                    self.atr, proto)
        return wire.SCARD_PRESENT, sharing, self.atr, 0

    def pack(self) -> bytes:
        state, sharing, atr, proto = self.state()
        return wire.pack_reader_state(self.name, self.event_counter, state, sharing, atr, proto)


# --- clients -------------------------------------------------------------------------------


@dataclass(eq=False)
class Handle:
    id: int
    conn: Connection
    context: int
    entry: Entry
    card: Any
    mode: str
    lock_depth: int = 0

    def release_lock(self) -> None:
        self.lock_depth = 0
        if self.entry.lock_owner is self:
            self.entry.lock_owner = None


class Connection:
    """One client socket (libpcsclite opens one per SCardEstablishContext)."""

    def __init__(self, server: Server, sock: socket.socket, cid: int,
                 creds: tuple[int, int, int]) -> None:
        self.server = server
        self.sock = sock
        self.id = cid
        self.pid, self.uid, self.gid = creds
        self.parser = RequestParser()
        self.send_lock = threading.Lock()
        self.contexts: set[int] = set()
        self.handles: dict[int, Handle] = {}
        self.closed = False
        self.aborted = False  # closed by the server: it stopped reading

    def __repr__(self) -> str:
        return f"client {self.id} (pid {self.pid})"

    def send(self, data: bytes) -> None:
        """An answer, from the client's own thread (waits while the client reads)."""
        with self.send_lock:
            if not self.closed:
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.closed = True

    def send_now(self, data: bytes) -> None:
        """A message sent under the server's lock (notifications, the 4:4 registration's
        array): never waits. libpcsclite reads each answer before its next request, so a
        client whose socket cannot take it at once has stopped reading: it is closed
        rather than let it stall every other client."""
        # The client's own thread holds the lock for the microseconds an answer takes to
        # a client that reads; much longer, it is blocked on one that does not.
        if not self.send_lock.acquire(timeout=SEND_WAIT):
            self.abort()
            return
        try:
            if self.closed:
                return
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.closed = True
                return
            if sent < len(data):
                self.abort()  # (a partial message would corrupt the stream anyway)
        finally:
            self.send_lock.release()

    def abort(self) -> None:
        """Close a client that stopped reading; its thread ends and releases its state."""
        self.aborted = True
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


# --- the server ----------------------------------------------------------------------------


class Server:
    """Serve every reader of ``backend`` (None: the real USB bus) on ``socket_path``.

    Over 500 lines on purpose: one short ``_do_<COMMAND>`` method per pcsc-lite command
    (about 25), all reading the same tables of contexts, handles and readers under one lock;
    split by command family they would share those tables through a second object.

    ``allow_uids`` / ``allow_gids``: peers allowed besides our own uid. ``start()`` binds
    and starts the threads; ``close()`` stops, applies no disposition beyond "leave" to
    cards still held (their clients are gone), and removes the socket.
    """

    def __init__(self, socket_path: str, *, backend: Any = None, allow_gids: tuple[int, ...] = (),
                 allow_escape: bool = False, interval: float = 1.0, wire_log: bool = False,
                 socket_mode: int = 0o600) -> None:
        self.path = socket_path
        self.backend = backend
        self.allow_gids = allow_gids
        self.allow_escape = allow_escape
        self.interval = interval
        self.wire_log = wire_log
        self.socket_mode = socket_mode
        self.lock = threading.RLock()
        self.entries: list[Entry | None] = [None] * wire.PCSCLITE_MAX_READERS_CONTEXTS
        self.readers: dict[str, Any] = {}
        self.reader_events = 1
        self.contexts: dict[int, Connection] = {}
        self.handles: dict[int, Handle] = {}
        self.waiters: set[Connection] = set()
        self.clients: set[Connection] = set()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ids = 0
        self._ready = threading.Event()
        self._expected = 0
        self.on_change: list[Callable[[], None]] = []

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._bind()
        for target, name in ((self._watch, "ccid-serve-readers"),
                             (self._accept, "ccid-serve-accept")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        # Clients asking right away see the readers present at start.
        self._ready.wait(10.0)

    def _bind(self) -> None:
        path = self.path
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=0o700)
            except OSError as exc:
                raise ServerError(f"cannot create {directory}: {exc.strerror}") from None
        st = os.stat(directory)
        if st.st_uid == os.getuid() and directory.startswith(("/tmp/", "/run/user/")) \
                and stat.S_IMODE(st.st_mode) & 0o077 and os.path.basename(directory) == "ccid":
            os.chmod(directory, 0o700)
        if os.path.lexists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(path)
            except OSError:
                # nobody listens: a socket left behind by a crash
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:
                raise ServerError(f"a PC/SC server (pcscd or another ccid serve) already "
                                  f"listens on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ServerError(f"cannot bind {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, self.socket_mode)
        sock.listen(64)
        self._sock = sock

    def close(self) -> None:
        """Stop serving: close every client (releasing its handles) and the socket."""
        if self._stop.is_set():
            return
        self._stop.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        for conn in list(self.clients):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            if t.name.startswith("ccid-serve-client"):
                t.join(5.0)
        for reader in list(self.readers.values()):
            with contextlib.suppress(Exception):
                reader.close()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- readers (one thread following ccid.watch) ------------------------------------

    def _watch(self) -> None:
        from ccid import events, list_readers, watch

        try:
            self._expected = len(list_readers(self.backend))
        except CCIDError as exc:
            log.warning("reader enumeration failed: %s", exc)
            self._expected = 0
        if not self._expected:
            self._ready.set()
        try:
            stream = watch(self.backend, interval=self.interval, readers=self.readers,
                           auto_get_response=False)
            for event in stream:
                if self._stop.is_set():
                    break
                if isinstance(event, events.ReaderAdded):
                    self._reader_added(event.reader, event.info)
                elif isinstance(event, events.ReaderRemoved):
                    self._reader_removed(event.reader)
                elif isinstance(event, events.CardInserted):
                    self._card_inserted(event.reader, event.slot)
                elif isinstance(event, events.CardRemoved):
                    self._card_removed(event.reader, event.slot)
                if not self._ready.is_set() and self._initial_done():
                    self._ready.set()
        except Exception:  # the event thread must not die silently
            log.exception("reader watch failed")
        finally:
            self._ready.set()

    def _initial_done(self) -> bool:
        """Every reader present at start is listed and every card in it probed."""
        with self.lock:
            entries = [e for e in self.entries if e is not None]
            readers = {id(e.reader) for e in entries}
        if len(readers) < self._expected:
            return False
        for e in entries:
            try:
                present = e.reader.slot_states()[e.slot]
            except (CCIDError, IndexError):
                continue
            if present and not e.probed:
                return False
        return True

    def _entries_of(self, reader_name: str) -> list[Entry]:
        return [e for e in self.entries if e is not None and e.reader is not None
                and getattr(e.reader, "name", None) == reader_name]

    def _reader_added(self, name: str, info: Any) -> None:
        reader = self.readers.get(name)
        if reader is None:
            log.warning("reader %s: cannot open it (in use elsewhere?), not served", name)
            return
        names = list(getattr(info, "slot_names", None) or [name])
        with self.lock:
            for slot, slot_name in enumerate(names):
                entry = Entry(slot_name, reader, slot)
                try:
                    index = self.entries.index(None)
                except ValueError:
                    self.entries.append(None)  # 4:6 clients see a larger array
                    index = len(self.entries) - 1
                self.entries[index] = entry
            self.reader_events = (self.reader_events + 1) & 0x7FFF or 1
        log.info("new reader: %s", ", ".join(names))
        self._signal()

    def _reader_removed(self, name: str) -> None:
        with self.lock:
            for i, entry in enumerate(self.entries):
                if entry is not None and entry.reader is not None and \
                        getattr(entry.reader, "name", None) == name:
                    entry.gone = True
                    entry.present = False
                    self.entries[i] = None
            self.reader_events = (self.reader_events + 1) & 0x7FFF or 1
        log.info("reader removed: %s", name)
        self._signal()

    def _entry(self, reader_name: str, slot: int) -> Entry | None:
        with self.lock:
            for e in self._entries_of(reader_name):
                if e.slot == slot:
                    return e
        return None

    def _card_inserted(self, reader_name: str, slot: int) -> None:
        entry = self._entry(reader_name, slot)
        if entry is None:
            return
        with self.lock:
            entry.generation += 1
            generation = entry.generation
        log.info("card inserted into %s", entry.name)
        if not self._ready.is_set():
            self._probe(entry, generation)  # the first clients see the cards already in
            return
        # Power the card and publish it with its ATR in one change, as pcscd does: a
        # libpcsclite client seeing a card present without an ATR sleeps 400 ms for it
        # (winscard_clnt.c). In a thread, so that a slow card delays no other reader.
        threading.Thread(target=self._probe, args=(entry, generation), daemon=True,
                         name="ccid-serve-probe").start()

    def _probe(self, entry: Entry, generation: int) -> None:
        try:
            atr, mute = self._power_and_read(entry)
            with self.lock:
                if entry.generation != generation:
                    return  # removed (or swapped) meanwhile: its own event says so
                entry.present, entry.mute, entry.atr = True, mute, atr
                entry.event_counter = (entry.event_counter + 1) & 0xFFFF
            if atr:
                log.info("%s: ATR %s", entry.name, atr.hex(" ").upper())
        finally:
            entry.probed = True
        self._signal()

    def _power_and_read(self, entry: Entry) -> tuple[bytes, bool]:
        """(ATR, mute) of the card just inserted into ``entry``."""
        try:
            card = entry.reader.connect(entry.slot, mode="shared", timeout=10.0)
        except NoCardError:
            return b"", False
        except SharingViolationError:
            info = entry.reader.slots[entry.slot]
            return bytes(info.atr or b""), False
        except CCIDError as exc:
            log.info("%s: card does not answer (%s)", entry.name, exc.message)
            return b"", True
        atr = card.atr
        with contextlib.suppress(CCIDError):
            card.disconnect("leave")
        return (b"" if atr is None else bytes(atr)), False

    def _card_removed(self, reader_name: str, slot: int) -> None:
        entry = self._entry(reader_name, slot)
        if entry is None:
            return
        with self.lock:
            entry.generation += 1
            was = entry.present
            entry.present = False
            entry.mute = False
            entry.atr = b""
            if was:
                entry.event_counter = (entry.event_counter + 1) & 0xFFFF
        log.info("card removed from %s", entry.name)
        self._signal()

    # --- reader-state array and waiters ------------------------------------------------

    def state_array(self, old_api: bool) -> bytes:
        with self.lock:
            records = [e.pack() if e is not None else wire.EMPTY_READER_STATE
                       for e in self.entries]
        if old_api:
            records = records[:wire.PCSCLITE_MAX_READERS_CONTEXTS]
        return b"".join(records)

    def _signal(self, rv: int = wire.SUCCESS) -> None:
        """A state changed: wake every GetStatusChange waiter (they re-read the array)."""
        with self.lock:
            waiting, self.waiters = self.waiters, set()
            for conn in waiting:
                conn.send_now(wire.WAIT_STATE.pack(0, rv))
        for hook in self.on_change:
            hook()

    # --- accepting clients -----------------------------------------------------------

    def _accept(self) -> None:
        sock = self._sock
        while sock is not None and not self._stop.is_set():
            try:
                client, _ = sock.accept()
            except OSError as exc:
                if self._stop.is_set() or exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                log.warning("accept failed: %s", exc)
                continue
            raw = client.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
            creds = _UCRED.unpack(raw)
            if not self._authorized(creds):
                log.error("rejected client pid %d uid %d gid %d: not our user%s", *creds,
                          " nor an allowed group" if self.allow_gids else "")
                client.close()
                continue
            with self.lock:
                if len(self.clients) >= MAX_CLIENTS:
                    log.error("too many clients (%d): refusing pid %d", MAX_CLIENTS, creds[0])
                    client.close()
                    continue
                self._ids += 1
                conn = Connection(self, client, self._ids, creds)
                self.clients.add(conn)
            t = threading.Thread(target=self._client, args=(conn,), daemon=True,
                                 name=f"ccid-serve-client-{conn.id}")
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
            t.start()

    def _authorized(self, creds: tuple[int, int, int]) -> bool:
        pid, uid, gid = creds
        if uid == os.getuid():
            return True
        if not self.allow_gids:
            return False
        if gid in self.allow_gids:
            return True
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Groups:"):
                        return any(int(g) in self.allow_gids for g in line.split()[1:])
        except (OSError, ValueError):
            return False
        return False

    # --- one client ------------------------------------------------------------------

    def _client(self, conn: Connection) -> None:
        log.debug("%s connected (uid %d)", conn, conn.uid)
        why = "closed the connection"
        try:
            while not self._stop.is_set():
                try:
                    data = conn.sock.recv(max(conn.parser.needed(), 4096))
                except OSError:
                    data = b""
                if not data:
                    if conn.aborted:
                        raise ProtocolViolation("stopped reading its answers")
                    break
                conn.parser.feed(data)
                while True:
                    request = conn.parser.next_request()
                    if request is None:
                        break
                    self._dispatch(conn, request)
                    if conn.closed:
                        if conn.aborted:
                            raise ProtocolViolation("stopped reading its answers")
                        why = "hung up before its answer"
                        return
        except ProtocolViolation as exc:
            why = f"broke the protocol: {exc}"
            log.warning("%s %s; closing it", conn, exc)
        except Exception:
            why = "crashed its handler"
            log.exception("%s: internal error; closing it", conn)
        finally:
            log.debug("%s %s", conn, why)
            self._cleanup(conn)

    def _cleanup(self, conn: Connection) -> None:
        with conn.send_lock:
            conn.closed = True
        with contextlib.suppress(OSError):
            conn.sock.close()
        with self.lock:
            self.waiters.discard(conn)
            self.clients.discard(conn)
            for ctx in conn.contexts:
                self.contexts.pop(ctx, None)
            handles = list(conn.handles.values())
        for h in handles:
            self._drop_handle(h, "leave")
        if handles:
            self._signal()

    def _drop_handle(self, h: Handle, disposition: str) -> None:
        h.release_lock()
        with contextlib.suppress(CCIDError):
            h.card.disconnect(disposition)
        with self.lock:
            h.entry.handles.discard(h)
            self.handles.pop(h.id, None)
            h.conn.handles.pop(h.id, None)

    # --- dispatch --------------------------------------------------------------------

    def _dispatch(self, conn: Connection, req: Request) -> None:
        name = wire.Command(req.command).name
        if self.wire_log:
            log.debug("%s -> %s %s", conn, name, _masked(req))
        handler: Callable[[Connection, Request], bytes | None] = getattr(self, "_do_" + name)
        reply = handler(conn, req)
        if reply is not None:
            conn.send(reply)
            if self.wire_log:
                log.debug("%s <- %s %d bytes", conn, name, len(reply))

    def _do_VERSION(self, conn: Connection, req: Request) -> bytes:
        major, minor, _ = req.fields
        rmajor, rminor, rv = negotiate(int(major), int(minor))
        if rv == wire.SUCCESS:
            conn.parser.minor = rminor
            log.debug("%s speaks protocol %d:%d", conn, major, minor)
        else:
            log.error("%s: protocol %d:%d not served (4:4, 4:5 and 4:6 are); refused",
                      conn, major, minor)
        return wire.VERSION.pack(rmajor, rminor, rv)

    def _do_ESTABLISH_CONTEXT(self, conn: Connection, req: Request) -> bytes:
        scope = req.fields[0]
        with self.lock:
            if len(conn.contexts) >= MAX_CONTEXTS:
                return wire.ESTABLISH.pack(scope, 0, _rv("SCARD_E_NO_MEMORY"))
            ctx = _new_id(self.contexts, unsigned=True)
            self.contexts[ctx] = conn
            conn.contexts.add(ctx)
        return wire.ESTABLISH.pack(scope, ctx, wire.SUCCESS)

    def _do_RELEASE_CONTEXT(self, conn: Connection, req: Request) -> bytes:
        ctx = int(req.fields[0])
        if ctx not in conn.contexts:
            return wire.RELEASE.pack(ctx, _rv("SCARD_E_INVALID_HANDLE"))
        for h in [h for h in conn.handles.values() if h.context == ctx]:
            self._drop_handle(h, "leave")
        with self.lock:
            conn.contexts.discard(ctx)
            self.contexts.pop(ctx, None)
        self._signal()
        return wire.RELEASE.pack(ctx, wire.SUCCESS)

    def _do_LIST_READERS(self, conn: Connection, req: Request) -> bytes:
        raise ProtocolViolation("LIST_READERS is answered by the client itself")

    _do_GET_STATUS_CHANGE = _do_LIST_READERS
    _do_CANCEL_TRANSACTION = _do_LIST_READERS

    def _do_GET_READERS_STATE(self, conn: Connection, req: Request) -> bytes:
        return self.state_array(old_api=True)

    def _do_GET_READERS_STATE_SIZE(self, conn: Connection, req: Request) -> bytes:
        with self.lock:
            return wire.STATE_SIZE.pack(len(self.entries))

    def _do_GET_READERS_STATE_ARRAY(self, conn: Connection, req: Request) -> bytes:
        return self.state_array(old_api=False)

    def _do_GET_READER_EVENTS(self, conn: Connection, req: Request) -> bytes:
        return wire.READER_EVENTS.pack(self.reader_events, wire.SUCCESS)

    def _do_WAIT_READER_STATE_CHANGE(self, conn: Connection, req: Request) -> None:
        with self.lock:
            self.waiters.add(conn)
            if conn.parser.minor is None or conn.parser.minor < 6:
                # up to 4:5 the registration answers with the whole array at once; under
                # the lock, so that no notification can overtake it
                conn.send_now(self.state_array(old_api=True))
        return None

    def _do_STOP_WAITING_READER_STATE_CHANGE(self, conn: Connection, req: Request
                                             ) -> bytes | None:
        with self.lock:
            if conn in self.waiters:
                self.waiters.discard(conn)
                conn.send_now(wire.WAIT_STATE.pack(0, wire.SUCCESS))
        # not waiting any more: the notification already sent was the answer
        return None

    def _do_CANCEL(self, conn: Connection, req: Request) -> bytes:
        ctx = int(req.fields[0]) & 0xFFFFFFFF
        with self.lock:
            target = self.contexts.get(ctx)
            if target is None:
                return wire.CANCEL.pack(req.fields[0], _rv("SCARD_E_INVALID_HANDLE"))
            if target.uid != conn.uid:
                return wire.CANCEL.pack(req.fields[0], _rv("SCARD_E_INVALID_HANDLE"))
            if target in self.waiters:
                self.waiters.discard(target)
                target.send_now(wire.WAIT_STATE.pack(0, _rv("SCARD_E_CANCELLED")))
            busy = [h for h in target.handles.values() if h.context == ctx]
        # A CANCEL comes on a connection of its own, so the target's may be blocked in a
        # card call: end it (SCARD_E_CANCELLED; the card stays usable). libpcsclite sends
        # it only during a GetStatusChange; other client libraries may not.
        for h in busy:
            h.card.cancel()
        return wire.CANCEL.pack(req.fields[0], wire.SUCCESS)

    # --- card handles ------------------------------------------------------------------

    def _find_entry(self, name: str) -> Entry | None:
        with self.lock:
            for e in self.entries:
                if e is not None and e.name == name:
                    return e
        return None

    def _do_CONNECT(self, conn: Connection, req: Request) -> bytes:
        ctx, raw_name, share, prefs, _h, _p, _rvx = req.fields
        ctx = int(ctx)
        share = int(share)
        prefs = int(prefs)
        name = wire.c_string(bytes(raw_name))

        def answer(rv: int, hcard: int = 0, proto: int = 0) -> bytes:
            return wire.CONNECT.pack(ctx, raw_name, share, prefs, hcard, proto, rv)

        if ctx not in conn.contexts:
            return answer(_rv("SCARD_E_INVALID_HANDLE"))
        entry = self._find_entry(name)
        if entry is None:
            return answer(_rv("SCARD_E_UNKNOWN_READER"))
        mode = _MODES.get(share)
        if mode is None:
            return answer(_rv("SCARD_E_INVALID_VALUE"))
        wanted, bad = _wanted(prefs, mode)
        if bad:
            return answer(_rv(bad))
        if len(conn.handles) >= MAX_HANDLES:
            return answer(_rv("SCARD_E_NO_MEMORY"))
        if mode != "direct":
            current = entry.state()[3]
            if entry.handles and current and wanted is not None and \
                    current != (wire.PROTOCOL_T0, wire.PROTOCOL_T1)[wanted]:
                return answer(_rv("SCARD_E_PROTO_MISMATCH"))
        try:
            card = entry.reader.connect(entry.slot, wanted, mode)
        except CCIDError as exc:
            log.debug("%s: connect %s %s: %s", conn, name, mode, exc)
            return answer(_rv_of(exc))
        with self.lock:
            hid = _new_id(self.handles, unsigned=False)
            h = Handle(hid, conn, ctx, entry, card, mode)
            self.handles[hid] = h
            conn.handles[hid] = h
            entry.handles.add(h)
        self._signal()
        log.debug("%s: connected to %s (%s, %s)", conn, name, mode, card.protocol)
        return answer(wire.SUCCESS, hid, _proto(card, mode))

    def _handle(self, conn: Connection, raw: Any) -> Handle | None:
        h = conn.handles.get(int(raw))
        return h  # another connection's handle is as unknown as a made-up one

    def _other_lock(self, h: Handle) -> bool:
        owner = h.entry.lock_owner
        return owner is not None and owner is not h

    def _check(self, h: Handle) -> int:
        """SUCCESS, or the warning pcscd gives a handle whose card changed."""
        if h.entry.gone:
            return _rv("SCARD_E_READER_UNAVAILABLE")
        if self._other_lock(h):
            return _rv("SCARD_E_SHARING_VIOLATION")
        if h.mode == "direct":
            return wire.SUCCESS
        try:
            with h.card.transaction():
                pass
        except (CardRemovedError, CardResetError, CCIDError) as exc:
            return _rv_of(exc)
        return wire.SUCCESS

    def _do_RECONNECT(self, conn: Connection, req: Request) -> bytes:
        hraw, share, prefs, init, _p, _r = req.fields

        def answer(rv: int, proto: int = 0) -> bytes:
            return wire.RECONNECT.pack(hraw, share, prefs, init, proto, rv)

        h = self._handle(conn, hraw)
        if h is None:
            return answer(_rv("SCARD_E_INVALID_HANDLE"))
        mode = _MODES.get(int(share))
        disposition = _DISPOSITIONS.get(int(init))
        if mode is None or disposition is None:
            return answer(_rv("SCARD_E_INVALID_VALUE"))
        wanted, bad = _wanted(int(prefs), mode)
        if bad:
            return answer(_rv(bad))
        if h.entry.gone:
            return answer(_rv("SCARD_E_READER_UNAVAILABLE"))
        if self._other_lock(h):
            return answer(_rv("SCARD_E_SHARING_VIOLATION"))
        try:
            if mode != h.mode:
                self._change_mode(h, mode, wanted)
            if disposition == "leave" or h.mode == "direct":
                h.card.reconnect(wanted)
            else:
                h.card.reset(cold=disposition != "reset", protocol=wanted)
        except CCIDError as exc:
            return answer(_rv_of(exc))
        self._signal()
        return answer(wire.SUCCESS, _proto(h.card, h.mode))

    def _change_mode(self, h: Handle, mode: str, wanted: int | None) -> None:
        old = h.card
        held = h.entry.lock_owner is h
        old.disconnect("leave")
        try:
            h.card = h.entry.reader.connect(h.entry.slot, wanted, mode)
            h.mode = mode
        except CCIDError:
            h.card = h.entry.reader.connect(h.entry.slot, None, h.mode)
            raise
        finally:
            if held:
                self._lock(h)

    def _do_DISCONNECT(self, conn: Connection, req: Request) -> bytes:
        hraw, disp, _ = req.fields
        h = self._handle(conn, hraw)
        if h is None:
            return wire.DISCONNECT.pack(hraw, disp, _rv("SCARD_E_INVALID_HANDLE"))
        disposition = _DISPOSITIONS.get(int(disp))
        if disposition is None:
            return wire.DISCONNECT.pack(hraw, disp, _rv("SCARD_E_INVALID_VALUE"))
        if self._other_lock(h) or h.entry.gone:
            disposition = "leave"  # another handle's transaction is not ours to reset
        self._drop_handle(h, disposition)
        self._signal()
        return wire.DISCONNECT.pack(hraw, disp, wire.SUCCESS)

    def _lock(self, h: Handle) -> None:
        # Only PC/SC clients see the transaction: holding the slot's lock
        # (Card.transaction) for it would also block other clients' SCardConnect, which
        # pcscd lets through. Each APDU is atomic in the library anyway.
        h.entry.lock_owner = h

    def _do_BEGIN_TRANSACTION(self, conn: Connection, req: Request) -> bytes:
        hraw = req.fields[0]
        h = self._handle(conn, hraw)
        if h is None:
            return wire.BEGIN.pack(hraw, _rv("SCARD_E_INVALID_HANDLE"))
        rv = self._check(h)
        if rv != wire.SUCCESS:
            # SHARING_VIOLATION: libpcsclite retries until the owner ends (as with pcscd)
            return wire.BEGIN.pack(hraw, rv)
        with self.lock:
            if self._other_lock(h):
                return wire.BEGIN.pack(hraw, _rv("SCARD_E_SHARING_VIOLATION"))
            h.entry.lock_owner = h
        h.lock_depth += 1
        return wire.BEGIN.pack(hraw, wire.SUCCESS)

    def _do_END_TRANSACTION(self, conn: Connection, req: Request) -> bytes:
        hraw, disp, _ = req.fields
        h = self._handle(conn, hraw)
        if h is None:
            return wire.END.pack(hraw, disp, _rv("SCARD_E_INVALID_HANDLE"))
        disposition = _DISPOSITIONS.get(int(disp))
        if disposition is None:
            return wire.END.pack(hraw, disp, _rv("SCARD_E_INVALID_VALUE"))
        if h.entry.lock_owner is not h:
            return wire.END.pack(hraw, disp, _rv("SCARD_E_NOT_TRANSACTED"))
        rv = wire.SUCCESS
        if disposition != "leave" and h.mode != "direct":
            try:
                h.card.reset(cold=disposition != "reset")
            except CCIDError as exc:
                rv = _rv_of(exc)
        h.lock_depth -= 1
        if h.lock_depth <= 0:
            h.release_lock()
        return wire.END.pack(hraw, disp, rv)

    def _do_STATUS(self, conn: Connection, req: Request) -> bytes:
        hraw = req.fields[0]
        h = self._handle(conn, hraw)
        if h is None:
            return wire.STATUS.pack(hraw, _rv("SCARD_E_INVALID_HANDLE"))
        return wire.STATUS.pack(hraw, self._check(h))

    def _do_TRANSMIT(self, conn: Connection, req: Request) -> bytes:
        (hraw, sproto, slen, _cb, rproto, rlen, recv_len, _rv_in) = req.fields

        def answer(rv: int, length: int = 0, data: bytes = b"") -> bytes:
            return wire.TRANSMIT.pack(hraw, sproto, slen, len(req.data), rproto, rlen,
                                      length, rv) + data

        h = self._handle(conn, hraw)
        if h is None:
            return answer(_rv("SCARD_E_INVALID_HANDLE"))
        if h.entry.gone:
            return answer(_rv("SCARD_E_READER_UNAVAILABLE"))
        if self._other_lock(h):
            return answer(_rv("SCARD_E_SHARING_VIOLATION"))
        active = _proto(h.card, h.mode)
        # (no protocol: the card went away; the transmit below says how)
        if active and int(sproto) in (wire.PROTOCOL_T0, wire.PROTOCOL_T1) and \
                int(sproto) != active:
            return answer(_rv("SCARD_E_PROTO_MISMATCH"))
        try:
            # T=0: 61xx / 6Cxx go to the application as the card gave them (libccid does)
            response = h.card.transmit(req.data, raw=active == wire.PROTOCOL_T0)
        except CCIDError as exc:
            return answer(_rv_of(exc))
        if len(response) > int(recv_len):
            return answer(_rv("SCARD_E_INSUFFICIENT_BUFFER"), len(response))
        return answer(wire.SUCCESS, len(response), response)

    def _do_CONTROL(self, conn: Connection, req: Request) -> bytes:
        hraw, code, _slen, recv_len, _ret, _rvx = req.fields

        def answer(rv: int, length: int = 0, data: bytes = b"") -> bytes:
            return wire.CONTROL.pack(hraw, code, len(req.data), recv_len, length, rv) + data

        h = self._handle(conn, hraw)
        if h is None:
            return answer(_rv("SCARD_E_INVALID_HANDLE"))
        if h.entry.gone:
            return answer(_rv("SCARD_E_READER_UNAVAILABLE"))
        if self._other_lock(h):
            return answer(_rv("SCARD_E_SHARING_VIOLATION"))
        try:
            out = features.control(h.card, int(code), req.data,
                                   self.allow_escape)
        except features.ControlError as exc:
            log.debug("%s: control 0x%08X: %s", conn, code, exc)
            return answer(_rv(exc.code))
        except CCIDError as exc:
            return answer(_rv_of(exc))
        if len(out) > int(recv_len):
            return answer(_rv("SCARD_E_INSUFFICIENT_BUFFER"), len(out))
        return answer(wire.SUCCESS, len(out), out)

    def _do_GET_ATTRIB(self, conn: Connection, req: Request) -> bytes:
        hraw, attr, _buf, length, _r = req.fields

        def answer(rv: int, value: bytes = b"", size: int = 0) -> bytes:
            return wire.GETSET.pack(hraw, attr, value, size, rv)

        h = self._handle(conn, hraw)
        if h is None:
            return answer(_rv("SCARD_E_INVALID_HANDLE"), size=int(length))
        if h.entry.gone:
            return answer(_rv("SCARD_E_READER_UNAVAILABLE"))
        value = _attribute(h, int(attr))
        if value is None:
            return answer(_rv("SCARD_E_UNSUPPORTED_FEATURE"))
        if len(value) > int(length):
            return answer(_rv("SCARD_E_INSUFFICIENT_BUFFER"), size=len(value))
        return answer(wire.SUCCESS, value, len(value))

    def _do_SET_ATTRIB(self, conn: Connection, req: Request) -> bytes:
        hraw, attr, buf, length, _r = req.fields
        h = self._handle(conn, hraw)
        rv = _rv("SCARD_E_INVALID_HANDLE") if h is None else _rv("SCARD_E_NOT_TRANSACTED")
        return wire.GETSET.pack(hraw, attr, buf, length, rv)


# --- helpers ---------------------------------------------------------------------------


def _new_id(taken: dict[int, Any], *, unsigned: bool) -> int:
    """A random handle no one holds (never 0): guessing another client's is hopeless."""
    while True:
        value = secrets.randbits(32 if unsigned else 31)
        if value and value not in taken:
            return value


def _wanted(prefs: int, mode: str) -> tuple[int | None, str | None]:
    """(protocol for Reader.connect, error name) from dwPreferredProtocols."""
    if mode == "direct":
        return None, None
    if prefs & wire.PROTOCOL_ANY_OLD:
        prefs |= wire.PROTOCOL_T0 | wire.PROTOCOL_T1
    both = prefs & (wire.PROTOCOL_T0 | wire.PROTOCOL_T1)
    if both == wire.PROTOCOL_T0 | wire.PROTOCOL_T1:
        return None, None
    if both == wire.PROTOCOL_T0:
        return 0, None
    if both == wire.PROTOCOL_T1:
        return 1, None
    if prefs & wire.PROTOCOL_RAW:
        return None, "SCARD_E_PROTO_MISMATCH"
    return None, "SCARD_E_INVALID_VALUE"


def _proto(card: Any, mode: str) -> int:
    if mode == "direct":
        return wire.PROTOCOL_UNDEFINED
    return {"T=0": wire.PROTOCOL_T0, "T=1": wire.PROTOCOL_T1}.get(card.protocol or "", 0)


def _dword(value: int) -> bytes:
    return struct.pack("=I", value & 0xFFFFFFFF)


def _attribute(h: Handle, attr: int) -> bytes | None:
    reader = h.entry.reader
    info = reader.info
    if attr == ATTR_ATR_STRING:
        atr = h.card.atr
        return None if atr is None else bytes(atr)
    if attr == ATTR_ICC_PRESENCE:
        return bytes((2 if h.entry.present else 0,))
    if attr == ATTR_ICC_INTERFACE_STATUS:
        return bytes((1 if h.entry.present else 0,))
    if attr == ATTR_VENDOR_NAME:
        return None if not info.manufacturer else info.manufacturer.encode() + b"\0"
    if attr == ATTR_VENDOR_IFD_VERSION:
        return _dword(info.bcd_device << 16)
    if attr == ATTR_VENDOR_IFD_SERIAL_NO:
        return None if not info.serial else info.serial.encode()
    if attr == ATTR_MAXINPUT:
        return _dword(reader.descriptor.dwMaxCCIDMessageLength - 10)
    if attr == ATTR_CHANNEL_ID:
        return _dword(0x00200000)  # USB
    if attr == ATTR_CURRENT_PROTOCOL_TYPE:
        return _dword(_proto(h.card, h.mode))
    if attr == ATTR_DEVICE_FRIENDLY_NAME:
        return h.entry.name.encode() + b"\0"
    return None


_PIN_IOCTLS = (features.IOCTL_FEATURE_VERIFY_PIN_DIRECT, features.IOCTL_FEATURE_MODIFY_PIN_DIRECT)


def _masked(req: Request) -> str:
    """A request for the -v log: fields, and data unless it may carry PIN material."""
    if req.command == wire.Command.CONTROL and req.fields[1] in _PIN_IOCTLS:
        return f"{req.fields[:2]} <PIN structure masked>"
    if req.command == wire.Command.TRANSMIT:
        return f"{req.fields[:1]} {len(req.data)} bytes"  # APDUs may hold a PIN
    return repr(req.fields)


def group_ids(names: list[str]) -> tuple[int, ...]:
    out = []
    for name in names:
        try:
            out.append(grp.getgrnam(name).gr_gid if not name.isdigit() else int(name))
        except KeyError:
            raise ServerError(f"no group named {name!r}") from None
    return tuple(out)


@contextlib.contextmanager
def running(path: str, **kw: Any) -> Iterator[Server]:
    server = Server(path, **kw)
    server.start()
    try:
        yield server
    finally:
        server.close()
