"""Finding and opening readers: enumeration, selectors, the open-reader registry, the fork
hook, and what an open needs from the database (quirks, firmware refusal, data rates).

A reader is open at most once per process (per pyusb backend and USB path): a second open
gets SharingViolationError, as a second SCardConnect on an exclusive reader would. After
fork() the child must not touch the parent's USB handles: the at-fork hook marks every
open reader inherited, and its calls raise UsageError naming the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ccid.constants import HEADER_SIZE, ClassRequest, ExchangeLevel
from ccid.descriptor import CCIDDescriptor, parse_clock_frequencies, parse_data_rates
from ccid.errors import (
    CCIDError,
    DatabaseError,
    ReaderError,
    ReaderRemovedError,
    ReaderTimeoutError,
    SharingViolationError,
    TransportError,
    UnsupportedReaderError,
    UsageError,
)
from ccid.transport.usb import UsbInterface, UsbTransport, find_interfaces

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "MIN_MESSAGE_LENGTH",
    "QUIRK_ESCAPE_TIMEOUT",
    "QuirkContext",
    "Quirks",
    "ReaderInfo",
    "interface_report",
    "list_readers",
    "make_inert",
    "message_limit",
    "read_rates",
    "register",
    "select",
    "unregister",
]

log = logging.getLogger("ccid.reader")

#: Short timeout for quirk escapes at open: a reader that never answers them must not hang us.
QUIRK_ESCAPE_TIMEOUT: Final = 1.0
#: Largest CCID message: the header and an extended APDU (CCID 1.1 dwMaxCCIDMessageLength
#: "261 + 10 .. 65544 + 10"); a larger declaration is capped (and logged).
MAX_MESSAGE_LENGTH: Final = HEADER_SIZE + 65544
#: Smallest declaration the session can work with: a header and a 5-byte command.
MIN_MESSAGE_LENGTH: Final = HEADER_SIZE + 5


# --- what is on the bus ---------------------------------------------------------------


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

    @property
    def usb(self) -> UsbInterface:
        """The USB interface behind this reader (endpoints, raw descriptor, device)."""
        return self._interface


def list_readers(backend: Any = None) -> list[ReaderInfo]:
    """Every CCID reader interface on the bus (no interface is claimed)."""
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


def select(infos: list[ReaderInfo], selector: Any) -> ReaderInfo:
    """The reader ``selector`` names: an index, ``"VID:PID"``, a serial, a USB path, a
    name or a part of one, or a ReaderInfo."""
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


# --- the registry and the fork hook ---------------------------------------------------


class Inheritable(Protocol):
    """An open reader, as the fork hook sees it."""

    def mark_inherited(self) -> None: ...


_open_readers: weakref.WeakSet[Any] = weakref.WeakSet()
#: Readers open in this process, by (id of their pyusb backend, USB path): two backends
#: (two virtual buses) may both have a ``1-1:1.0``; the libusb default backend is one
#: object, so a real reader opened twice still conflicts.
_registry: dict[tuple[int, str], weakref.ref[Any]] = {}
_registry_lock = threading.Lock()


def register(reader: Any, info: ReaderInfo) -> tuple[int, str]:
    """Record ``reader`` as the open reader of ``info``; its key for :func:`unregister`.
    SharingViolationError when it is open already (and not closed)."""
    device = info.usb.device
    backend = getattr(device, "backend", None) if device is not None else None
    key = (id(backend), info.usb_path)
    with _registry_lock:
        held = _registry.get(key)
        other = held() if held is not None else None
        if other is not None and not other.closed:
            raise SharingViolationError(
                "the reader is already open in this process; close it first or share "
                "the Reader object", reader=info.name)
        _registry[key] = weakref.ref(reader)
    _open_readers.add(reader)
    return key


def unregister(reader: Any, key: tuple[int, str] | None) -> None:
    """Forget ``reader`` (safe to repeat)."""
    with _registry_lock:
        if key is not None:
            ref = _registry.get(key)
            if ref is not None and ref() in (reader, None):
                del _registry[key]
    _open_readers.discard(reader)


def _after_fork_in_child() -> None:
    # A parent thread may have held the lock at fork(): the child starts with a free one
    # (it is the only thread there, nothing else can hold it now).
    global _registry_lock
    _registry_lock = threading.Lock()
    # The child shares the parent's USB file descriptors: never touch them from here.
    for reader in list(_open_readers):
        reader.mark_inherited()
    _registry.clear()


#: pyusb objects inherited from the parent, kept alive for the child's whole life: their
#: finalizers are detached, and no collection may reach them either.
_inherited_usb: list[Any] = []


def make_inert(info: ReaderInfo, transport: UsbTransport | None) -> None:
    """Detach pyusb's own finalizers from the parent's device and backend: run in a fork
    child (at exit, on collection) they would release the interface and close the handle
    the child shares with its parent (Linux usbfs: the parent's claim goes with it)."""
    device = info.usb.device
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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- what the database says about a reader ------------------------------------------


def _quirks_for(info: ReaderInfo, atr: bytes | None = None) -> list[Any]:
    from ccid import database

    usb = info.usb
    try:
        return list(database.quirks_for(info.vid, info.pid, bcd_device=info.bcd_device,
                                        interface=info.interface,
                                        interface_protocol=usb.interface_protocol, atr=atr))
    except DatabaseError as exc:
        # A broken database must not make every reader unusable: open without quirks.
        log.warning("reader database unavailable, no quirks applied: %s", exc)
        return []


class QuirkContext:
    """What quirks may use of a reader being opened (``ccid.quirks.QuirkContext``)."""

    def __init__(self, info: ReaderInfo, name: str, state: MutableMapping[str, object],
                 escape: Callable[..., bytes], warn: Callable[[str], None]) -> None:
        self.reader_name = name
        self.vid = info.vid
        self.pid = info.pid
        self.bcd_device = info.bcd_device
        self.interface = info.interface
        self.state = state
        self._escape = escape
        self._warn = warn
        #: An escape went unanswered: the reader may be wedged, ask nothing more.
        self.unanswered = False

    def escape(self, data: bytes, timeout: float) -> bytes:
        if self.unanswered:
            raise ReaderTimeoutError("the reader stopped answering escapes",
                                     reader=self.reader_name)
        try:
            return self._escape(data, 0, timeout=min(timeout, QUIRK_ESCAPE_TIMEOUT))
        except ReaderTimeoutError:
            self.unanswered = True
            raise

    def warn(self, message: str) -> None:
        self._warn(message)


class Quirks:
    """The quirks of one open reader and how the session calls their hooks."""

    def __init__(self, info: ReaderInfo, name: str, *, enabled: bool,
                 escape: Callable[..., bytes], warn: Callable[[str], None]) -> None:
        self.info = info
        self.name = name
        self.enabled = enabled
        #: The reader's own quirks (those matched on VID:PID, firmware, interface).
        self.active: list[Any] = _quirks_for(info) if enabled else []
        #: Results of quirks (e.g. ``gemalto.firmware_features``).
        self.state: dict[str, object] = {}
        self._escape = escape
        self._warn = warn

    def hooks(self, name: str) -> list[Any]:
        """The reader's quirks that implement hook ``name``, in order."""
        return [q for q in self.active if hasattr(q, name)]

    def for_card(self, atr: bytes) -> list[Any]:
        """The card-dependent quirks (matched on the ATR) the reader's list lacks."""
        if not self.enabled:
            return []
        return [q for q in _quirks_for(self.info, bytes(atr)) if q not in self.active]

    def context(self) -> QuirkContext | None:
        """What hooks may use of the reader; None when there is no quirk."""
        if not self.active:
            return None
        return QuirkContext(self.info, self.name, self.state, self._escape, self._warn)

    def check_firmware(self, allow: bool) -> None:
        """Refuse firmware a quirk knows to be broken (UnsupportedReaderError), or warn when
        ``allow`` (``allow_bad_firmware=True``)."""
        from ccid.quirks.generic import firmware_refusal

        for quirk in self.hooks("check_firmware"):
            try:
                reason = quirk.check_firmware(self.info.bcd_device)
            except UnsupportedReaderError as exc:
                reason = exc.message
            if not reason:
                continue
            if allow:
                self._warn(f"{reason} (opened anyway: allow_bad_firmware=True)")
                continue
            raise firmware_refusal(reason, self.name)

    def adjust_descriptor(self, desc: CCIDDescriptor) -> tuple[CCIDDescriptor, list[str]]:
        """The descriptor after the quirks' fixes, and the ids of those that turned the
        declared pinpad off."""
        off: list[str] = []
        for quirk in self.hooks("adjust_descriptor"):
            before = desc.bPINSupport
            desc = quirk.adjust_descriptor(desc)
            if before and not desc.bPINSupport:
                off.append(str(getattr(quirk, "id", quirk)))
        return desc, off

    def after_open(self) -> bool:
        """Run the after-open hooks (failures warn); True when an escape went unanswered
        (the reader may be wedged)."""
        hooks = self.hooks("after_open")
        if not hooks:
            return False
        ctx = self.context()
        assert ctx is not None  # hooks come from the active quirks
        for quirk in hooks:
            try:
                quirk.after_open(ctx)
            except (ReaderRemovedError, SharingViolationError):
                raise
            except CCIDError as exc:
                self._warn(f"{quirk!r} could not complete after open: {exc}")
        return ctx.unanswered


def message_limit(desc: CCIDDescriptor, name: str) -> int:
    """dwMaxCCIDMessageLength as the session uses it: capped at what CCID allows (an
    extended APDU and its header); a reader that cannot carry a command is refused."""
    declared = desc.dwMaxCCIDMessageLength or 0
    if 0 < declared < MIN_MESSAGE_LENGTH:
        raise UnsupportedReaderError(
            f"the reader declares dwMaxCCIDMessageLength {declared}: too small to carry "
            f"any command (at least {MIN_MESSAGE_LENGTH} bytes are needed; CCID requires "
            "271)", reader=name)
    if declared > MAX_MESSAGE_LENGTH:
        log.warning("%s: dwMaxCCIDMessageLength %d is more than CCID allows; using %d",
                    name, declared, MAX_MESSAGE_LENGTH)
        return MAX_MESSAGE_LENGTH
    return declared


def read_rates(transport: UsbTransport, desc: CCIDDescriptor, quirks: Quirks,
               slot_count: int, wait: float, name: str
               ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """GET_DATA_RATES and GET_CLOCK_FREQUENCIES as the descriptor announces them, then the
    per-slot rates after quirks: (data rates, clock frequencies, per-slot data rates)."""
    data_rates: tuple[int, ...] = ()
    clocks: tuple[int, ...] = ()
    if desc.bNumDataRatesSupported > 0:
        try:
            payload = transport.class_request_in(
                ClassRequest.GET_DATA_RATES, 4 * desc.bNumDataRatesSupported, wait)
            data_rates = parse_data_rates(payload, desc.bNumDataRatesSupported)
        except (ReaderError, TransportError) as exc:
            if isinstance(exc, ReaderRemovedError | SharingViolationError):
                raise
            log.info("%s: GET_DATA_RATES failed (%s); using dwMaxDataRate", name, exc)
    if desc.bNumClockSupported > 0:
        try:
            payload = transport.class_request_in(
                ClassRequest.GET_CLOCK_FREQUENCIES, 4 * desc.bNumClockSupported, wait)
            clocks = parse_clock_frequencies(payload, desc.bNumClockSupported)
        except (ReaderError, TransportError) as exc:
            if isinstance(exc, ReaderRemovedError | SharingViolationError):
                raise
            log.info("%s: GET_CLOCK_FREQUENCIES failed (%s)", name, exc)
    # Some readers run other rates on their secondary slots: one list per slot.
    per_slot = []
    for index in range(slot_count):
        rates = data_rates
        for quirk in quirks.hooks("adjust_data_rates"):
            rates = tuple(quirk.adjust_data_rates(rates, slot=index))
        per_slot.append(rates)
    return (per_slot[0] if per_slot else data_rates), clocks, tuple(per_slot)


def interface_report(info: ReaderInfo, transport: UsbTransport, wait: float,
                     notes: list[str]) -> Any:
    """``Reader.report``: the descriptor as declared and the class requests' answers."""
    from ccid.report import InterfaceReport

    intf = info.usb
    desc = intf.descriptor

    def ask(request: ClassRequest, declared: int) -> tuple[tuple[int, ...] | None, str | None]:
        parse = parse_data_rates if request == ClassRequest.GET_DATA_RATES else (
            parse_clock_frequencies)
        try:
            payload = transport.class_request_in(request, 4 * (declared or 256), wait)
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
        notes=list(notes),
    )
