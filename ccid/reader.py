"""Reader sessions: list and open readers, power cards, negotiate, exchange APDUs.

The public face of the library::

    import ccid
    with ccid.open_reader() as reader, reader.connect() as card:
        print(card.atr, card.protocol)
        card.transmit(bytes.fromhex("00A4040000"))

Thread safety: every slot has its own re-entrant lock (an APDU, a ``with
card.transaction()`` block, a power cycle hold it); replies are routed to their commands
by bSeq, so several slots of a reader that allows it (bMaxCCIDBusySlots) run at once and
threads never see each other's answers. Each slot has a card generation counter bumped on
removal, insertion, reset and power-off; a ``Card`` handle of an older generation raises
``CardResetError`` / ``CardRemovedError`` before anything is sent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import re
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ccid._args import as_bytes as _as_bytes
from ccid.constants import (
    HEADER_SIZE,
    ChainParameter,
    ClassRequest,
    ExchangeLevel,
    Features,
    ICCStatus,
    LevelParameter,
    MechanicalFunction,
    PINSupport,
    PowerSelect,
    SlotErrorCode,
    Voltage,
)
from ccid.descriptor import CCIDDescriptor, parse_clock_frequencies, parse_data_rates
from ccid.engine import (
    CHAINED_RESPONSE_LIMIT,
    ChainedResponse,
    Discarded,
    Engine,
    FrameAssembler,
    Pending,
    Reply,
)
from ccid.errors import (
    CardError,
    CardMuteError,
    CardRemovedError,
    CardResetError,
    CCIDError,
    DatabaseError,
    NoCardError,
    OperationCancelledError,
    PinCancelledError,
    PinTimeoutError,
    ProtocolError,
    ReaderError,
    ReaderRemovedError,
    ReaderTimeoutError,
    SharingViolationError,
    SlotError,
    TransportError,
    UnsupportedReaderError,
    UsageError,
)
from ccid.framing import CHAIN_EXTENDED, CHAIN_T1, Chain
from ccid.framing import reply_code as _reply_code
from ccid.protocol.atr import ATR, parse_atr
from ccid.protocol.params import (
    DEFAULT_FI_DI,
    PPSError,
    build_pps_request,
    check_pps_response,
    choose_fi_di,
    parameters_from_atr,
    t0_wwt_seconds,
    t1_bwt_seconds,
)
from ccid.protocol.t0 import T0Exchange
from ccid.transport.iccd import transport_class as _transport_class
from ccid.transport.usb import UsbInterface, UsbTransport, find_interfaces

__all__ = [
    "Card",
    "PinFormat",
    "Reader",
    "ReaderInfo",
    "SlotInfo",
    "list_readers",
    "open_reader",
]

log = logging.getLogger(__name__)

try:  # wire trace: optional until its module lands
    from ccid import trace as _trace_mod

    _trace: Any = _trace_mod
except ImportError:  # pragma: no cover
    class _NoTrace:
        enabled = False

    _trace = _NoTrace()

_monotonic = time.monotonic
# Enum members as plain module constants: on Python 3.11 each ``Enum.MEMBER`` access costs
# about 0.2 us, several times per APDU on the hot path.
_SHORT_APDU = ExchangeLevel.SHORT_APDU
_EXTENDED_APDU = ExchangeLevel.EXTENDED_APDU
_CHARACTER = ExchangeLevel.CHARACTER
_CHAIN_COMPLETE = int(ChainParameter.COMPLETE)
_CONTINUE_RESPONSE = int(LevelParameter.CONTINUE_RESPONSE)

Mode = Literal["shared", "exclusive", "direct"]
Disposition = Literal["leave", "reset", "unpower", "eject"]

#: Default overall ceiling of one call (transmit, connect, escape), seconds.
DEFAULT_CEILING = 60.0
#: Shortest host-side wait for one CCID reply: readers add their own latency.
MIN_WAIT = 3.0
#: Wait for replies to commands that do not involve the card (status, parameters).
READER_WAIT = 5.0
#: Longest pause inside one frame before it counts as truncated.
CONTINUATION_WAIT = 0.5
#: Most time given to the abort procedure after a timeout. The abort runs inside the
#: call's own ceiling: waiting for the reply stops ``ABORT_SHARE`` of the call's time (at
#: most ABORT_WAIT) before the ceiling, and the abort uses what is left.
ABORT_WAIT = 1.0
ABORT_SHARE = 0.2
#: What a call may overrun its ceiling by (thread scheduling, the last USB request's own
#: granularity): documented, and checked by the fault-matrix test.
DEADLINE_MARGIN = 0.05
#: Longest single blocking read or lock wait while a call waits: a ``Card.cancel()``, a
#: ``close()`` or the caller's ceiling is noticed within this time.
CANCEL_SLICE = 0.1
#: Most T=1 blocks one exchange may take after the fast path leaves it (a 64 KB chain at
#: IFS 1 needs 65,536): a card that never ends an exchange is stopped here or by the ceiling.
T1_MAX_ROUNDS = 70_000
#: Largest CCID message: the header and an extended APDU (CCID 1.1 dwMaxCCIDMessageLength
#: "261 + 10 .. 65544 + 10"); a larger declaration is capped (and logged).
MAX_MESSAGE_LENGTH = HEADER_SIZE + 65544
#: Smallest declaration the session can work with: a header and a 5-byte command.
MIN_MESSAGE_LENGTH = HEADER_SIZE + 5
#: Longest command APDU: extended, 4 header + 3 Lc + 65535 data + 2 Le (ISO/IEC 7816-4).
MAX_APDU_LENGTH = 65544
#: Short timeout for quirk escapes at open: a reader that never answers them must not hang us.
QUIRK_ESCAPE_TIMEOUT = 1.0
#: How long close() waits for calls in flight and the event thread before it leaves the
#: release of the USB handle to a background thread.
CLOSE_WAIT = 5.0

_NO_SPAN = contextlib.nullcontext()
_WAIT_SHARE = 1.0 - ABORT_SHARE


def _reply_wait(left: float) -> float:
    """The part of ``left`` seconds a reply may take, leaving the abort its share."""
    return left - min(ABORT_WAIT, ABORT_SHARE * left)
_VIDPID = re.compile(r"^([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})$")


# --- PIN blocks for the pinpad (PC_to_RDR_Secure) ---------------------------------------

#: How the pinpad writes the typed digits into the APDU: ``"ascii"`` (one '0'..'9' byte per
#: digit, 8-byte block), ``"bcd"`` (two digits per byte, 8-byte block) or ``"format2"``
#: (ISO 9564 format 2: 0x2L, BCD digits, F padding, 8 bytes).
PinFormat = Literal["ascii", "bcd", "format2"]


class _LeftChain(Exception):
    """A successful reply that the chain driving an exchange does not expect (T=1 error
    recovery, an S-block, a broken response chain): the general code goes on from it."""

    def __init__(self, reply: bytes) -> None:
        super().__init__("reply outside the chain's expected path")
        self.reply = reply


@dataclass(frozen=True, slots=True)
class _PinBlock:
    #: bmFormatString, bmPINBlockString, bmPINLengthFormat (CCID 6.1.11.7).
    format_string: int
    block_string: int
    length_format: int
    #: The block's bytes before the PIN goes in (padding; format 2's control nibble).
    filler: bytes
    #: Most digits the block holds.
    capacity: int


PIN_FORMATS: dict[str, _PinBlock] = {
    # byte units, PIN at byte 0, left justified, ASCII; 8-byte block, no length field
    "ascii": _PinBlock(0x82, 0x08, 0x00, b"\xff" * 8, 8),
    # byte units, PIN at byte 0, left justified, BCD
    "bcd": _PinBlock(0x81, 0x08, 0x00, b"\xff" * 8, 16),
    # byte units, PIN at byte 1, BCD; 4-bit length at bit 4 of the block, 7 bytes after it
    "format2": _PinBlock(0x89, 0x47, 0x04, b"\x20" + b"\xff" * 7, 14),
}
#: PIN sizes used when neither the caller nor the reader's firmware says (ISO 9564: 4..12).
DEFAULT_PIN_DIGITS = (4, 12)
#: Message indexes of the usual pinpad prompts: enter PIN, new PIN, confirm new PIN.
_MSG_ENTER, _MSG_NEW, _MSG_CONFIRM = 0, 1, 2


# --- fork safety -----------------------------------------------------------------------

_open_readers: weakref.WeakSet[Reader] = weakref.WeakSet()
#: Readers open in this process, by (id of their pyusb backend, USB path): two backends
#: (two virtual buses) may both have a ``1-1:1.0``; the libusb default backend is one
#: object, so a real reader opened twice still conflicts.
_registry: dict[tuple[int, str], weakref.ref[Reader]] = {}
_registry_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A parent thread may have held the lock at fork(): the child starts with a free one
    # (it is the only thread there, nothing else can hold it now).
    global _registry_lock
    _registry_lock = threading.Lock()
    # The child shares the parent's USB file descriptors: never touch them from here.
    for reader in list(_open_readers):
        reader._mark_inherited()
        _make_inert(reader)
    _registry.clear()


#: pyusb objects inherited from the parent, kept alive for the child's whole life: their
#: finalizers are detached, and no collection may reach them either.
_inherited_usb: list[Any] = []


def _make_inert(reader: Reader) -> None:
    """Detach pyusb's own finalizers from the parent's device and backend: run in a fork
    child (at exit, on collection) they would release the interface and close the handle
    the child shares with its parent (Linux usbfs: the parent's claim goes with it)."""
    device = reader.info._interface.device
    transport = reader._transport
    objects = [device, getattr(transport, "_dev", None), getattr(device, "backend", None),
               getattr(getattr(device, "_ctx", None), "backend", None)]
    for obj in objects:
        if obj is None or any(obj is kept for kept in _inherited_usb):
            continue
        finalizer = getattr(obj, "_finalizer", None)
        if finalizer is not None:
            with contextlib.suppress(Exception):
                finalizer.detach()
        with contextlib.suppress(Exception):
            obj._finalize_called = True  # __del__ then does nothing either
        _inherited_usb.append(obj)


#: With the at-fork hook every inherited reader is marked at once; without it (no
#: fork() on this platform) comparing process ids is the fallback.
_AT_FORK = hasattr(os, "register_at_fork")
if _AT_FORK:
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- public data -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReaderInfo:
    """A CCID interface found on the bus (what ``list_readers`` returns)."""

    name: str
    vid: int
    pid: int
    bcd_device: int
    serial: str | None
    usb_path: str
    interface: int
    slots: int
    manufacturer: str | None
    product: str | None
    exchange_level: ExchangeLevel
    has_interrupt: bool
    slot_names: tuple[str, ...]
    _interface: UsbInterface = field(compare=False, repr=False)

    @property
    def path(self) -> str:
        """Alias of ``usb_path``."""
        return self.usb_path

    @property
    def vid_pid(self) -> str:
        """``VVVV:PPPP`` in upper-case hex."""
        return f"{self.vid:04X}:{self.pid:04X}"

    @property
    def descriptor(self) -> CCIDDescriptor:
        """The CCID class descriptor as the reader declares it (before quirks)."""
        return self._interface.descriptor


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """What the reader knows about one slot (no I/O; see ``Reader.slot_status``)."""

    index: int
    name: str
    card_present: bool | None
    powered: bool
    atr: bytes | None
    protocol: str | None
    generation: int


def _infos(backend: Any) -> list[ReaderInfo]:
    if backend is not None and not callable(getattr(backend, "enumerate_devices", None)):
        raise UsageError(f"backend must be a pyusb backend (usb.backend.IBackend, e.g. "
                         f"ccid.testing.VirtualBackend), not {type(backend).__name__}")
    out: list[ReaderInfo] = []
    for index, intf in enumerate(find_interfaces(backend)):
        base = intf.base_name
        count = intf.descriptor.slot_count
        names = tuple(f"{base} {index:02d} {s:02d}" for s in range(count))
        out.append(ReaderInfo(
            name=names[0], vid=intf.vid, pid=intf.pid, bcd_device=intf.bcd_device,
            serial=intf.serial, usb_path=intf.usb_path, interface=intf.interface,
            slots=count, manufacturer=intf.manufacturer, product=intf.product,
            exchange_level=intf.descriptor.exchange_level,
            has_interrupt=intf.interrupt_in is not None, slot_names=names, _interface=intf,
        ))
    return out


def list_readers(backend: Any = None) -> list[ReaderInfo]:
    """Every CCID reader interface on the bus (no interface is claimed)."""
    return _infos(backend)


def _select(infos: list[ReaderInfo], selector: Any) -> ReaderInfo:
    if isinstance(selector, ReaderInfo):
        for info in infos:
            if info.usb_path == selector.usb_path and info.interface == selector.interface:
                return info
        raise TransportError(f"reader {selector.name!r} is no longer connected",
                             pcsc_code="SCARD_E_UNKNOWN_READER")
    if not infos:
        raise TransportError(
            "no CCID reader found (plug one in, check permissions with `ccid list`, "
            "or try a virtual reader from ccid.testing)",
            pcsc_code="SCARD_E_NO_READERS_AVAILABLE",
        )
    if selector is None:
        return infos[0]
    if isinstance(selector, bool) or not isinstance(selector, int | str):
        raise UsageError(f"reader selector must be an index, a string or a ReaderInfo, "
                         f"not {type(selector).__name__}")
    if isinstance(selector, int):
        if 0 <= selector < len(infos):
            return infos[selector]
        raise TransportError(f"no reader with index {selector} ({len(infos)} connected)",
                             pcsc_code="SCARD_E_UNKNOWN_READER")
    try:
        # the one VID:PID parser (ccid.database.parse_vid_pid): "08E6:3437", "0x08e6:0x3437"
        from ccid.database import parse_vid_pid

        vid, pid = parse_vid_pid(selector)
    except UsageError:
        pass  # not a VID:PID: a serial, path or name
    else:
        for info in infos:
            if info.vid == vid and info.pid == pid:
                return info
    for info in infos:
        if selector in (info.serial, info.usb_path, info.name, *info.slot_names):
            return info
    lowered = selector.lower()
    for info in infos:
        if lowered in info.name.lower():
            return info
    names = "; ".join(i.name for i in infos)
    raise TransportError(f"no reader matches {selector!r} (connected: {names})",
                         pcsc_code="SCARD_E_UNKNOWN_READER")


def open_reader(selector: Any = None, backend: Any = None, **options: Any) -> Reader:
    """Open a reader by index, name substring, ``"VID:PID"``, serial, USB path or ReaderInfo.

    Options: ``timeout`` (overall ceiling of one call, seconds, default 60),
    ``poll_interval`` (card polling period without interrupt endpoint, default 0.5 s),
    ``events`` (start the slot monitor, default True), ``allow_bad_firmware``,
    ``check_tck`` (refuse ATRs with a bad TCK, default True), ``auto_get_response``
    (T=0: answer 61xx/6Cxx automatically, default True), ``ifsd`` (T=1, default the
    reader's maximum up to 254), ``quirks`` (apply the database's quirks, default True),
    ``open_timeout`` (wait for each reply while opening, default 5 s; quirks of readers
    known to be slow at plug-in multiply it, for the open only).
    """
    info = _select(_infos(backend), selector)
    return Reader._open(info, options)


# --- quirks (the database lands with its own issue) --------------------------------------


def _quirks_for(vid: int, pid: int, bcd_device: int, interface: int,
                atr: bytes | None = None, interface_protocol: int | None = None) -> list[Any]:
    try:
        from ccid import database
    except ImportError:
        return []
    finder: Callable[..., Any] | None = getattr(database, "quirks_for", None)
    if finder is None:
        return []
    try:
        return list(finder(vid, pid, bcd_device=bcd_device, interface=interface,
                           interface_protocol=interface_protocol, atr=atr))
    except DatabaseError as exc:
        # A broken database must not make every reader unusable: open without quirks.
        log.warning("reader database unavailable, no quirks applied: %s", exc)
        return []


def _interface_protocol(info: ReaderInfo) -> int | None:
    """bInterfaceProtocol of the reader's interface (0 CCID, 1 ICCD-A, 2 ICCD-B), read from
    the cached USB descriptors; None when the device does not say."""
    intf = info._interface
    try:
        for cfg in intf.device:
            if getattr(cfg, "bConfigurationValue", intf.configuration) != intf.configuration:
                continue
            for alt in cfg:
                if alt.bInterfaceNumber == intf.interface and alt.bAlternateSetting == 0:
                    return int(alt.bInterfaceProtocol)
    except (OSError, TypeError, AttributeError, ValueError):
        # usb.core.USBError is an OSError: no descriptor, no interface-protocol quirks.
        return None
    return None


class _QuirkContext:
    """What quirks may use of a reader being opened (``ccid.quirks.QuirkContext``)."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self.reader_name = reader.name
        self.vid = reader.info.vid
        self.pid = reader.info.pid
        self.bcd_device = reader.info.bcd_device
        self.interface = reader.info.interface
        self.state: dict[str, object] = reader.quirk_state
        self.warnings: list[str] = reader.warnings
        #: An escape went unanswered: the reader may be wedged, ask nothing more.
        self.unanswered = False

    def escape(self, data: bytes, timeout: float) -> bytes:
        if self.unanswered:
            raise ReaderTimeoutError("the reader stopped answering escapes",
                                     reader=self.reader_name)
        try:
            return self._reader.escape(data, 0, timeout=min(timeout, QUIRK_ESCAPE_TIMEOUT))
        except ReaderTimeoutError:
            self.unanswered = True
            raise

    def warn(self, message: str) -> None:
        self._reader._warn(message)


# --- slots -----------------------------------------------------------------------------


class _Slot:
    """Per-slot state. ``lock`` serialises card I/O; ``state_lock`` guards the fields."""

    __slots__ = (
        "apdu_chain", "atr", "exclusive", "fi_di", "generation",
        "handles", "index", "lock", "name", "owner", "owner_thread", "powered", "presence",
        "present", "protocol", "state_lock", "t1", "t1_chain", "wait",
    )

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.lock = threading.RLock()
        self.state_lock = threading.Lock()
        self.generation = 0
        self.presence = 0  # bumped on insertion and removal only
        self.present: bool | None = None
        self.powered = False
        self.atr: ATR | None = None
        self.protocol: int | None = None
        self.fi_di: int | None = None
        self.t1: Any = None
        # framing.Chain objects, made on first use and kept (their buffers with them): the
        # T=1 one for the card's T1Protocol, the extended-APDU one for the reader
        self.t1_chain: Any = None
        self.apdu_chain: Any = None
        self.wait = MIN_WAIT
        self.handles: weakref.WeakSet[Card] = weakref.WeakSet()
        self.exclusive: Card | None = None
        #: The handle holding a ``transaction()`` and its thread (None: no transaction).
        self.owner: Card | None = None
        self.owner_thread = 0

    def forget_card(self) -> None:
        self.powered = False
        self.atr = None
        self.protocol = None
        self.fi_di = None
        self.t1 = None
        self.t1_chain = None
        self.wait = MIN_WAIT

    def card_gone(self) -> None:
        """The card left or changed, seen from another thread (``state_lock`` held).

        An exchange holding ``lock`` keeps the protocol state it is using (T=1 sequence
        numbers, protocol, waits): tearing it down under it would crash it. The slot is
        marked unpowered instead; the generation (bumped by the caller) makes every handle
        refuse, and the next power-on starts afresh.
        """
        if self.lock.acquire(blocking=False):
            try:
                self.forget_card()
            finally:
                self.lock.release()
        else:
            self.powered = False


# --- the reader ------------------------------------------------------------------------


class Reader:
    """An open CCID reader interface. Use :func:`open_reader`; close it (or use ``with``)."""

    # The exchange level of ``descriptor`` (a computed property), cached per descriptor
    # object for the per-APDU path; a quirk that replaces the descriptor is seen at once.
    _level_of: CCIDDescriptor | None = None
    _level: ExchangeLevel = ExchangeLevel.TPDU

    def __init__(self, info: ReaderInfo, options: dict[str, Any]) -> None:
        self.info = info
        self.name = info.name
        unknown = set(options) - _OPTIONS
        if unknown:
            raise UsageError(f"unknown open_reader option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(_OPTIONS))}", reader=self.name)
        name = self.name
        self.timeout = _as_seconds(options.get("timeout", DEFAULT_CEILING), "timeout", name)
        self.poll_interval = _as_seconds(options.get("poll_interval", 0.5), "poll_interval",
                                         name)
        self.check_tck = _as_flag(options.get("check_tck", True), "check_tck", name)
        self.auto_get_response = _as_flag(options.get("auto_get_response", True),
                                          "auto_get_response", name)
        ifsd = options.get("ifsd")
        if ifsd is not None and (isinstance(ifsd, bool) or not isinstance(ifsd, int)
                                 or not 1 <= ifsd <= 254):
            raise UsageError(f"ifsd must be None or an integer 1..254, not {ifsd!r}",
                             reader=name)
        self._ifsd_option: int | None = ifsd
        self._allow_bad_firmware = _as_flag(options.get("allow_bad_firmware", False),
                                            "allow_bad_firmware", name)
        self._use_quirks = _as_flag(options.get("quirks", True), "quirks", name)
        self._want_events = _as_flag(options.get("events", True), "events", name)
        self._open_timeout = _as_seconds(options.get("open_timeout", READER_WAIT),
                                         "open_timeout", name)
        #: bInterfaceProtocol of the interface (quirks may depend on it), once open.
        self.interface_protocol: int | None = None
        #: Quirk ids that turned the declared pinpad off (bPINSupport), for error messages.
        self._pinpad_quirks: list[str] = []
        #: Per-slot data rates (GET_DATA_RATES after each slot's quirks); slot 0's are
        #: ``data_rates``.
        self.slot_data_rates: tuple[tuple[int, ...], ...] = ()
        self.descriptor: CCIDDescriptor = info.descriptor
        self.data_rates: tuple[int, ...] = ()
        self.clock_frequencies: tuple[int, ...] = ()
        self.quirks: list[Any] = []
        self.quirk_state: dict[str, object] = {}
        self.warnings: list[str] = []
        self._pid = os.getpid()
        self._closed = False
        self._inherited = False
        self._removed = False
        self._transport: UsbTransport | None = None
        self._monitor: Any = None
        self._registry_key: tuple[int, str] | None = None
        from ccid.events import EventQueue

        self._event_queue = EventQueue()
        self._slots = [_Slot(i, n) for i, n in enumerate(info.slot_names)]
        self._engine = Engine(max_message_length=0, reader_name=self.name,
                              slot_count=len(self._slots))
        # Reply routing: one thread reads bulk-IN at a time and files other threads'
        # replies by bSeq; at most bMaxCCIDBusySlots commands are outstanding.
        self._rx = threading.Condition(threading.Lock())
        self._rx_busy = False
        #: Replies filed for other threads, by (bSeq, bSlot).
        self._mailbox: dict[tuple[int, int], bytes] = {}
        #: Commands in flight on a several-busy-slots reader: bSeq -> bSlot. The engine
        #: skips these bSeq values when the counter wraps.
        self._outstanding: dict[int, int] = {}
        #: The Card whose call runs in this thread (Card.cancel() looks at it).
        self._tls = threading.local()
        self._engine.busy_seqs = self._outstanding
        self._write_lock = threading.Lock()
        # One outstanding command at a time (the common case): a plain lock, no routing.
        self._serial = True
        self._busy: Any = threading.Lock()
        #: Permits of ``_busy``: close() takes them all to know no transfer is in flight.
        self._busy_width = 1
        self._close_lock = threading.Lock()
        self._closing = False
        self._assembler = FrameAssembler()
        self._open_wait = READER_WAIT

    # --- opening ----------------------------------------------------------------------

    @classmethod
    def _open(cls, info: ReaderInfo, options: dict[str, Any]) -> Reader:
        reader = cls(info, options)
        try:
            reader._do_open()
        except BaseException:
            reader.close()
            raise
        return reader

    def _do_open(self) -> None:
        device = self.info._interface.device
        backend = getattr(device, "backend", None) if device is not None else None
        key = (id(backend), self.info.usb_path)
        with _registry_lock:
            held = _registry.get(key)
            if held is not None and held() is not None and not held()._closed:  # type: ignore[union-attr]
                raise SharingViolationError(
                    "the reader is already open in this process; close it first or share "
                    "the Reader object", reader=self.name)
            _registry[key] = weakref.ref(self)
            self._registry_key = key
        _open_readers.add(self)
        self.interface_protocol = _interface_protocol(self.info)
        if self._use_quirks:
            self.quirks = _quirks_for(self.info.vid, self.info.pid, self.info.bcd_device,
                                      self.info.interface,
                                      interface_protocol=self.interface_protocol)
        self._check_firmware()
        desc = self.descriptor
        for quirk in self._hooks("adjust_descriptor"):
            before = desc.bPINSupport
            desc = quirk.adjust_descriptor(desc)
            if before and not desc.bPINSupport:
                self._pinpad_quirks.append(str(getattr(quirk, "id", quirk)))
        self.descriptor = desc
        self._engine.max_message_length = self._message_limit(desc)
        self._assembler = FrameAssembler(self._engine.max_message_length)
        busy = max(1, min(desc.bMaxCCIDBusySlots or 1, len(self._slots)))
        self._serial = busy == 1
        self._busy = threading.Lock() if busy == 1 else threading.BoundedSemaphore(busy)
        self._busy_width = busy
        wait = self._open_timeout
        for quirk in self._hooks("open_timeout"):
            wait = float(quirk.open_timeout(wait))
        self._open_wait = wait
        if _trace is not None and _trace.enabled:
            _trace.describe(self.name, {
                "vid": self.info.vid, "pid": self.info.pid, "bcdDevice": self.info.bcd_device,
                "interface": self.info.interface,
                "ccid_descriptor": self.info._interface.raw_descriptor.hex(),
                "interrupt": self.info.has_interrupt,
                "manufacturer": self.info.manufacturer, "product": self.info.product,
                "serial": self.info.serial,
            })
        transport = _transport_class(self.info._interface)(self.info._interface, self.name)
        self._transport = transport
        transport.open()
        transport.read_size = max(transport.read_size,
                                  (self._engine.max_message_length or 0) + HEADER_SIZE)
        self._read_rates()
        self._drain_interrupt()
        self._resync(min(wait, self.timeout))
        self._after_open_quirks()
        self._open_wait = READER_WAIT
        self._report_present()
        if self._want_events:
            self._start_monitor()
        log.debug("%s: open at %s, %s level, %d slot(s), rates %d, quirks %s", self.name,
                  self.info.usb_path, desc.exchange_level.name, len(self._slots),
                  len(self.data_rates), [q.id for q in self.quirks] or "none")

    def _message_limit(self, desc: CCIDDescriptor) -> int:
        """dwMaxCCIDMessageLength as the session uses it: capped at what CCID allows (an
        extended APDU and its header); a reader that cannot carry a command is refused."""
        declared = desc.dwMaxCCIDMessageLength or 0
        if 0 < declared < MIN_MESSAGE_LENGTH:
            raise UnsupportedReaderError(
                f"the reader declares dwMaxCCIDMessageLength {declared}: too small to carry "
                f"any command (at least {MIN_MESSAGE_LENGTH} bytes are needed; CCID requires "
                "271)", reader=self.name)
        if declared > MAX_MESSAGE_LENGTH:
            log.warning("%s: dwMaxCCIDMessageLength %d is more than CCID allows; using %d",
                        self.name, declared, MAX_MESSAGE_LENGTH)
            return MAX_MESSAGE_LENGTH
        return declared

    def _check_firmware(self) -> None:
        for quirk in self._hooks("check_firmware"):
            try:
                reason = quirk.check_firmware(self.info.bcd_device)
            except UnsupportedReaderError as exc:
                reason = exc.message
            if not reason:
                continue
            if self._allow_bad_firmware:
                self._warn(f"{reason} (opened anyway: allow_bad_firmware=True)")
                continue
            raise UnsupportedReaderError(
                f"{reason}; pass allow_bad_firmware=True to open it anyway",
                reader=self.name)

    def _read_rates(self) -> None:
        desc = self.descriptor
        transport = self._live_transport()
        if desc.bNumDataRatesSupported > 0:
            try:
                payload = transport.class_request_in(
                    ClassRequest.GET_DATA_RATES, 4 * desc.bNumDataRatesSupported,
                    self._open_wait)
                self.data_rates = parse_data_rates(payload, desc.bNumDataRatesSupported)
            except (ReaderError, TransportError) as exc:
                if isinstance(exc, ReaderRemovedError | SharingViolationError):
                    raise
                log.info("%s: GET_DATA_RATES failed (%s); using dwMaxDataRate", self.name, exc)
        if desc.bNumClockSupported > 0:
            try:
                payload = transport.class_request_in(
                    ClassRequest.GET_CLOCK_FREQUENCIES, 4 * desc.bNumClockSupported,
                    self._open_wait)
                self.clock_frequencies = parse_clock_frequencies(payload,
                                                                 desc.bNumClockSupported)
            except (ReaderError, TransportError) as exc:
                if isinstance(exc, ReaderRemovedError | SharingViolationError):
                    raise
                log.info("%s: GET_CLOCK_FREQUENCIES failed (%s)", self.name, exc)
        # Some readers run other rates on their secondary slots: one list per slot.
        per_slot = []
        for index in range(len(self._slots)):
            rates = self.data_rates
            for quirk in self._hooks("adjust_data_rates"):
                rates = tuple(quirk.adjust_data_rates(rates, slot=index))
            per_slot.append(rates)
        self.slot_data_rates = tuple(per_slot)
        self.data_rates = per_slot[0] if per_slot else self.data_rates

    def report(self) -> Any:
        """What ``ccid parse`` prints: the descriptor as declared (before quirks) and the
        GET_DATA_RATES / GET_CLOCK_FREQUENCIES answers, asked for even when the descriptor
        declares 0 entries (as libccid's parse tool does), with any request error."""
        from ccid.report import InterfaceReport

        self._check_usable()
        intf = self.info._interface
        transport = self._live_transport()
        desc = intf.descriptor

        def ask(request: ClassRequest, declared: int) -> tuple[tuple[int, ...] | None, str | None]:
            parse = parse_data_rates if request == ClassRequest.GET_DATA_RATES else (
                parse_clock_frequencies)
            try:
                payload = transport.class_request_in(request, 4 * (declared or 256),
                                                     self._open_wait)
            except (ReaderError, TransportError) as exc:
                if isinstance(exc, ReaderRemovedError):
                    raise
                return None, str(exc)
            return parse(payload, declared), None

        rates, rates_error = ask(ClassRequest.GET_DATA_RATES, desc.bNumDataRatesSupported)
        clocks, clock_error = ask(ClassRequest.GET_CLOCK_FREQUENCIES, desc.bNumClockSupported)
        return InterfaceReport(
            vid=intf.vid, pid=intf.pid, descriptor=desc, raw=intf.raw_descriptor,
            manufacturer=intf.manufacturer, product=intf.product, serial=intf.serial,
            interface_string=intf.interface_name, bcd_device=intf.bcd_device,
            interface_number=intf.interface, interface_class=intf.interface_class,
            num_endpoints=2 + (intf.interrupt_in is not None),
            data_rates=rates, clock_frequencies=clocks,
            data_rates_error=rates_error, clock_error=clock_error,
            notes=list(self.warnings),
        )

    def _drain_interrupt(self) -> None:
        transport = self._live_transport()
        if not transport.has_interrupt:
            return
        for _ in range(8):  # a stuck endpoint must not keep us here
            if transport.read_interrupt(0, 5) is None:
                return

    def _resync(self, wait: float) -> None:
        """Forget any stale replies and learn each slot's state."""
        self._assembler.reset()
        for slot in self._slots:
            reply = self._command(self._engine.get_slot_status(slot.index), wait=wait,
                                  ceiling=min(self.timeout, wait * 2), check=False)
            self._apply_status(slot, reply.icc_status)

    def _report_present(self) -> None:
        """Cards present at open are the first events (as pcsc_scan and pyscard's
        CardMonitor report them)."""
        from ccid import events as ev

        for s in self._slots:
            with s.state_lock:
                if s.present:
                    atr = bytes(s.atr) if s.powered and s.atr is not None else None
                    self._event_queue.put(ev.CardInserted(self.name, s.index, atr))

    def _apply_status(self, slot: _Slot, status: ICCStatus) -> None:
        with slot.state_lock:
            present = status != ICCStatus.ABSENT
            if slot.present is None:
                slot.present = present
                slot.powered = False  # a card left active by someone else: we reset it
                return
        if present != slot.present:
            self._notify_slot(slot.index, present, True)

    def _after_open_quirks(self) -> None:
        hooks = self._hooks("after_open")
        if not hooks:
            return
        ctx = _QuirkContext(self)
        for quirk in hooks:
            try:
                quirk.after_open(ctx)
            except (ReaderRemovedError, SharingViolationError):
                raise
            except CCIDError as exc:
                self._warn(f"{quirk!r} could not complete after open: {exc}")
        if ctx.unanswered:
            self._revive()

    def _revive(self) -> None:
        """After an unanswered escape: check the reader still answers, else reset it.

        The Gemalto CT700 hangs after an escape it does not know (every later bulk-OUT
        write times out) until a USB reset: do that here so the open leaves a working
        reader and no half-done command behind.
        """
        try:
            self._resync(QUIRK_ESCAPE_TIMEOUT / 2)
            return
        except (ReaderTimeoutError, ProtocolError, SlotError):
            pass
        self._warn("the reader stopped answering after an unanswered escape; resetting it")
        self._live_transport().reset_device()
        for slot in self._slots:
            with slot.state_lock:
                slot.present = None
                slot.forget_card()
        self._resync(self._open_wait)

    def _start_monitor(self) -> None:
        try:
            from ccid.events import SlotMonitor
        except ImportError:  # pragma: no cover - events land with their own issue
            return
        self._monitor = SlotMonitor(self)
        self._monitor.start()

    def _hooks(self, name: str, extra: list[Any] | None = None) -> list[Any]:
        quirks = self.quirks if not extra else [*self.quirks, *extra]
        return [q for q in quirks if hasattr(q, name)]

    def _card_quirks(self, atr: bytes) -> list[Any]:
        if not self._use_quirks:
            return []
        return _quirks_for(self.info.vid, self.info.pid, self.info.bcd_device,
                           self.info.interface, atr=bytes(atr),
                           interface_protocol=self.interface_protocol)

    def _warn(self, message: str) -> None:
        """A fact about the device (a quirk applied, a failed negotiation): logged once and
        kept in ``warnings``. The ``warnings`` module is for API misuse only."""
        self.warnings.append(message)
        text = message if message.startswith(self.name) else f"{self.name}: {message}"
        log.warning("%s", text)

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Reader {self.name!r} {state}>"

    def __del__(self) -> None:
        # A reader its user lost track of is closed here (the event thread holds it only
        # weakly), with a ResourceWarning as an unclosed file gives. A fork child never
        # touches the parent's handle.
        try:
            if not self._closed and not self._inherited and self._pid == os.getpid():
                warnings.warn(f"unclosed reader {self.name!r}; close it or use 'with'",
                              ResourceWarning, source=self, stacklevel=2)
                self.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the monitor, release the interface and every resource. Safe to repeat.

        Calls made after close() raise UsageError. Calls in flight in other threads end at
        their next transfer; the USB handle is released only once no transfer is running
        (neither theirs nor the event thread's). close() waits up to ``CLOSE_WAIT``
        seconds for that, then leaves the release to a background thread that waits for
        the last transfer (bounded by that call's own time ceiling).
        """
        if self._inherited or self._pid != os.getpid():
            self._closed = True
            return
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        self._closed = True  # new calls refuse from here on; calls in flight stop soon
        deadline = _monotonic() + CLOSE_WAIT
        monitor, self._monitor = self._monitor, None
        monitor_done = True
        if monitor is not None:
            try:
                monitor_done = monitor.stop(CLOSE_WAIT) is not False
            except Exception:  # a monitor that cannot stop must not keep the handle open
                log.exception("%s: stopping the slot monitor failed", self.name)
        with self._rx:
            self._rx.notify_all()
        held = 0
        busy = self._busy
        while held < self._busy_width:
            if not busy.acquire(timeout=max(0.0, deadline - _monotonic())):
                break
            held += 1
        if monitor_done and held == self._busy_width:
            self._finish_close(held, None)
            return
        log.info("%s: close() leaves the release of the USB handle to a background thread "
                 "until the transfer in flight ends", self.name)
        threading.Thread(target=self._finish_close, args=(held, monitor), daemon=True,
                         name=f"ccid-close {self.name}").start()

    def _finish_close(self, held: int, monitor: Any) -> None:
        """Release the USB handle once no transfer runs; ``held``: busy permits taken."""
        busy = self._busy
        try:
            if monitor is not None:
                monitor.join()
            while held < self._busy_width:
                busy.acquire()
                held += 1
            transport, self._transport = self._transport, None
            if transport is not None:
                transport.close()
        finally:
            for _ in range(held):
                busy.release()
            with _registry_lock:
                if self._registry_key is not None:
                    ref = _registry.get(self._registry_key)
                    if ref is not None and ref() in (self, None):
                        del _registry[self._registry_key]
                    self._registry_key = None
            _open_readers.discard(self)
            with self._rx:
                self._rx.notify_all()

    def _mark_inherited(self) -> None:
        self._inherited = True
        if self._transport is not None:
            self._transport.mark_inherited()
        monitor = self._monitor
        self._monitor = None
        if monitor is not None:
            # The monitor thread does not exist in the child; drop it without joining.
            with contextlib.suppress(Exception):
                monitor._stop.set()

    def _foreign(self) -> bool:
        """True in a fork child (this handle belongs to the parent process)."""
        return self._inherited or (not _AT_FORK and self._pid != os.getpid())

    def _check_usable(self) -> None:
        if self._foreign():
            raise UsageError(
                f"this reader was opened in process {self._pid} before fork(); open the "
                "reader again in the child (after the parent has closed it)",
                reader=self.name)
        if self._closed:
            raise UsageError("the reader is closed", reader=self.name)
        if self._removed:
            raise ReaderRemovedError("the reader was unplugged", reader=self.name)

    def _live_transport(self) -> UsbTransport:
        self._check_usable()
        transport = self._transport
        if transport is None:
            raise UsageError("the reader is closed", reader=self.name)
        return transport

    # --- public properties ------------------------------------------------------------

    @property
    def has_interrupt(self) -> bool:
        """Card events come from the interrupt endpoint (else they are polled)."""
        return self.info.has_interrupt

    @property
    def slots(self) -> tuple[SlotInfo, ...]:
        """What is known of each slot (no I/O)."""
        out = []
        for s in self._slots:
            with s.state_lock:
                # A card that left while an exchange held its slot keeps its state until
                # that exchange ends (see _Slot.card_gone): not shown as current.
                atr = s.atr if s.powered else None
                protocol = s.protocol if s.powered else None
                out.append(SlotInfo(
                    s.index, s.name, s.present, s.powered,
                    None if atr is None else bytes(atr),
                    None if protocol is None else f"T={protocol}", s.generation))
        return tuple(out)

    @property
    def exchange_level(self) -> ExchangeLevel:
        return self.descriptor.exchange_level

    def slot_states(self) -> list[bool]:
        """Card present in each slot, as last known."""
        return [bool(s.present) for s in self._slots]

    def slot_status(self, slot: int = 0) -> ICCStatus:
        """Ask the reader (GetSlotStatus) whether a card is there and powered."""
        s = self._slot(slot)
        with s.lock:
            reply = self._command(self._engine.get_slot_status(slot), wait=READER_WAIT,
                                  ceiling=self.timeout, check=False)
        self._apply_status(s, reply.icc_status)
        return reply.icc_status

    def _slot(self, slot: int) -> _Slot:
        self._check_usable()
        if isinstance(slot, bool) or not isinstance(slot, int) or \
                not 0 <= slot < len(self._slots):
            raise UsageError(f"slot {slot!r} does not exist (the reader has "
                             f"{len(self._slots)})", reader=self.name)
        return self._slots[slot]

    # --- events (the monitor calls these) ---------------------------------------------

    def _notify_slot(self, slot: int, present: bool, changed: bool) -> None:
        """The monitor saw slot ``slot``: update state, bump generations, queue events."""
        from ccid import events as ev

        if not 0 <= slot < len(self._slots):
            return
        s = self._slots[slot]
        queued: list[Any] = []
        with s.state_lock:
            was = s.present
            removed = inserted = False
            if was is None:
                inserted = present
            elif was and not present:
                removed = True
            elif not was and present:
                inserted = True
            elif was and present and changed and (self.has_interrupt or s.powered):
                # Interrupt: the card was swapped. Polling: a powered card went inactive
                # without us powering it off.
                removed = inserted = True
            if removed:
                s.presence += 1
                s.generation += 1
                s.card_gone()
                queued.append(ev.CardRemoved(self.name, slot))
            if inserted:
                s.presence += 1
                s.generation += 1
                s.card_gone()
                queued.append(ev.CardInserted(self.name, slot, None))
            s.present = present
        for item in queued:
            self._event_queue.put(item)

    def _card_changed(self, s: _Slot, generation: int, presence: int,
                      exc: CCIDError) -> CardError | None:
        """After an exchange failed the way a removed or swapped card makes it fail: the
        CardRemovedError / CardResetError to raise instead, else None (slot lock held).

        The slot's counters tell when the event thread saw the change; otherwise the
        reader is asked (GetSlotStatus): a card absent or no longer powered was removed
        or swapped (or reset) under the exchange.
        """
        why = f" ({exc.message})"
        if s.presence == presence and s.generation == generation and not (
                self._closed or self._removed):
            try:
                reply = self._command(self._engine.get_slot_status(s.index), wait=1.0,
                                      ceiling=2.0, check=False)
            except CCIDError:
                return None
            status = reply.icc_status
            if status == ICCStatus.ABSENT:
                self._notify_slot(s.index, False, True)
            elif status == ICCStatus.INACTIVE:
                with s.state_lock:
                    s.generation += 1
                    s.forget_card()
                return CardResetError(f"the card is no longer powered{why}; call reconnect()",
                                      reader=self.name, slot=s.index)
        with s.state_lock:
            if not s.powered:  # torn down only now that the exchange is over (card_gone)
                s.forget_card()
        if s.presence != presence:
            return CardRemovedError(f"the card was removed during the exchange{why}; "
                                    "connect again", reader=self.name, slot=s.index)
        if s.generation != generation:
            return CardResetError(f"the card was reset or powered off during the exchange"
                                  f"{why}; call reconnect()", reader=self.name, slot=s.index)
        return None

    def _notify_hardware_error(self, slot: int, seq: int, code: int) -> None:
        from ccid import events as ev

        self._event_queue.put(ev.HardwareErrorEvent(self.name, slot, seq, code))

    def _notify_removed(self) -> None:
        from ccid import events as ev

        if self._removed:
            return
        self._removed = True
        for s in self._slots:
            with s.state_lock:
                s.generation += 1
                s.presence += 1
                s.card_gone()
        self._event_queue.put(ev.ReaderRemoved(self.name))

    def _poll_slot(self, slot: int) -> ICCStatus:
        """A GetSlotStatus that does not wait behind a long command (monitor polling)."""
        s = self._slot(slot)
        if not s.lock.acquire(timeout=0.05):
            raise SharingViolationError("slot busy", reader=self.name, slot=slot)
        if self._serial and self._busy.locked():
            # Another slot holds the reader for a whole APDU exchange (_hold): look again
            # at the next poll rather than wait behind it.
            s.lock.release()
            raise SharingViolationError("reader busy", reader=self.name, slot=slot)
        try:
            reply = self._command(self._engine.get_slot_status(slot), wait=READER_WAIT,
                                  ceiling=READER_WAIT * 2, check=False)
        finally:
            s.lock.release()
        return reply.icc_status

    def wait_for_event(self, timeout: float | None = None) -> Any:
        """The next card event (CardInserted, CardRemoved, ...), or None after ``timeout``."""
        if self._foreign() or (self._closed and not self._removed):
            self._check_usable()
        if timeout is not None:
            timeout = _as_seconds(timeout, "timeout", self.name, zero=True)
        end = None if timeout is None else _monotonic() + timeout
        while True:
            # in slices: a close() from another thread ends the wait
            left = CANCEL_SLICE if end is None else min(CANCEL_SLICE, end - _monotonic())
            event = self._event_queue.get(max(0.0, left))
            if event is not None:
                return event
            if self._closed and not self._removed:
                self._check_usable()
            if end is not None and _monotonic() >= end:
                return None

    def events(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield events as they come; stops after ``timeout`` seconds without one."""
        while True:
            event = self.wait_for_event(timeout)
            if event is None:
                return
            yield event
            if type(event).__name__ == "ReaderRemoved":
                return

    # --- the wire: one command, its reply -----------------------------------------------

    def _command(self, pending: Pending, *, wait: float, ceiling: float,
                 check: bool = True) -> Reply:
        """Send ``pending`` and return its reply.

        ``wait`` bounds each wait for a frame (times a time-extension multiplier);
        ``ceiling`` bounds the whole call, time extensions included. On timeout the
        command is aborted (class ABORT + PC_to_RDR_Abort) and ReaderTimeoutError raised.
        """
        reply: Reply = self._send(pending, wait, ceiling, check, False)
        return reply

    def _send(self, pending: Pending, wait: float, ceiling: float, check: bool,
              raw: bool) -> Any:
        """:meth:`_command`; ``raw``: return a successful reply as its frame (no Reply)."""
        transport = self._transport
        if transport is None or self._closed or self._removed or self._inherited:
            transport = self._live_transport()
        if not _AT_FORK and self._pid != os.getpid():
            self._check_usable()
        deadline = _monotonic() + ceiling
        busy = self._busy
        if not busy.acquire(False):
            self._acquire_busy(deadline, pending.slot)
        try:
            # A healthy reader takes a frame in milliseconds: a wedged one should not
            # cost a whole card timeout; and the write is part of the call's ceiling.
            write_timeout = min(deadline - _monotonic(), max(wait, 0.5))
            if write_timeout <= 0:
                raise ReaderTimeoutError(
                    f"the call's ceiling of {ceiling:.1f} s was reached before the command "
                    "could be sent", reader=self.name, slot=pending.slot)
            if self._serial:
                self._write(transport, pending.frame, write_timeout)
                return self._await(pending, wait, deadline, ceiling, check, raw)
            with self._rx:
                self._outstanding[pending.seq] = pending.slot
            try:
                self._write(transport, pending.frame, write_timeout)
                return self._await(pending, wait, deadline, ceiling, check, raw)
            finally:
                with self._rx:
                    if self._outstanding.get(pending.seq) == pending.slot:
                        del self._outstanding[pending.seq]
                    self._mailbox.pop((pending.seq, pending.slot), None)
        except ReaderRemovedError:
            self._lost()
            raise
        finally:
            busy.release()

    def _acquire_busy(self, deadline: float, slot: int | None) -> None:
        """Take a permit of ``_busy`` before ``deadline`` (cancel and close are seen)."""
        busy = self._busy
        while True:
            left = deadline - _monotonic()
            if left <= 0:
                raise ReaderTimeoutError(
                    "the reader stayed busy with other slots' commands until the call's "
                    "ceiling", reader=self.name, slot=slot)
            if busy.acquire(timeout=min(left, CANCEL_SLICE)):
                return
            stop = self._stop_reason()
            if stop is not None:
                raise stop

    def _stop_reason(self) -> CCIDError | None:
        """Why a waiting call must stop now: ``Card.cancel()`` on its slot, or close()."""
        card = getattr(self._tls, "card", None)
        if card is not None and card._cancel:
            return OperationCancelledError("the call was cancelled (Card.cancel())",
                                           reader=self.name, slot=card.slot)
        if self._closed:
            return UsageError("the reader was closed during the call", reader=self.name)
        return None

    def _read_sliced(self, transport: UsbTransport, timeout: float) -> bytes:
        """``transport.read(timeout)`` in reads of at most CANCEL_SLICE, so that a
        ``Card.cancel()`` or a close() ends the wait promptly."""
        if timeout <= CANCEL_SLICE:
            return transport.read(timeout)
        end = _monotonic() + timeout
        while True:
            left = end - _monotonic()
            try:
                return transport.read(left if left < CANCEL_SLICE else CANCEL_SLICE)
            except ReaderTimeoutError:
                stop = self._stop_reason()
                if stop is not None:
                    raise stop from None
                if end - _monotonic() <= 0.001:
                    raise

    def _write(self, transport: UsbTransport, frame: bytes, timeout: float) -> None:
        try:
            if self._serial:
                transport.write(frame, timeout)
            else:
                with self._write_lock:
                    transport.write(frame, timeout)
        except (ReaderTimeoutError, TransportError):
            raise
        except ReaderError:
            # bulk-OUT stalled: the halt is cleared and the frame never arrived, so
            # sending it again is safe (once).
            with self._write_lock:
                transport.write(frame, timeout)

    def _await(self, pending: Pending, wait: float, deadline: float, ceiling: float,
               check: bool, raw: bool = False, first: Any = None) -> Any:
        """Wait for the reply to ``pending``: time extensions, stale frames, timeouts
        (ABORT). ``first``: the outcome of a first read the caller already made on a serial
        reader (the bytes it returned, or the exception it raised)."""
        multiplier = 1
        serial = self._serial
        engine = self._engine
        hard = deadline
        # The abort runs inside the call's ceiling: the reply must come early enough to
        # leave it its share (see ABORT_SHARE).
        span = deadline - _monotonic()
        if span > 0:
            deadline -= min(ABORT_WAIT, ABORT_SHARE * span)
        while True:
            now = _monotonic()
            remaining = deadline - now
            if remaining <= 0:
                self._abort(pending, hard)
                raise ReaderTimeoutError(
                    f"no answer within the call's ceiling of {ceiling:.1f} s "
                    f"({pending.extensions} time extensions); the command was aborted",
                    reader=self.name, slot=pending.slot)
            this_wait = wait * multiplier
            if this_wait > remaining:
                this_wait = remaining
            try:
                if first is not None:
                    got, first = first, None
                    frame = self._read_serial(now + this_wait, this_wait, got)
                elif serial:
                    frame = self._read_serial(now + this_wait, this_wait)
                else:
                    frame = self._receive(pending.seq, pending.slot, this_wait)
            except ReaderTimeoutError:
                if _monotonic() < deadline and this_wait < remaining:
                    self._abort(pending, hard)
                    raise ReaderTimeoutError(
                        f"the reader did not answer within {this_wait:.1f} s; the command "
                        "was aborted", reader=self.name, slot=pending.slot) from None
                if this_wait >= remaining:
                    # The ceiling ran out (maybe a hair early, or mid-frame): reading on
                    # would pick up the rest of the frame as a new one.
                    deadline = 0.0
                continue  # the ceiling check above aborts and raises
            except (ProtocolError, OperationCancelledError):
                # An unreadable reply (truncated, garbage): the reader may still be busy
                # with the command or still sending; ABORT leaves the slot clean. A
                # cancelled call is aborted as a timed-out one is.
                self._abort(pending, hard)
                raise
            # The common case first: the complete, successful reply to this command.
            if raw and not _reply_code(frame, len(frame), pending.expect_type,
                                       pending.slot, pending.seq,
                                       engine.max_message_length) & 0xC0FF:
                return frame  # status OK and bmCommandStatus 0
            try:
                event = engine.receive(frame, pending)
            except ProtocolError:
                self._recover()
                raise
            if isinstance(event, Reply):
                if check and event.bStatus & 0xC0:
                    raise engine.error_for(event, pending)
                return frame if raw else event
            stop = self._stop_reason()
            if stop is not None:  # a time extension or a stale frame: a wait goes on
                if isinstance(stop, OperationCancelledError):
                    self._abort(pending, hard)
                raise stop
            if isinstance(event, Discarded):
                continue
            multiplier = max(1, event.multiplier)

    def _receive(self, seq: int, slot: int, timeout: float) -> bytes:
        """The next frame for (``seq``, ``slot``) (or a stale one), routing others'
        replies by (bSeq, bSlot)."""
        end = time.monotonic() + timeout
        if self._serial:
            return self._read_frame(end)
        key = (seq, slot)
        with self._rx:
            while True:
                frame = self._mailbox.pop(key, None)
                if frame is not None:
                    return frame
                if not self._rx_busy:
                    self._rx_busy = True
                    break
                left = end - time.monotonic()
                if left <= 0:
                    raise ReaderTimeoutError("no reply in time", reader=self.name)
                self._rx.wait(min(left, CANCEL_SLICE))
                stop = self._stop_reason()
                if stop is not None:
                    raise stop
        try:
            while True:
                frame = self._read_frame(end)
                fseq = frame[6] if len(frame) > 6 else -1
                fslot = frame[5] if len(frame) > 6 else -1
                if fseq == seq or self._outstanding.get(fseq) != fslot:
                    return frame
                with self._rx:
                    self._mailbox[(fseq, fslot)] = frame
                    self._rx.notify_all()
        finally:
            with self._rx:
                self._rx_busy = False
                self._rx.notify_all()

    def _read_serial(self, end: float, wait: float, got: Any = None) -> bytes:
        """:meth:`_read_frame` with its common case first: one read, one whole frame.

        ``got``: that read was already made by the caller (its bytes or its exception)."""
        transport = self._transport
        assembler = self._assembler
        if transport is None or (got is None and (
                self._closed or self._removed or self._inherited or assembler.pending_bytes)):
            return self._read_frame(end)
        try:
            if got is None:
                got = self._read_sliced(transport, wait)
            elif isinstance(got, BaseException):
                raise got
            frame = assembler.feed(got)
        except (ReaderTimeoutError, TransportError):
            assembler.reset()
            raise
        except ProtocolError as exc:
            raise ProtocolError(exc.message, reader=self.name) from None
        except ReaderError:
            # A stalled bulk-IN: the transport cleared the halt; the reply may still be
            # there, so read once more before giving up.
            assembler.reset()
            return self._read_frame(end, stalls=1)
        if frame is None:  # the frame spans several transfers
            return self._read_frame(end)
        if _trace.enabled:
            transport.trace_in(frame)
        return frame

    def _read_frame(self, end: float, stalls: int = 0) -> bytes:
        transport = self._transport
        if transport is None or self._closed or self._removed or self._inherited:
            transport = self._live_transport()
        assembler = self._assembler
        while True:
            left = end - _monotonic()
            partial = assembler.pending_bytes
            if left <= 0:
                # Also with part of a frame held: a reply trickling in must not keep the
                # call alive past its ceiling (the caller aborts the command).
                assembler.reset()
                raise ReaderTimeoutError(
                    f"no complete reply in time ({partial} bytes of a frame came)"
                    if partial else "no reply in time", reader=self.name)
            cut = partial > 0 and left > CONTINUATION_WAIT
            if cut:
                # The rest of a frame follows at once on a healthy bus: do not wait a
                # whole card timeout for bytes that will never come.
                left = CONTINUATION_WAIT
            try:
                chunk = self._read_sliced(transport, left)
            except ReaderTimeoutError:
                assembler.reset()
                if cut:  # silence within the call's time: the frame was cut short
                    raise ProtocolError(
                        f"reply truncated: the transfer stopped after {partial} bytes",
                        reader=self.name) from None
                raise
            except (ReaderRemovedError, TransportError):
                assembler.reset()
                raise
            except ReaderError:
                # A stalled bulk-IN: the transport cleared the halt; the reply may still
                # be there, so read once more before giving up.
                assembler.reset()
                stalls += 1
                if stalls > 1:
                    raise
                continue
            try:
                frame = assembler.feed(chunk)
            except ProtocolError as exc:
                raise ProtocolError(exc.message, reader=self.name) from None
            if frame is not None:
                if _trace.enabled:
                    transport.trace_in(frame)
                return frame

    def _abort(self, pending: Pending, end: float) -> None:
        """ABORT class request, then PC_to_RDR_Abort, then wait for its answer (CCID 5.3.1),
        all before ``end`` (the call's ceiling) and within ABORT_WAIT."""
        transport = self._transport
        if transport is None or self._closed:
            return
        end = min(end, _monotonic() + ABORT_WAIT)
        if end - _monotonic() <= 0.002:
            log.info("%s: no time left in the call to abort the command", self.name)
            return
        seq = self._engine.next_seq()
        try:
            transport.class_request_out(ClassRequest.ABORT, (seq << 8) | pending.slot,
                                        max(0.001, end - _monotonic()))
        except ReaderRemovedError:
            self._lost()
            raise
        except CCIDError as exc:
            log.info("%s: ABORT class request failed: %s", self.name, exc)
        abort = self._engine.abort(pending.slot, seq=seq)
        abort.stale = 0
        tls = self._tls
        caller = getattr(tls, "card", None)
        tls.card = None  # the abort itself is not cancellable
        try:
            left = end - _monotonic()
            if left <= 0.001:
                return
            self._write(transport, abort.frame, left)
            with self._rx:
                self._outstanding[abort.seq] = abort.slot
            try:
                while time.monotonic() < end:
                    try:
                        frame = self._receive(abort.seq, abort.slot,
                                              max(0.001, end - time.monotonic()))
                    except ProtocolError:
                        continue  # the rest of the aborted command's reply: skip it
                    if len(frame) >= 7 and frame[6] == abort.seq:
                        return
            finally:
                with self._rx:
                    if self._outstanding.get(abort.seq) == abort.slot:
                        del self._outstanding[abort.seq]
        except ReaderRemovedError:
            self._lost()
            raise
        except CCIDError as exc:
            log.info("%s: PC_to_RDR_Abort got no answer: %s", self.name, exc)
            quiet = min(0.02, end - _monotonic())
            if quiet > 0:
                self._drain(quiet)
        finally:
            tls.card = caller

    def _recover(self) -> None:
        """After a mismatched reply: drop whatever is queued so the next command is clean."""
        with contextlib.suppress(ReaderTimeoutError, ProtocolError):
            self._drain(0.02)

    def _drain(self, quiet: float) -> None:
        transport = self._transport
        if transport is None:
            return
        if not self._serial:
            self._drain_routed(quiet)
            return
        self._assembler.reset()
        for _ in range(16):
            try:
                transport.read(quiet)
            except ReaderTimeoutError:
                break
            except ReaderRemovedError:
                self._lost()
                raise
            except CCIDError:
                break
        self._assembler.reset()

    def _drain_routed(self, quiet: float) -> None:
        """:meth:`_drain` with other slots' commands in flight: their replies go to the
        mailbox by bSeq, only frames nobody waits for are dropped."""
        end = time.monotonic() + quiet
        with self._rx:
            while self._rx_busy:
                # Another thread is reading: it routes every frame by bSeq itself.
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._rx.wait(left)
            self._rx_busy = True
        try:
            for _ in range(16):
                try:
                    frame = self._read_frame(time.monotonic() + quiet)
                except ReaderTimeoutError:
                    break
                except ReaderRemovedError:
                    self._lost()
                    raise
                except ProtocolError:
                    continue  # an unreadable frame nobody can claim
                except CCIDError:
                    break
                fseq = frame[6] if len(frame) > 6 else -1
                fslot = frame[5] if len(frame) > 6 else -1
                with self._rx:
                    if self._outstanding.get(fseq) == fslot:
                        self._mailbox[(fseq, fslot)] = frame
                        self._rx.notify_all()
        finally:
            with self._rx:
                self._rx_busy = False
                self._rx.notify_all()

    def _lost(self) -> None:
        if self._closed:
            # The transport was released by close() while this call was on its way to
            # it: the caller closed the reader, it was not unplugged.
            raise UsageError("the reader is closed", reader=self.name)
        if not self._removed:
            self._notify_removed()

    # --- escape -----------------------------------------------------------------------

    def escape(self, data: bytes, slot: int = 0, *, timeout: float | None = None) -> bytes:
        """PC_to_RDR_Escape: a vendor command to the reader; returns its answer."""
        s = self._slot(slot)
        data = _as_bytes(data, "escape data", self.name, slot)
        ceiling = self.timeout if timeout is None else _as_seconds(timeout, "timeout",
                                                                   self.name, slot)
        wait = min(ceiling, max(self._open_wait, READER_WAIT))
        with s.lock:
            reply = self._command(self._engine.escape(slot, data), wait=wait,
                                  ceiling=ceiling)
        return reply.data

    # --- pinpad ----------------------------------------------------------------------

    @property
    def pin_support(self) -> PINSupport:
        """PIN verification / modification on the reader's pinpad (after quirks)."""
        return PINSupport(self.descriptor.bPINSupport & 0x03)

    @property
    def firmware_features(self) -> Any:
        """What the firmware said of itself (Gemalto GET_FIRMWARE_FEATURES), or None."""
        from ccid.quirks.gemalto import GemaltoFirmwareFeatures

        return self.quirk_state.get(GemaltoFirmwareFeatures.state_key)

    def _require_pinpad(self, needed: PINSupport, slot: int) -> None:
        if self.pin_support & needed:
            return
        what = "verification" if needed == PINSupport.VERIFY else "modification"
        if self._pinpad_quirks:
            reason = (f"the reader declares a pinpad (bPINSupport "
                      f"0x{self.info.descriptor.bPINSupport:02X}) but quirk "
                      f"{', '.join(self._pinpad_quirks)} turns it off: it is absent or "
                      "unsafe on this model")
        else:
            reason = (f"the reader has no PIN {what} on a pinpad (bPINSupport "
                      f"0x{self.descriptor.bPINSupport:02X})")
        raise UsageError(f"{reason}; ask for the PIN on the host and send VERIFY / CHANGE "
                         "REFERENCE DATA with transmit()", reader=self.name, slot=slot)

    def _pin_digits(self, block: _PinBlock, low: int | None, high: int | None
                    ) -> tuple[int, int]:
        features = self.firmware_features
        fw_low = getattr(features, "min_pin_size", 0) or None
        fw_high = getattr(features, "max_pin_size", 0) or None
        lo_default = fw_low or DEFAULT_PIN_DIGITS[0]
        hi_default = min(fw_high or DEFAULT_PIN_DIGITS[1], block.capacity)
        # A bound the caller gives moves the other default out of its way.
        lo = low if low is not None else (
            lo_default if high is None else min(lo_default, high))
        hi = high if high is not None else (
            hi_default if low is None else max(hi_default, low))
        if not 1 <= lo <= hi <= min(block.capacity, 0xFF):
            raise UsageError(f"PIN size {lo}..{hi} is not possible: 1 <= min <= max <= "
                             f"{block.capacity} digits for this PIN format", reader=self.name)
        return lo, hi

    def _secure(self, s: _Slot, payload: bytes, timeout: float) -> bytes:
        """Send PC_to_RDR_Secure and return the card's response (slot lock held)."""
        for quirk in self._hooks("adjust_pin_structure"):
            payload = bytes(quirk.adjust_pin_structure(payload))
        wait = timeout + READER_WAIT
        try:
            reply = self._command(self._engine.secure(s.index, payload), wait=wait,
                                  ceiling=wait + READER_WAIT)
        except SlotError as exc:
            kind: type[SlotError]
            if exc.bError == SlotErrorCode.PIN_CANCELLED:
                kind = PinCancelledError
            elif exc.bError == SlotErrorCode.PIN_TIMEOUT:
                kind = PinTimeoutError
            else:
                raise
            text = ("PIN entry cancelled on the pinpad" if kind is PinCancelledError
                    else f"PIN entry not finished on the pinpad within {timeout:g} s")
            raise kind(f"{text} ({exc.message})", bStatus=exc.bStatus, bError=exc.bError,
                       reader=self.name, slot=s.index) from exc
        return bytes(reply.data)

    # --- connecting -------------------------------------------------------------------

    def connect(self, slot: int = 0, protocol: Any = None, mode: Mode = "shared", *,
                timeout: float | None = None) -> Card:
        """A handle on the card in ``slot``; powers and negotiates on first use.

        ``protocol``: None (the card's choice), 0/1, "T=0"/"T=1". ``mode``: "shared"
        (other handles may use the card between our APDUs), "exclusive" (no other
        handle), "direct" (no card needed; escape and control only).
        """
        s = self._slot(slot)
        if mode not in ("shared", "exclusive", "direct"):
            raise UsageError(f"mode must be 'shared', 'exclusive' or 'direct', not {mode!r}",
                             reader=self.name, slot=s.index)
        wanted = _protocol_number(protocol, self.name, s.index)
        ceiling = self.timeout if timeout is None else _as_seconds(timeout, "timeout",
                                                                   self.name, s.index)
        if mode != "direct" and self.descriptor.exchange_level is _CHARACTER:
            # Refused before power-up: negotiating T=1 on such a reader would already need
            # character-level exchanges, and the reader's refusal would hide the cause.
            raise self._character_level(s.index)
        # Refuse at once, before waiting for the slot lock: an exclusive connect while
        # another thread runs a transaction is a sharing violation, not a wait (pcsc-lite).
        self._claim(s, mode)
        with s.lock:
            self._claim(s, mode)
            card = Card(self, s, mode)
            try:
                if mode != "direct":
                    if not s.powered:
                        self._power_up(s, wanted, ceiling)
                    elif wanted is not None and s.protocol != wanted:
                        others = [h for h in s.handles if h is not card]
                        if others:
                            raise SharingViolationError(
                                f"the card is in use with T={s.protocol} by another handle; "
                                f"T={wanted} needs it alone", reader=self.name, slot=slot)
                        self._power_up(s, wanted, ceiling)
                card._adopt()
            except BaseException:
                card._release()
                raise
        if mode != "direct":
            log.debug("%s slot %d: connected %s, ATR %s, T=%s", self.name, slot, mode,
                      bytes(s.atr).hex(" ") if s.atr else "-", s.protocol)
        return card

    def _claim(self, s: _Slot, mode: str) -> None:
        with s.state_lock:
            live = list(s.handles)
            if s.exclusive is not None and s.exclusive in live:
                raise SharingViolationError(
                    "the slot is held exclusively by another handle", reader=self.name,
                    slot=s.index)
            if mode == "exclusive" and live:
                raise SharingViolationError(
                    f"cannot connect exclusively: {len(live)} other handle(s) hold the slot",
                    reader=self.name, slot=s.index)

    # --- power and protocol -----------------------------------------------------------

    def _power_up(self, s: _Slot, wanted: int | None, ceiling: float) -> None:
        """Power on (cold), read the ATR, choose the protocol, PPS, SetParameters, IFSD."""
        raw = self._power_on(s, ceiling)
        try:
            self._setup_protocol(s, raw, wanted, ceiling)
        except BaseException:
            # A card left without agreed parameters is not usable: the next connect
            # powers it again rather than adopting it half set up.
            with s.state_lock:
                s.generation += 1
                s.forget_card()
            raise

    def _voltages(self) -> list[PowerSelect]:
        desc = self.descriptor
        if desc.dwFeatures & Features.AUTO_VOLTAGE:
            return [PowerSelect.AUTO]
        supported = desc.voltages
        order = [(Voltage.V5_0, PowerSelect.V5_0), (Voltage.V3_0, PowerSelect.V3_0),
                 (Voltage.V1_8, PowerSelect.V1_8)]
        # bVoltageSupport 0 names no class: try them all, 5 V first, as libccid does. Not
        # AUTO: without dwFeatures AUTO_VOLTAGE a reader may refuse bPowerSelect 0.
        return [sel for bit, sel in order if supported & bit or not supported]

    def _power_on(self, s: _Slot, ceiling: float) -> bytes:
        ctx = _QuirkContext(self) if self.quirks else None
        last: CCIDError | None = None
        deadline = time.monotonic() + ceiling
        with s.state_lock:
            s.generation += 1  # whatever happens, handles of the old power cycle are stale
            s.forget_card()
        retried = False
        voltages = self._voltages()
        i = 0
        while i < len(voltages):
            select = voltages[i]
            for quirk in self._hooks("before_power_on"):
                if ctx is not None:
                    quirk.before_power_on(ctx)
            left = max(0.5, deadline - time.monotonic())
            reply = self._command(self._engine.power_on(s.index, select),
                                  wait=min(left, max(MIN_WAIT, READER_WAIT)), ceiling=left,
                                  check=False)
            if reply.ok and reply.data:
                with s.state_lock:
                    s.present = True
                    s.powered = True
                return reply.data
            if reply.ok:
                last = CardMuteError("the card gave an empty ATR", reader=self.name,
                                     slot=s.index)
            else:
                last = self._engine.error_for(reply)
            if reply.icc_status == ICCStatus.ABSENT:
                with s.state_lock:
                    s.present = False
                raise NoCardError("no card in the slot", reader=self.name, slot=s.index)
            if not retried and ctx is not None and not reply.ok and any(
                    q.retry_power_on(ctx, reply.bError) for q in self._hooks("retry_power_on")):
                retried = True
                continue  # same voltage once more, after the quirk's fix
            if reply.bError not in _VOLTAGE_FALLBACK and reply.ok is False:
                raise last
            # Deactivate before trying the next class (ISO 7816-3 6.2.4).
            with contextlib.suppress(CardError, SlotError):
                self._command(self._engine.power_off(s.index), wait=READER_WAIT,
                              ceiling=READER_WAIT)
            i += 1
        assert last is not None
        raise last

    def _setup_protocol(self, s: _Slot, raw: bytes, wanted: int | None,
                        ceiling: float) -> None:
        atr = parse_atr(raw, check_tck=self.check_tck)
        desc = self.descriptor
        # Card-dependent quirks (matched on the ATR) join the reader's own for every
        # protocol set-up hook below.
        card_quirks = [q for q in self._card_quirks(raw) if q not in self.quirks]
        reader_protocols = [p for p in (0, 1) if desc.dwProtocols & (1 << p)] or [0, 1]
        offered = [p for p in atr.protocols if p in (0, 1)]
        if not offered:
            raise CardError(f"the card offers no T=0/T=1 protocol (ATR {atr})",
                            reader=self.name, slot=s.index, pcsc_code="SCARD_E_PROTO_MISMATCH")
        if atr.specific_mode:
            protocol = atr.specific_protocol if atr.specific_protocol in (0, 1) else offered[0]
            if wanted is not None and wanted != protocol:
                raise CardError(
                    f"the card is in specific mode T={protocol}; T={wanted} is not possible",
                    reader=self.name, slot=s.index, pcsc_code="SCARD_E_PROTO_MISMATCH")
        elif wanted is not None:
            if wanted not in offered:
                raise CardError(f"the card does not offer T={wanted} (ATR {atr})",
                                reader=self.name, slot=s.index,
                                pcsc_code="SCARD_E_PROTO_MISMATCH")
            protocol = wanted
        else:
            usable = [p for p in offered if p in reader_protocols]
            protocol = usable[0] if usable else offered[0]
        if protocol not in reader_protocols:
            raise CardError(f"the reader does not support T={protocol}", reader=self.name,
                            slot=s.index, pcsc_code="SCARD_E_PROTO_MISMATCH")
        clock = desc.dwDefaultClock or 4000
        max_rate = desc.dwMaxDataRate
        for quirk in self._hooks("max_data_rate", card_quirks):
            max_rate = int(quirk.max_data_rate(max_rate, slot=s.index))
        rates = self.slot_data_rates[s.index] if s.index < len(self.slot_data_rates) else (
            self.data_rates)
        fi_di: int | None = None
        if atr.specific_mode:
            fi_di = None  # the card already runs at its parameters
        else:
            best, _bps = choose_fi_di(atr, clock_khz=clock, data_rates=rates,
                                      max_data_rate=max_rate)
            auto_pps = desc.dwFeatures & (Features.AUTO_PPS_PROPRIETARY |
                                          Features.AUTO_PPS_CURRENT)
            skip = False
            for quirk in self._hooks("skip_pps", card_quirks):
                skip = bool(quirk.skip_pps(skip))
            tpdu = desc.exchange_level in (ExchangeLevel.TPDU, ExchangeLevel.CHARACTER)
            needs_pps = protocol != atr.first_protocol or best != DEFAULT_FI_DI
            if skip and tpdu and not auto_pps and protocol != atr.first_protocol:
                # Only a PPS selects another protocol than the card's first one (ISO/IEC
                # 7816-3 9.1); this reader must not get one.
                names = ", ".join(q.id for q in self._hooks("skip_pps", card_quirks)
                                  if q.skip_pps(False))
                raise CardError(
                    f"T={protocol} needs a PPS (the card starts in T={atr.first_protocol}) "
                    f"and this reader cannot send one (quirk {names}); connect with "
                    f"T={atr.first_protocol}", reader=self.name, slot=s.index,
                    pcsc_code="SCARD_E_PROTO_MISMATCH")
            if auto_pps:
                fi_di = best  # the reader negotiates with what SetParameters says
            elif skip or not tpdu or not needs_pps:
                fi_di = None
            else:
                fi_di = self._pps(s, atr, protocol, best, ceiling)
        params = parameters_from_atr(atr, protocol, fi_di)
        bwi = atr.bwi
        if protocol == 1:
            bwi = (params.to_bytes()[3] >> 4) & 0x0F
            for quirk in self._hooks("adjust_bwi", card_quirks):
                bwi = int(quirk.adjust_bwi(bwi, raw))
            structure = bytearray(params.to_bytes())
            structure[3] = (bwi << 4) | (structure[3] & 0x0F)
            payload = bytes(structure)
        else:
            payload = params.to_bytes()
        if not desc.dwFeatures & Features.AUTO_CONF_ATR or fi_di is not None:
            try:
                self._command(self._engine.set_parameters(s.index, protocol, payload),
                              wait=READER_WAIT, ceiling=min(ceiling, READER_WAIT * 2))
            except SlotError as exc:
                tolerate = any(q.tolerate_set_parameters_failure()
                               for q in self._hooks("tolerate_set_parameters_failure",
                                                    card_quirks))
                if not tolerate:
                    raise
                self._warn(f"SetParameters failed ({exc.message}); reader defaults kept")
        with s.state_lock:
            s.atr = atr
            s.protocol = protocol
            s.fi_di = fi_di
            s.wait = self._card_wait(atr, protocol, fi_di, clock, raw, card_quirks, bwi)
        if protocol == 1:
            self._setup_t1(s, atr, ceiling, card_quirks)

    def _card_wait(self, atr: ATR, protocol: int, fi_di: int | None, clock: int,
                   raw: bytes, card_quirks: list[Any], bwi: int | None = None) -> float:
        try:
            if protocol == 1:
                card = t1_bwt_seconds(atr, clock, fi_di)
                if bwi is not None and bwi > atr.bwi:
                    # A quirk raised the BWI sent to the reader: wait as long as it does.
                    grow = (1 << min(bwi, 9)) - (1 << min(atr.bwi, 9))
                    card += grow * 960 * 372 / (clock * 1000.0)
            else:
                card = t0_wwt_seconds(atr, clock, fi_di)
        except UsageError:  # RFU Fi/Di: keep the floor
            card = MIN_WAIT
        for quirk in self._hooks("extra_card_time", card_quirks):
            card += float(quirk.extra_card_time(raw))
        return max(MIN_WAIT, card * 1.5 + 1.0)

    def _pps(self, s: _Slot, atr: ATR, protocol: int, fi_di: int,
             ceiling: float) -> int | None:
        """Host-side PPS at TPDU level; on failure reset the card and go on at defaults."""
        request = build_pps_request(protocol, None if fi_di == DEFAULT_FI_DI else fi_di)
        try:
            reply = self._command(self._engine.xfr_block(s.index, request), wait=MIN_WAIT,
                                  ceiling=min(ceiling, MIN_WAIT * 2))
            agreed = check_pps_response(request, reply.data)
            return DEFAULT_FI_DI if agreed is None else agreed
        except (PPSError, CardMuteError, SlotError) as exc:
            self._warn(f"PPS for T={protocol} Fi/Di 0x{fi_di:02X} failed ({exc}); "
                       "resetting the card and using its defaults")
            raw = self._power_on(s, ceiling)
            if bytes(raw) != bytes(atr):
                log.info("%s: ATR changed after reset", self.name)
            return None

    def _setup_t1(self, s: _Slot, atr: ATR, ceiling: float,
                  card_quirks: list[Any] | None = None) -> None:
        from ccid.protocol.t1 import T1Protocol

        desc = self.descriptor
        # dwMaxIFSD 0 announces no room beyond the T=1 default: stay at IFSD 32 (a
        # request for IFSD 0 would be invalid, ISO/IEC 7816-3 11.4.2).
        ifsd_max = min(254, desc.dwMaxIFSD or 32)
        ifsd = self._ifsd_option or ifsd_max
        ifsd = max(1, min(int(ifsd), ifsd_max))
        t1 = T1Protocol(ifsc=atr.ifsc, ifsd=32, crc=atr.edc == "crc")
        s.t1 = t1
        s.t1_chain = None
        if desc.exchange_level != ExchangeLevel.TPDU:
            return
        negotiate = not desc.dwFeatures & Features.AUTO_IFSD
        for quirk in self._hooks("negotiate_ifsd", card_quirks):
            negotiate = bool(quirk.negotiate_ifsd(negotiate))
        if negotiate and ifsd != 32:
            try:
                self._t1_run(s, t1.ifs_request(ifsd), ceiling)
            except ReaderTimeoutError:
                raise
            except (ProtocolError, CardMuteError) as exc:
                self._warn(f"IFSD negotiation failed ({exc}); keeping IFSD 32")
                t1.reset()
        elif not negotiate:
            t1.ifsd = ifsd  # the reader told the card itself

    # --- exchanges --------------------------------------------------------------------

    def _transmit(self, s: _Slot, apdu: bytes, ceiling: float, raw_t0: bool) -> bytes:
        descriptor = self.descriptor
        if descriptor is self._level_of:
            level = self._level
        else:  # a quirk may have replaced the descriptor since the last APDU
            level = descriptor.exchange_level
            self._level_of, self._level = descriptor, level
        if level is _SHORT_APDU or level is _EXTENDED_APDU:
            return self._apdu_level(s, apdu, ceiling, level)
        if s.protocol == 1:
            return self._t1_run(s, s.t1.start(apdu), ceiling, apdu)
        if level is _CHARACTER:
            raise self._character_level(s.index)
        return self._t0_run(s, apdu, ceiling, raw_t0)

    def _character_level(self, slot: int) -> UnsupportedReaderError:
        return UnsupportedReaderError(
            "the reader exchanges characters (dwFeatures: character level), which this "
            "library does not drive; APDUs need a TPDU, short or extended APDU reader",
            reader=self.name, slot=slot)

    def _hold(self, deadline: float) -> bool:
        """Take a one-busy-slot reader for a whole APDU exchange; True when taken.

        As pcscd does: another slot's command cannot slip between the TPDUs, T=1 blocks
        or chained pieces of an APDU, and the per-block path skips a lock round trip.
        Readers with several busy slots keep per-command routing.
        """
        if not self._serial:
            return False
        if not self._busy.acquire(False):
            self._acquire_busy(deadline, None)
        return True

    def _xfr(self, s: _Slot, data: bytes, deadline: float, *, bwi: int = 0,
             level: int = 0, held: bool = False) -> bytes:
        """One XfrBlock; returns its successful DataBlock whole (bChainParameter at [9],
        abData from [10]): no Reply object on the per-block path. ``held``: the caller
        holds the reader (:meth:`_hold`)."""
        seq, frame = self._engine.xfr_frame(s.index, data, bwi, level)
        return self._exchange(s, seq, frame, deadline, bwi, held)

    def _exchange(self, s: _Slot, seq: int, frame: bytes, deadline: float, bwi: int,
                  held: bool) -> bytes:
        """Write an XfrBlock ``frame`` (bSeq ``seq``) and return its successful DataBlock."""
        left = deadline - _monotonic()
        if left <= 0:
            raise ReaderTimeoutError("the call's time ceiling was reached", reader=self.name,
                                     slot=s.index)
        wait = s.wait * bwi if bwi > 1 else s.wait
        if wait > left * _WAIT_SHARE:
            wait = _reply_wait(left)
        transport = self._lean(held)
        if transport is not None:
            # The per-block path of chunked exchanges: write, one read, one reply check.
            got = self._write_read(transport, frame, wait, left)
            if type(got) is bytes and not _reply_code(
                    got, len(got), 0x80, s.index, seq,
                    self._engine.max_message_length) & 0xC0FF:
                if _trace.enabled:
                    transport.trace_in(got)
                return got
            return self._settle(s, seq, frame, got, wait, deadline, left)
        transport = self._transport
        pending = Pending(0x6F, s.index, seq, 0x80, frame)
        if held:
            if transport is None or self._closed or self._removed or self._inherited or (
                    not _AT_FORK and self._pid != os.getpid()):
                self._check_usable()
                transport = self._live_transport()
            return self._write_await(transport, pending, wait, deadline, left)
        busy = self._busy
        # One outstanding command on a healthy reader (the common case): what _send does,
        # without its generality.
        if self._serial and transport is not None and not (
                self._closed or self._removed or self._inherited) and (
                _AT_FORK or self._pid == os.getpid()) and busy.acquire(False):
            try:
                return self._write_await(transport, pending, wait, deadline, left)
            finally:
                busy.release()
        reply: bytes = self._send(pending, wait, left, True, True)
        return reply

    def _lean(self, held: bool) -> UsbTransport | None:
        """The transport when the per-block path may skip the general machinery: the
        caller holds a one-busy-slot reader that is open, present, this process's, with no
        partial frame pending; else None."""
        transport = self._transport
        if held and self._serial and transport is not None and not (
                self._closed or self._removed or self._inherited or
                self._assembler.pending_bytes) and (_AT_FORK or self._pid == os.getpid()):
            return transport
        return None

    def _write_read(self, transport: UsbTransport, frame: bytes, wait: float,
                    left: float) -> Any:
        """Write ``frame``, then make one read: its bytes, or the exception it raised
        (returned: :meth:`_settle` goes on from it). A failed write raises."""
        timeout = wait if wait >= 0.5 else (left if left < 0.5 else 0.5)
        try:
            try:
                transport.write(frame, timeout)
            except (ReaderTimeoutError, TransportError):
                raise
            except ReaderError:
                # bulk-OUT stalled: the halt is cleared and the frame never arrived, so
                # sending it again is safe (once).
                transport.write(frame, timeout)
        except ReaderRemovedError:
            self._lost()
            raise
        try:
            return self._read_sliced(transport, wait)
        except CCIDError as exc:
            return exc

    def _settle(self, s: _Slot, seq: int, frame: bytes, got: Any, wait: float,
                deadline: float, left: float) -> bytes:
        """The reply to ``frame`` through the general machinery (time extensions, stale
        frames, failures, a frame in several transfers, timeouts), from the read already
        made (``got``: its bytes or its exception)."""
        try:
            reply: bytes = self._await(Pending(0x6F, s.index, seq, 0x80, frame), wait,
                                       deadline, left, True, True, got)
            return reply
        except ReaderRemovedError:
            self._lost()
            raise

    def _pump(self, s: _Slot, chain: Any, frame: bytes, deadline: float, held: bool
              ) -> bytes:
        """Drive a :class:`ccid.framing.Chain` from its first ``frame`` to its end; returns
        the response, or raises.

        One framing call per reply checks it and builds the next frame. A successful reply
        the chain does not expect (T=1 error recovery, S-blocks, a chaining fault) ends the
        pump with :class:`_LeftChain` carrying it; the chain's fields say where it stopped.
        """
        next_seq = self._engine.next_seq
        step = chain.step
        transport = self._lean(held)
        while True:
            if transport is None:
                reply = self._exchange(s, chain.seq, frame, deadline, 0, held)
            else:
                # The lean loop: the reader is held, so nobody else closes it, forks from
                # this exchange or leaves a partial frame; unplugging shows as an error.
                left = deadline - _monotonic()
                if left <= 0:
                    raise ReaderTimeoutError("the call's time ceiling was reached",
                                             reader=self.name, slot=s.index)
                wait = s.wait if s.wait < left * _WAIT_SHARE else _reply_wait(left)
                got = self._write_read(transport, frame, wait, left)
                if type(got) is bytes:
                    following = step(next_seq(), got)
                    if following is not None:
                        if _trace.enabled:
                            transport.trace_in(got)
                        if not following:
                            response: bytes = chain.response()
                            return response
                        frame = following
                        continue
                reply = self._settle(s, chain.seq, frame, got, wait, deadline, left)
                transport = self._lean(held)
            following = step(next_seq(), reply)
            if following:
                frame = following
            elif following is None:
                raise _LeftChain(reply)
            else:
                done: bytes = chain.response()
                return done

    def _write_await(self, transport: UsbTransport, pending: Pending, wait: float,
                     deadline: float, left: float) -> bytes:
        """Write one command and wait for its reply frame; the caller holds the reader."""
        try:
            self._write(transport, pending.frame, wait if wait >= 0.5 else
                        (left if left < 0.5 else 0.5))
            frame: bytes = self._await(pending, wait, deadline, left, True, True)
            return frame
        except ReaderRemovedError:
            self._lost()
            raise

    def _t0_run(self, s: _Slot, apdu: bytes, ceiling: float, raw: bool) -> bytes:
        exchange = T0Exchange(apdu, auto_get_response=self.auto_get_response and not raw)
        deadline = _monotonic() + ceiling
        held = self._hold(deadline)
        try:
            while True:
                tpdu = exchange.next_tpdu()
                if tpdu is None:
                    return exchange.response
                exchange.receive(self._xfr(s, tpdu, deadline, held=held)[HEADER_SIZE:])
        finally:
            if held:
                self._busy.release()

    def _t1_run(self, s: _Slot, block: bytes, ceiling: float, apdu: bytes | None = None
                ) -> bytes:
        """Run a T=1 exchange from its first ``block``. ``apdu``: the APDU that block
        starts; the hot part of its exchange (I-blocks acknowledged, the card's I-blocks
        taken) then runs through :class:`ccid.framing.Chain`, and the protocol object takes
        over only where that stops (error recovery, S-blocks, WTX)."""
        t1 = s.t1
        step = t1.step
        xfr = self._xfr
        deadline = _monotonic() + ceiling
        bwi = 0
        held = self._hold(deadline)
        try:
            limit = self._engine.max_message_length
            if apdu is not None and (not limit or limit >= HEADER_SIZE + 5 + t1.ifsc):
                chain = s.t1_chain
                if chain is None:
                    chain = s.t1_chain = Chain(
                        CHAIN_T1, chunk=t1.ifsc, slot=s.index, max_length=limit, nad=t1.nad,
                        crc=t1.crc, ifsd=t1.ifsd, resp_cap=t1.max_response)
                first = chain.first(self._engine.next_seq(), apdu, ns=t1.ns, nr=t1.nr,
                                    chunk=t1.ifsc, ifsd=t1.ifsd)
                try:
                    response = self._pump(s, chain, first, deadline, held)
                except _LeftChain as left:
                    t1.resume(chain.phase, chain.ns, chain.nr, chain.offset, chain.sent,
                              chain.response())
                    following, bwi, last = step(left.reply[HEADER_SIZE:])
                    if following is None:
                        ended: bytes = last
                        return ended
                    block = following
                except CardMuteError:
                    t1.resume(chain.phase, chain.ns, chain.nr, chain.offset, chain.sent,
                              chain.response())
                    block, bwi = t1.timeout_error(), 0
                else:
                    t1.resume(0, chain.ns, chain.nr, 0, 0, b"")
                    return response
            for _ in range(T1_MAX_ROUNDS):  # each round moves the exchange or a retry
                try:
                    frame = xfr(s, block, deadline, bwi=bwi, held=held)
                except CardMuteError:
                    # The reader's BWT expired: T=1 error recovery decides what to send.
                    block, bwi = t1.timeout_error(), 0
                    continue
                following, bwi, response = step(frame[HEADER_SIZE:])
                if following is None:
                    done: bytes = response
                    return done
                block = following
            # Inside the try: the protocol state is reset below like any failed exchange.
            raise CardError(
                f"the card's T=1 exchange did not converge in {T1_MAX_ROUNDS} blocks (it "
                "keeps asking, e.g. S(IFS) or S(WTX) requests, without answering)",
                reader=self.name, slot=s.index, pcsc_code="SCARD_F_COMM_ERROR")
        except BaseException:
            if t1.state.value != "idle":
                # Abandoned mid-exchange (timeout, bad reply, card gone): the next APDU
                # starts clean; sequence numbers that drifted from the card's are T=1
                # error recovery's job (R-blocks, then RESYNCH).
                t1.reset()
            raise
        finally:
            if held:
                self._busy.release()

    def _apdu_level(self, s: _Slot, apdu: bytes, ceiling: float,
                    level: ExchangeLevel) -> bytes:
        deadline = _monotonic() + ceiling
        room = (self._engine.max_message_length or 65546) - HEADER_SIZE
        if level is _SHORT_APDU:
            if len(apdu) > min(room, 261):
                raise UsageError(
                    f"APDU of {len(apdu)} bytes does not fit a short-APDU reader "
                    "(at most 261 bytes: 4 header + Lc + 255 data + Le)", reader=self.name)
            return self._xfr(s, apdu, deadline)[HEADER_SIZE:]
        held = self._hold(deadline)
        try:
            if len(apdu) <= room:  # one message: the common case, no chaining plumbing
                frame = self._xfr(s, apdu, deadline, held=held)
                if frame[9] == _CHAIN_COMPLETE:
                    return frame[HEADER_SIZE:]
                return self._chained_rest(s, frame, deadline, held)
            chain = s.apdu_chain
            if chain is None or chain.chunk != max(1, room):
                chain = s.apdu_chain = Chain(
                    CHAIN_EXTENDED, chunk=max(1, room), slot=s.index,
                    max_length=self._engine.max_message_length,
                    resp_cap=CHAINED_RESPONSE_LIMIT)
            try:
                return self._pump(s, chain, chain.first(self._engine.next_seq(), apdu),
                                  deadline, held)
            except _LeftChain as left:
                frame = left.reply
            if chain.phase == 0:
                self._recover()
                raise ProtocolError(
                    f"reader answered bChainParameter 0x{frame[9]:02X} to a command "
                    "piece instead of asking for the next one (0x10)", reader=self.name,
                    slot=s.index)
            joined = ChainedResponse()
            if chain.phase == 2:  # pieces 0x01 (0x03...) taken: the next one broke the chain
                joined.add(0x01, chain.response())
            return self._chained_rest(s, frame, deadline, held, joined)
        finally:
            if held:
                self._busy.release()

    def _chained_rest(self, s: _Slot, frame: bytes, deadline: float, held: bool = False,
                      joined: ChainedResponse | None = None) -> bytes:
        """Ask for the rest of a chained response (wLevelParameter 0x10) and join it;
        ``joined``: the pieces taken so far."""
        if joined is None:
            joined = ChainedResponse()
        add = joined.add
        done = add(frame[9], frame[HEADER_SIZE:])
        for _ in range(70_000):
            if done:
                return joined.result()
            frame = self._xfr(s, b"", deadline, level=_CONTINUE_RESPONSE, held=held)
            done = add(frame[9], frame[HEADER_SIZE:])
        raise ProtocolError("chained response never ended", reader=self.name, slot=s.index)

    # --- card state changes -----------------------------------------------------------

    def _power_off(self, s: _Slot) -> None:
        with s.state_lock:
            s.generation += 1
            s.forget_card()
        self._command(self._engine.power_off(s.index), wait=READER_WAIT,
                      ceiling=READER_WAIT * 2, check=False)

    def _eject(self, s: _Slot) -> None:
        if self.descriptor.dwMechanical & 0x02:
            with contextlib.suppress(SlotError):
                self._command(self._engine.mechanical(s.index, MechanicalFunction.EJECT),
                              wait=READER_WAIT, ceiling=READER_WAIT * 2)
        self._power_off(s)


_OPTIONS = frozenset({
    "timeout", "poll_interval", "events", "allow_bad_firmware", "check_tck",
    "auto_get_response", "ifsd", "quirks", "open_timeout",
})

#: IccPowerOn errors after which the next (lower) voltage is worth trying.
_VOLTAGE_FALLBACK = frozenset({
    SlotErrorCode.ICC_MUTE, SlotErrorCode.ICC_CLASS_NOT_SUPPORTED, 0x07,  # bPowerSelect
    SlotErrorCode.XFR_PARITY_ERROR, SlotErrorCode.BAD_ATR_TS, SlotErrorCode.BAD_ATR_TCK,
})


def _pin_apdu(template: bytes, filler: bytes, reader: str) -> bytes:
    """The APDU template for the pinpad: a header gets the PIN blocks' padding as data."""
    if len(template) == 4:
        return template + bytes((len(filler),)) + filler
    if len(template) < 5 or len(template) != 5 + template[4]:
        raise UsageError(
            f"PIN APDU template must be CLA INS P1 P2 or a whole short APDU with Lc and data, "
            f"got {template.hex(' ')}", reader=reader)
    return template


def _protocol_number(protocol: Any, reader: str | None = None,
                     slot: int | None = None) -> int | None:
    if protocol is None:
        return None
    if isinstance(protocol, str):
        text = protocol.strip().upper().replace(" ", "")
        if text in ("T=0", "T0", "0"):
            return 0
        if text in ("T=1", "T1", "1"):
            return 1
    elif isinstance(protocol, int) and not isinstance(protocol, bool) and protocol in (0, 1):
        return protocol
    raise UsageError(f"protocol must be None, 0, 1, 'T=0' or 'T=1', not {protocol!r}",
                     reader=reader, slot=slot)


# --- checks of what callers pass (UsageError, never TypeError, and nothing sent) ---------


def _as_apdu(value: Any, reader: str | None, slot: int | None) -> bytes:
    """A command APDU as bytes, or UsageError (see :func:`_as_bytes`)."""
    return _as_bytes(value, "the APDU", reader, slot)


def _as_seconds(value: Any, what: str, reader: str | None = None, slot: int | None = None,
                *, zero: bool = False) -> float:
    """A finite, positive number of seconds (``zero``: 0 allowed), or UsageError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{what} must be a number of seconds, not {value!r}", reader=reader,
                         slot=slot)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        limit = "0 or more" if zero else "more than 0"
        raise UsageError(f"{what} must be a finite number of seconds, {limit}; got {value!r}",
                         reader=reader, slot=slot)
    return seconds


def _as_flag(value: Any, what: str, reader: str | None = None) -> bool:
    """True/False (or 1/0), or UsageError: ``bool("no")`` would be True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise UsageError(f"{what} must be True or False, not {value!r}", reader=reader)


# --- the card handle -------------------------------------------------------------------


class Card:
    """A handle on the card in one slot. Obtain with ``Reader.connect``."""

    def __init__(self, reader: Reader, slot: _Slot, mode: str) -> None:
        self.reader = reader
        self._s = slot
        self.slot = slot.index
        self.mode = mode
        self._generation = -1
        self._presence = -1
        self._connected = False
        #: Calls of this handle in flight (any thread), and whether cancel() asked them
        #: to stop; the flag is cleared when the last of them ends.
        self._calls = 0
        self._cancel = False
        self._calls_lock = threading.Lock()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<Card {self.reader.name!r} slot {self.slot} {self.protocol} {state}>"

    def __enter__(self) -> Card:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connected and not self.reader._inherited and \
                self.reader._pid == os.getpid() and not self.reader.closed:
            with contextlib.suppress(CCIDError):
                self.disconnect()
        self._release()

    # --- bookkeeping ------------------------------------------------------------------

    def _enter(self, ceiling: float) -> float:
        """Start one call of this handle: take the slot within ``ceiling`` seconds and
        return the time left. Pair with :meth:`_leave`.

        Another handle's transaction holds the slot: wait for its end (other threads), or
        refuse at once in the transaction's own thread (it could only wait for itself).
        """
        s = self._s
        owner = s.owner
        if owner is not None and owner is not self and \
                s.owner_thread == threading.get_ident():
            raise SharingViolationError(
                "another handle on this card holds a transaction in this thread; use that "
                "handle, or end its transaction first", reader=self.reader.name,
                slot=self.slot)
        with self._calls_lock:
            self._calls += 1
        tls = self.reader._tls
        tls.card = self
        try:
            if s.lock.acquire(False):
                return ceiling
            return self._wait_slot(ceiling)
        except BaseException:
            tls.card = None
            self._done()
            raise

    def _wait_slot(self, ceiling: float) -> float:
        """Wait for the slot lock held by another thread; the ceiling left once taken."""
        s = self._s
        start = _monotonic()
        end = start + ceiling
        while True:
            left = end - _monotonic()
            if left <= 0:
                owner = s.owner
                if owner is not None and owner is not self:
                    raise SharingViolationError(
                        f"another handle holds a transaction on this card; waited the "
                        f"call's timeout of {ceiling:g} s for it to end",
                        reader=self.reader.name, slot=self.slot)
                raise ReaderTimeoutError(
                    f"the slot stayed busy with another thread's call for the call's timeout "
                    f"of {ceiling:g} s", reader=self.reader.name, slot=self.slot)
            if s.lock.acquire(timeout=min(left, CANCEL_SLICE)):
                return max(0.0, end - _monotonic())
            if self._cancel:
                raise OperationCancelledError(
                    "the call was cancelled (Card.cancel()) while it waited for the slot",
                    reader=self.reader.name, slot=self.slot)
            self.reader._check_usable()

    def _leave(self) -> None:
        """End a call started by :meth:`_enter` (the slot lock is released)."""
        self.reader._tls.card = None
        self._s.lock.release()
        self._done()

    def _done(self) -> None:
        with self._calls_lock:
            self._calls -= 1
            if not self._calls:
                self._cancel = False

    def _adopt(self) -> None:
        s = self._s
        with s.state_lock:
            s.handles.add(self)
            if self.mode == "exclusive":
                s.exclusive = self
            self._generation = s.generation
            self._presence = s.presence
        self._connected = True

    def _release(self) -> None:
        s = self._s
        with s.state_lock:
            s.handles.discard(self)
            if s.exclusive is self:
                s.exclusive = None
        self._connected = False

    def _check(self) -> None:
        """Refuse before anything is sent when the card changed under this handle."""
        reader = self.reader
        if reader._inherited or reader._closed or reader._removed or (
                not _AT_FORK and reader._pid != os.getpid()):
            reader._check_usable()
        if not self._connected:
            raise UsageError("the card handle is disconnected", reader=self.reader.name,
                             slot=self.slot)
        if self.mode == "direct":
            return
        s = self._s
        if s.presence != self._presence:
            raise CardRemovedError("the card was removed since this handle connected; "
                                   "connect again", reader=self.reader.name, slot=self.slot)
        if s.generation != self._generation:
            raise CardResetError("the card was reset or powered off by someone else; call "
                                 "reconnect()", reader=self.reader.name, slot=self.slot)

    # --- properties -------------------------------------------------------------------

    @property
    def atr(self) -> ATR | None:
        """The parsed ATR (``bytes(card.atr)`` for the raw bytes); None in direct mode."""
        return self._s.atr if self._generation == self._s.generation else None

    @property
    def protocol(self) -> str | None:
        """"T=0" or "T=1" (None in direct mode)."""
        p = self._s.protocol
        return None if p is None else f"T={p}"

    @property
    def connected(self) -> bool:
        return self._connected

    # --- operations -------------------------------------------------------------------

    def transmit(self, apdu: bytes, *, timeout: float | None = None,
                 raw: bool = False) -> bytes:
        """Send a command APDU; return response data + SW1 SW2.

        ``raw=True`` (T=0 only) returns 61xx / 6Cxx as the card gave them.
        """
        reader = self.reader
        if type(apdu) is not bytes:
            apdu = _as_apdu(apdu, reader.name, self.slot)
        if self.mode == "direct":
            raise UsageError("a direct-mode handle cannot transmit APDUs", reader=reader.name,
                             slot=self.slot)
        if len(apdu) < 4 or len(apdu) > MAX_APDU_LENGTH:
            raise UsageError(
                f"APDU of {len(apdu)} bytes is shorter than its 4-byte header" if len(apdu) < 4
                else f"APDU of {len(apdu)} bytes is longer than any command APDU (at most "
                f"{MAX_APDU_LENGTH}: 4 header + 3 Lc + 65535 data + 2 Le)",
                reader=reader.name, slot=self.slot)
        ceiling = reader.timeout if timeout is None else _as_seconds(timeout, "timeout",
                                                                     reader.name, self.slot)
        if _trace.enabled:  # the one trace test of an APDU when tracing is off
            with _trace.span(reader.name, "Card.transmit"):
                return self._transmit(apdu, ceiling, raw)
        return self._transmit(apdu, ceiling, raw)

    def _transmit(self, apdu: bytes, ceiling: float, raw: bool) -> bytes:
        reader = self.reader
        s = self._s
        ceiling = self._enter(ceiling)
        try:
            self._check()
            try:
                return reader._transmit(s, apdu, ceiling, raw)
            except NoCardError as exc:
                reader._notify_slot(self.slot, False, True)
                raise CardRemovedError(f"the card was removed ({exc.message})",
                                       reader=reader.name, slot=self.slot) from exc
            except SlotError as exc:
                if exc.bStatus is not None and exc.bStatus & 0x03 == ICCStatus.INACTIVE:
                    with s.state_lock:
                        s.generation += 1
                        s.forget_card()
                    raise CardResetError(
                        f"the card is no longer powered ({exc.message}); call reconnect()",
                        reader=reader.name, slot=self.slot) from exc
                raise
            except (ProtocolError, CardMuteError) as exc:
                # T=1 giving up, or a mute card: a card pulled out or swapped mid-exchange
                # looks like this; say so when it is what happened.
                changed = reader._card_changed(s, self._generation, self._presence, exc)
                if changed is None:
                    raise
                raise changed from exc
        finally:
            self._leave()

    def cancel(self) -> None:
        """End this handle's calls in flight in other threads (as PC/SC's SCardCancel).

        Safe from any thread. A transmit waiting for the card, or a call waiting for the
        slot, ends within about ``CANCEL_SLICE`` seconds with OperationCancelledError; a
        command in flight is aborted (CCID ABORT) exactly as after a timeout, so the
        reader and the card stay usable. Without a call in flight it does nothing (the
        next call is not affected).
        """
        with self._calls_lock:
            if self._calls:
                self._cancel = True

    @contextlib.contextmanager
    def transaction(self, *, timeout: float | None = None) -> Iterator[Card]:
        """Hold the card for a sequence of APDUs, as PC/SC's SCardBeginTransaction.

        While the block runs, calls of every other handle on this card wait for its end,
        each within its own timeout: a call that runs out of time waiting raises
        SharingViolationError (pcsc-lite answers SCARD_E_SHARING_VIOLATION to another
        handle during a transaction, and its client library retries until the lock goes).
        In the transaction's own thread another handle cannot wait for it, so its calls
        raise SharingViolationError at once. ``timeout`` (default: the reader's) bounds the
        wait for the transaction to begin; ``cancel()`` ends that wait too.
        """
        reader = self.reader
        s = self._s
        ceiling = reader.timeout if timeout is None else _as_seconds(timeout, "timeout",
                                                                     reader.name, self.slot)
        self._enter(ceiling)
        reader._tls.card = None
        self._done()  # a transaction holds the slot, it is not a call in flight
        try:
            self._check()
            owner, thread = s.owner, s.owner_thread
            s.owner, s.owner_thread = self, threading.get_ident()
            try:
                yield self
            finally:
                s.owner, s.owner_thread = owner, thread
        finally:
            s.lock.release()

    def reset(self, cold: bool = False, *, protocol: Any = None) -> None:
        """Reset the card (warm by default) and renegotiate; other handles see CardResetError."""
        reader = self.reader
        s = self._s
        wanted = _protocol_number(protocol, reader.name, self.slot)
        ceiling = self._enter(reader.timeout)
        try:
            reader._check_usable()
            if not self._connected:
                raise UsageError("the card handle is disconnected", reader=reader.name,
                                 slot=self.slot)
            if cold and s.powered:
                reader._power_off(s)
            if wanted is None and s.protocol is not None and self._generation == s.generation:
                wanted = s.protocol
            reader._power_up(s, wanted, ceiling)
            with s.state_lock:
                self._generation = s.generation
                self._presence = s.presence
        finally:
            self._leave()

    def reconnect(self, protocol: Any = None) -> None:
        """Accept a reset or a new card: power it if needed and take the new generation."""
        reader = self.reader
        s = self._s
        wanted = _protocol_number(protocol, reader.name, self.slot)
        ceiling = self._enter(reader.timeout)
        try:
            reader._check_usable()
            if not self._connected:
                raise UsageError("the card handle is disconnected", reader=reader.name,
                                 slot=self.slot)
            if self.mode != "direct" and (not s.powered or
                                          (wanted is not None and wanted != s.protocol)):
                reader._power_up(s, wanted, ceiling)
            with s.state_lock:
                self._generation = s.generation
                self._presence = s.presence
        finally:
            self._leave()

    def disconnect(self, disposition: Disposition = "leave") -> None:
        """Release the handle; "reset", "unpower" or "eject" act on the card first."""
        if disposition not in ("leave", "reset", "unpower", "eject"):
            raise UsageError(f"disposition must be leave, reset, unpower or eject, "
                             f"not {disposition!r}", reader=self.reader.name, slot=self.slot)
        if not self._connected:
            return
        reader = self.reader
        s = self._s
        try:
            if disposition != "leave" and self.mode != "direct":
                with s.lock:
                    reader._check_usable()
                    if disposition == "reset":
                        reader._power_up(s, s.protocol, reader.timeout)
                    elif disposition == "unpower":
                        reader._power_off(s)
                    else:
                        reader._eject(s)
        finally:
            self._release()

    def escape(self, data: bytes, *, timeout: float | None = None) -> bytes:
        """PC_to_RDR_Escape on this handle's slot."""
        self.reader._check_usable()
        return self.reader.escape(data, self.slot, timeout=timeout)

    # --- PIN entry on the reader's pinpad ---------------------------------------------

    def verify_pin(self, apdu_template: bytes, *, pin_format: PinFormat = "ascii",
                   min_digits: int | None = None, max_digits: int | None = None,
                   timeout: float = 30.0) -> bytes:
        """Let the user type the PIN on the reader's pinpad; return the card's response.

        ``apdu_template``: the VERIFY command, either its 4-byte header (``00 20 00 80``:
        the PIN block of ``pin_format`` is appended) or a whole APDU whose data starts with
        the block's padding. ``min_digits`` / ``max_digits`` default to what the reader's
        firmware says (Gemalto firmware features), else 4 and 12 (at most what the block
        holds). ``timeout``: seconds the user has (1..255). The response (data + SW1 SW2)
        is returned as by ``transmit``; 63Cx means a wrong PIN. Raises UsageError when the
        reader has no usable pinpad, PinCancelledError / PinTimeoutError when the user
        cancels or does not finish.
        """
        return self._pin_operation(0, apdu_template, pin_format, min_digits, max_digits,
                                   timeout, confirm=False, current=True)

    def modify_pin(self, apdu_template: bytes, *, pin_format: PinFormat = "ascii",
                   min_digits: int | None = None, max_digits: int | None = None,
                   confirm: bool = True, current: bool = True,
                   timeout: float = 30.0) -> bytes:
        """Let the user change the PIN on the pinpad (CHANGE REFERENCE DATA).

        ``apdu_template``: the command's 4-byte header (``00 24 00 80``: the current PIN's
        block, then the new PIN's, are appended) or a whole APDU. ``current``: the user
        types the current PIN first; ``confirm``: the new PIN twice. Other arguments and
        errors as ``verify_pin``.
        """
        return self._pin_operation(1, apdu_template, pin_format, min_digits, max_digits,
                                   timeout, confirm=confirm, current=current)

    def _pin_operation(self, operation: int, template: bytes, pin_format: str,
                       min_digits: int | None, max_digits: int | None, timeout: float,
                       *, confirm: bool, current: bool) -> bytes:
        from dataclasses import asdict

        from ccid.messages import PIN_OPERATION, PINModify, PINVerify

        reader = self.reader
        block = PIN_FORMATS.get(pin_format) if isinstance(pin_format, str) else None
        if block is None:
            raise UsageError(f"pin_format must be one of {', '.join(PIN_FORMATS)}, not "
                             f"{pin_format!r}", reader=reader.name, slot=self.slot)
        if self.mode == "direct":
            raise UsageError("a direct-mode handle cannot verify a PIN", reader=reader.name,
                             slot=self.slot)
        needed = PINSupport.VERIFY if operation == 0 else PINSupport.MODIFY
        reader._require_pinpad(needed, self.slot)
        timeout = _as_seconds(timeout, "PIN entry timeout", reader.name, self.slot)
        if not 1 <= timeout <= 255:
            raise UsageError(f"PIN entry timeout must be 1..255 s, got {timeout}",
                             reader=reader.name, slot=self.slot)
        for what, digits_given in (("min_digits", min_digits), ("max_digits", max_digits)):
            if digits_given is not None and (isinstance(digits_given, bool) or
                                             not isinstance(digits_given, int)):
                raise UsageError(f"{what} must be None or an integer, not {digits_given!r}",
                                 reader=reader.name, slot=self.slot)
        lo, hi = reader._pin_digits(block, min_digits, max_digits)
        blocks = 2 if operation == 1 and current else 1
        apdu = _pin_apdu(_as_bytes(template, "the PIN APDU template", reader.name, self.slot),
                         block.filler * blocks, reader.name)
        features = reader.firmware_features
        validation = getattr(features, "entry_validation_condition", 0) or 0x02
        digits = (lo << 8) | hi
        structure: PINVerify | PINModify
        if operation == 0:
            structure = PINVerify(
                bTimeOut=int(timeout), bmFormatString=block.format_string,
                bmPINBlockString=block.block_string, bmPINLengthFormat=block.length_format,
                wPINMaxExtraDigit=digits, bEntryValidationCondition=validation,
                bNumberMessage=1, bMsgIndex=_MSG_ENTER, abPINApdu=apdu)
        else:
            shown = [_MSG_ENTER] if current else []
            shown += [_MSG_NEW, _MSG_CONFIRM] if confirm else [_MSG_NEW]
            indexes = [*shown, 0, 0][:3]
            structure = PINModify(
                bTimeOut=int(timeout), bmFormatString=block.format_string,
                bmPINBlockString=block.block_string, bmPINLengthFormat=block.length_format,
                bInsertionOffsetOld=0, bInsertionOffsetNew=len(block.filler) if current else 0,
                wPINMaxExtraDigit=digits, bConfirmPIN=int(confirm) | (int(current) << 1),
                bEntryValidationCondition=validation, bNumberMessage=len(shown),
                bMsgIndex1=indexes[0], bMsgIndex2=indexes[1],
                bMsgIndex3=indexes[2] if len(shown) >= 3 else None, abPINApdu=apdu)
        payload = bytes(PIN_OPERATION.build(
            {"bPINOperation": operation, "abPINDataStructure": asdict(structure)}))
        s = self._s
        name = "Card.verify_pin" if operation == 0 else "Card.modify_pin"
        span = _trace.span(reader.name, name) if (
            _trace is not None and _trace.enabled) else _NO_SPAN
        with span:
            self._enter(reader.timeout + float(timeout))
            try:
                self._check()
                if reader.descriptor.exchange_level == ExchangeLevel.TPDU and s.protocol == 1:
                    from ccid.pinpad_t1 import secure_t1  # the T=1 prologue and the card's block

                    response = secure_t1(reader, s, payload, len(apdu), float(timeout))
                else:
                    response = reader._secure(s, payload, float(timeout))
            finally:
                self._leave()
        if len(response) == 2 and response[0] == 0x61 and (
                reader.descriptor.exchange_level == ExchangeLevel.TPDU):
            # T=0 at TPDU level: the reader hands back 61xx; fetch the rest.
            return self.transmit(bytes((apdu[0], 0xC0, 0x00, 0x00, response[1])))
        return response

