"""The virtual CCID reader: one CCID interface, its slots, and the cards in them.

The model answers every PC_to_RDR message as CCID 1.1 requires, errors included, and
behaves as its class descriptor says (exchange level, automatic features, message length,
slots, busy slots). It does no USB itself: ``ccid.testing.backend`` moves its frames over
virtual bulk and interrupt endpoints. Timing is simulated, not slept: a reply that takes
time (slow card, time extensions) is scheduled and becomes readable when it is due.

Choices where real readers differ, so that tests can rely on them:

* character level: XfrBlock is answered with bError CMD_NOT_SUPPORTED (0x00);
* short APDU level: an extended APDU (or more than 261 bytes) fails with bError 1;
* a command longer than dwMaxCCIDMessageLength fails with bError 1 (offset of dwLength);
* PC_to_RDR_Abort without the ABORT class request is held until that request arrives;
* the card and reader speeds (Fi/Di) must agree for TPDU exchanges, else the exchange
  fails with XFR_PARITY_ERROR, as a reader hearing the card at the wrong baud rate would;
* PC_to_RDR_Secure builds the APDU with the PIN and gives it to ``card.process_apdu``
  whatever the exchange level (the pinpad's own exchange with the card is not modelled).

Firmware that does not do what its descriptor says (for quirk tests), all off by default:

* ``firmware_level``: the exchange level the firmware really runs (the descriptor may
  declare another); ``firmware_max_message``: its real message buffer;
  ``response_chunk``: the largest response part it sends at extended APDU level;
* ``slot_data_rates``: per slot, the rates its hardware really runs when they differ from
  the GET_DATA_RATES list (Fi/Di at other rates are refused by SetParameters and PPS);
  ``max_working_rate``: rates above it are accepted but every exchange at them fails with
  XFR_PARITY_ERROR;
* ``enforce_bwt``: at TPDU level a T=1 card slower than the block waiting time of
  SetParameters' BWI is declared mute (ICC_MUTE, at once: time is simulated);
* pinpad: ``pin_sizes`` (min, max digits the firmware accepts in wPINMaxExtraDigit),
  ``prompts`` (display texts by message index; None: none loaded, the display stays
  blank) and ``displayed`` (what the display showed during each PIN entry).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ccid.constants import (
    HEADER_SIZE,
    REPLY_TYPE,
    CommandStatus,
    ExchangeLevel,
    Features,
    ICCStatus,
    MessageType,
    SlotErrorCode,
)
from ccid.descriptor import CCIDDescriptor, parse_ccid_descriptor
from ccid.errors import DescriptorError, ProtocolError, UsageError
from ccid.framing import build_frame, build_t1_block, check_t1_block
from ccid.protocol.params import DI_TABLE, FI_TABLE
from ccid.testing import faults as F

if TYPE_CHECKING:
    from ccid.testing.backend import VirtualDevice

__all__ = ["CardLike", "EscapeHandler", "PinEntry", "Responder", "VirtualReader"]

M = MessageType
E = SlotErrorCode

_VOLTAGE_BIT = {1: 0x01, 2: 0x02, 3: 0x04}  # bPowerSelect -> bVoltageSupport bit


class CardLike(Protocol):
    """What the reader needs from a card (``ccid.testing.card.VirtualCard`` provides it)."""

    @property
    def atr(self) -> bytes: ...
    @property
    def protocols(self) -> tuple[int, ...]: ...
    @property
    def delay(self) -> float: ...
    def power_on(self, cold: bool = True) -> bytes | None: ...
    def power_off(self) -> None: ...
    def supports_pps(self, request: bytes) -> bytes | None: ...
    def t0_command(self, tpdu: bytes) -> bytes: ...
    def t1_block(self, block: bytes) -> bytes | None: ...
    def process_apdu(self, apdu: bytes) -> bytes: ...


#: An escape handler gets the PC_to_RDR_Escape payload and returns the answer's payload,
#: or an int: the bError of a failed answer.
EscapeHandler = Callable[[bytes], "bytes | int"]
#: ``VirtualReader(responder=...)``: PC_to_RDR frame -> RDR_to_PC frames, or None.
Responder = Callable[[bytes], "list[bytes] | None"]


@dataclass(frozen=True, slots=True)
class PinEntry:
    """What the user types on the virtual pinpad (digits as text)."""

    pin: str
    new_pin: str | None = None
    confirm: str | None = None


@dataclass(frozen=True, slots=True)
class _ATRInfo:
    ta1: int | None
    specific: bool  # TA2 present: specific mode, no PPS
    specific_can_change: bool
    protocols: tuple[int, ...]
    t1_ifsc: int
    t1_bwi_cwi: int
    t1_crc: bool


def _parse_atr(atr: bytes) -> _ATRInfo:
    """The few ATR facts a reader acts on (no TCK check: the reader does not care)."""
    ta1: int | None = None
    specific = can_change = False
    protocols: list[int] = []
    ifsc, bwi_cwi, crc = 0x20, 0x4D, False
    if len(atr) < 2:
        return _ATRInfo(None, False, False, (0,), ifsc, bwi_cwi, crc)
    y = atr[1] >> 4
    pos, i, t_current = 2, 1, 0
    while True:
        ta = tb = tc = td = None
        for bit in (1, 2, 4, 8):
            if y & bit:
                if pos >= len(atr):
                    y = 0
                    break
                value = atr[pos]
                pos += 1
                if bit == 1:
                    ta = value
                elif bit == 2:
                    tb = value
                elif bit == 4:
                    tc = value
                else:
                    td = value
        if i == 1 and ta is not None:
            ta1 = ta
        if i == 2 and ta is not None:
            specific = True
            can_change = not (ta & 0x80)
            protocols.append(ta & 0x0F)
        if i >= 3 and t_current == 1:
            if ta is not None:
                ifsc = ta
            if tb is not None:
                bwi_cwi = tb
            if tc is not None:
                crc = bool(tc & 1)
        if td is None:
            break
        t_current = td & 0x0F
        if t_current not in protocols and t_current in (0, 1):
            protocols.append(t_current)
        y = td >> 4
        i += 1
    return _ATRInfo(ta1, specific, can_change, tuple(protocols) or (0,), ifsc, bwi_cwi, crc)


@dataclass(slots=True)
class _Slot:
    index: int
    card: Any = None
    active: bool = False
    clock_stopped: bool = False
    protocol: int = 0
    fidi: int = 0x11  # the reader's side of the link
    card_fidi: int = 0x11  # the card's side
    tcckst: int = 0x00
    guard: int = 0x00
    waiting: int = 0x0A
    clock_stop: int = 0x00
    ifsc: int = 0x20
    nad: int = 0x00
    pps_window: bool = False
    clock_khz: int = 0
    data_rate: int = 0
    cmd_chain: bytearray | None = None
    resp_chain: list[bytes] = field(default_factory=list)
    abort_seq: int | None = None  # ABORT class request received for this bSeq
    held_abort: int | None = None  # PC_to_RDR_Abort waiting for its class request
    t0_get_response: int = 0x00
    t0_envelope: int = 0x00


@dataclass(slots=True)
class _Pending:
    due: float
    order: int
    slot: int
    seq: int
    cmd: int
    frame: bytes | None  # None: never answered
    final: bool = True
    open_ended: bool = False  # a piece of a transfer that goes on: no ZLP after it


class VirtualReader:
    """A CCID reader (one USB interface) with ``slot_count`` slots.

    Build it from a corpus dump (``from_descriptor_dump``), from explicit descriptor fields,
    or take a preset (``ccid.testing.presets``). Cards go in with ``insert`` and out with
    ``remove``; faults are armed with ``inject``.

    ``responder`` (optional) sees every complete PC_to_RDR frame before the model and
    before armed faults: it returns the RDR_to_PC frames to answer with (time extensions
    first, the final reply last; an empty list leaves the command unanswered), or None to
    let the model answer. Trace replay (``ccid.testing.replay``) is built on it; tests use
    it to script a reader's answers byte for byte.
    """

    def __init__(
        self,
        descriptor: CCIDDescriptor | Mapping[str, int],
        *,
        vid: int = 0x1209,
        pid: int = 0xCC1D,
        bcd_device: int = 0x0100,
        manufacturer: str | None = "ccid.testing",
        product: str | None = "Virtual CCID Reader",
        serial: str | None = None,
        interface_name: str | None = None,
        data_rates: Sequence[int] = (),
        clocks: Sequence[int] = (),
        data_rates_answer: bytes | str | None = None,
        clocks_answer: bytes | str | None = None,
        has_interrupt: bool = True,
        has_bulk: bool = True,
        interface_class: int = 0x0B,
        interface_subclass: int = 0,
        interface_protocol: int = 0,
        interface_number: int = 0,
        descriptor_after_endpoints: bool = False,
        bulk_packet_size: int = 64,
        interrupt_packet_size: int = 8,
        escape_handler: EscapeHandler | None = None,
        pin_entry: PinEntry | None = None,
        name: str | None = None,
        responder: Responder | None = None,
        firmware_level: ExchangeLevel | None = None,
        firmware_max_message: int | None = None,
        response_chunk: int | None = None,
        slot_data_rates: Mapping[int, Sequence[int]] | None = None,
        max_working_rate: int | None = None,
        enforce_bwt: bool = False,
        pin_sizes: tuple[int, int] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(descriptor, CCIDDescriptor):
            descriptor = CCIDDescriptor.from_fields(descriptor)
        descriptor.to_bytes()  # raises DescriptorError when a field is out of range
        self.descriptor = descriptor
        self.vid, self.pid, self.bcd_device = vid, pid, bcd_device
        self.manufacturer, self.product, self.serial = manufacturer, product, serial
        self.interface_name = interface_name
        self.data_rates = tuple(int(r) for r in data_rates)
        self.clocks = tuple(int(c) for c in clocks)
        #: How GET_DATA_RATES / GET_CLOCK_FREQUENCIES are answered: None (from the list,
        #: stall when empty), raw bytes, "stall" or "timeout".
        self.data_rates_answer = data_rates_answer
        self.clocks_answer = clocks_answer
        self.has_interrupt = has_interrupt
        self.has_bulk = has_bulk
        self.interface_class = interface_class
        self.interface_subclass = interface_subclass
        self.interface_protocol = interface_protocol
        self.interface_number = interface_number
        self.descriptor_after_endpoints = descriptor_after_endpoints
        self.bulk_packet_size = bulk_packet_size
        self.interrupt_packet_size = interrupt_packet_size
        self.escape_handler = escape_handler
        self.pin_entry = pin_entry
        self.name = name or product or "virtual reader"
        #: See the class docstring; may be set or cleared at any time.
        self.responder = responder
        self.firmware_level = firmware_level
        self.firmware_max_message = firmware_max_message
        self.response_chunk = response_chunk
        self.slot_data_rates: dict[int, tuple[int, ...]] = {
            int(k): tuple(int(r) for r in v) for k, v in (slot_data_rates or {}).items()}
        self.max_working_rate = max_working_rate
        self.enforce_bwt = enforce_bwt
        self.pin_sizes = pin_sizes
        self.prompts: list[str] | None = None if prompts is None else list(prompts)
        #: What the pinpad display showed, one list of texts per PIN entry.
        self.displayed: list[list[str]] = []
        #: Payloads of every PC_to_RDR_Escape received, in order.
        self.escapes_seen: list[bytes] = []
        self._mode_switched = False

        lock = threading.RLock()
        #: Bulk side and model state: bulk transfers wait and notify here.
        self.cv = threading.Condition(lock)
        #: Interrupt-IN waiters, on the same lock: woken by interrupt messages, reset and
        #: unplug only, so bulk traffic never wakes a blocked interrupt read (a libusb
        #: interrupt transfer does not wake up for bulk traffic either).
        self.intr_cv = threading.Condition(lock)
        self.device: VirtualDevice | None = None
        self.slots = [_Slot(i) for i in range(descriptor.slot_count)]
        self._faults: list[list[Any]] = []  # [fault, remaining]
        self._pending: list[_Pending] = []
        self._order = 0
        self._last_reply: bytes | None = None
        self.bulk_in: deque[bytes] = deque()  # packets; b"" is a zero-length packet
        self.intr_in: deque[bytes] = deque()
        self._intr_msgs: list[bytearray] = []
        self._out_buf = bytearray()
        self.wedged = False
        self.halted_in = False
        self.halted_out = False
        self.cut_packet = False  # the bulk-IN head packet is the rest of a cut packet
        for slot in self.slots:
            self._reset_params(slot)
        self.commands_seen = 0
        self._wtx_plan: list[int] = []

    # --- construction from data -------------------------------------------------------

    @classmethod
    def from_descriptor_dump(
        cls, entry: Mapping[str, Any], interface: int = 0, **overrides: Any
    ) -> VirtualReader:
        """A reader from one ``readers[]`` element of libccid_reader_descriptors.json.

        ``interface`` indexes ``entry["interfaces"]`` (multi-interface devices).
        """
        dumps = entry.get("interfaces") or [entry]
        if not 0 <= interface < len(dumps):
            raise UsageError(f"dump {entry.get('file')!r} has {len(dumps)} interface(s)")
        dump = dumps[interface]
        itf = dump.get("interface", {})
        n_ep = int(itf.get("bNumEndpoints", 3))
        rates = dump.get("unsigned_data_rates_bps") or dump.get("data_rates_bps") or ()
        clocks = dump.get("unsigned_clock_frequencies_khz") or dump.get(
            "clock_frequencies_khz") or ()
        kwargs: dict[str, Any] = {
            "vid": int(dump.get("idVendor", entry.get("idVendor", 0))),
            "pid": int(dump.get("idProduct", entry.get("idProduct", 0))),
            "bcd_device": int(dump.get("bcdDevice", entry.get("bcdDevice", 0))),
            "manufacturer": dump.get("iManufacturer", entry.get("iManufacturer")),
            "product": dump.get("iProduct", entry.get("iProduct")),
            "interface_name": dump.get("iInterface"),
            "data_rates": [r & 0xFFFFFFFF for r in rates],
            "clocks": [c & 0xFFFFFFFF for c in clocks],
            "data_rates_answer": _answer_from_dump(
                rates, dump.get("data_rates_request_error"), dump.get("notes", ()),
                "GET_DATA_RATES"),
            "clocks_answer": _answer_from_dump(
                clocks, dump.get("clock_request_error"), dump.get("notes", ()),
                "GET CLOCK FREQUENCIES"),
            "has_bulk": n_ep >= 2,
            "has_interrupt": n_ep in (1, 3),
            "interface_class": int(itf.get("bInterfaceClass", 0x0B)),
            "interface_subclass": int(itf.get("bInterfaceSubClass", 0)),
            "interface_protocol": int(itf.get("bInterfaceProtocol", 0)),
            "interface_number": int(itf.get("bInterfaceNumber", interface)),
            "name": entry.get("file"),
        }
        kwargs.update(overrides)
        try:
            descriptor = CCIDDescriptor.from_fields(
                {k: int(v) & 0xFFFFFFFF for k, v in dump.items() if isinstance(v, int)})
        except DescriptorError as exc:
            raise DescriptorError(f"{entry.get('file')}: {exc.message}") from exc
        return cls(descriptor, **kwargs)

    @classmethod
    def from_database(cls, reader_id: str, interface: int | None = None, **overrides: Any
                      ) -> VirtualReader:
        """A reader from the database (``ccid.database``) by ``"VID:PID"``.

        Uses the dumped class descriptor, strings, clocks and data rates; raises UsageError
        when the reader is unknown or has no descriptor dump.
        """
        from ccid import database

        vid, pid = database.parse_vid_pid(reader_id)
        entry = database.lookup(vid, pid, None, interface)
        if entry is None or entry.raw_descriptor is None:
            raise UsageError(f"no descriptor dump for {reader_id} in the reader database")
        kwargs: dict[str, Any] = {
            "vid": vid, "pid": pid,
            "bcd_device": entry.bcd_device if entry.bcd_device is not None else 0x0100,
            "manufacturer": entry.manufacturer, "product": entry.product,
            "data_rates": entry.data_rates, "clocks": entry.clocks_khz,
            "has_interrupt": bool(entry.has_interrupt),
            "interface_class": entry.interface_class if entry.interface_class is not None
            else 0x0B,
            "interface_subclass": entry.interface_subclass or 0,
            "interface_protocol": entry.interface_protocol or 0,
            "interface_number": entry.interface_numbers[0] if entry.interface_numbers else 0,
            "name": entry.name,
        }
        kwargs.update(overrides)
        return cls(parse_ccid_descriptor(entry.raw_descriptor), **kwargs)

    # --- derived facts ----------------------------------------------------------------

    @property
    def slot_count(self) -> int:
        return len(self.slots)

    @property
    def level(self) -> ExchangeLevel:
        """The exchange level the firmware runs (``firmware_level``, else the declared one)."""
        if self.firmware_level is not None:
            return self.firmware_level
        return self.descriptor.exchange_level

    @property
    def features(self) -> int:
        return self.descriptor.dwFeatures

    @property
    def max_message(self) -> int:
        if self.firmware_max_message:
            return self.firmware_max_message
        # Some dumps declare 0: treat it as the CCID minimum (short APDU + header).
        return self.descriptor.dwMaxCCIDMessageLength or 271

    def data_rate_supported(self, rate: int, slot: int | None = None) -> bool:
        """In the slot's own rates (``slot_data_rates``) or, when the descriptor declares
        bNumDataRatesSupported, the GET_DATA_RATES list (±2 bps); else up to dwMaxDataRate.

        bNumDataRatesSupported 0 means any rate from dwDataRate to dwMaxDataRate (CCID 1.1
        table 5.1-1): hosts do not ask GET_DATA_RATES then, and what such readers answer to
        it anyway is no limit (the ACR40T lists rates at 4 MHz, not its 4.8 MHz clock).
        """
        rates = self.data_rates if self.descriptor.bNumDataRatesSupported else ()
        if slot is not None:
            rates = self.slot_data_rates.get(slot, rates)
        if rates:
            return any(abs(r - rate) <= 2 for r in rates)
        top = self.descriptor.dwMaxDataRate or self.descriptor.dwDataRate
        # dwMaxDataRate is often nominal (ICCD tokens: "9600" at 3.58 MHz is 9,624 bps).
        return rate <= top + max(2, top // 100)

    # --- cards ------------------------------------------------------------------------

    def insert(self, card: Any, slot: int = 0) -> None:
        """Put a card in a slot (present, not powered); a NotifySlotChange follows."""
        with self.cv:
            s = self._slot(slot)
            if s.card is not None:
                raise UsageError(f"slot {slot} already holds a card; remove it first")
            s.card = card
            s.active = False
            self._notify_change(slot)

    def remove(self, slot: int = 0) -> Any:
        """Take the card out; a command running on the slot fails with ICC absent."""
        with self.cv:
            s = self._slot(slot)
            card = s.card
            if card is None:
                return None
            s.card = None
            self._deactivate(s)
            self._cut_short(slot, E.ICC_MUTE, ICCStatus.ABSENT)
            self._notify_change(slot)
            self.cv.notify_all()
            return card

    def _cut_short(self, slot: int, error: int, icc: int | None) -> None:
        """A command still running on ``slot`` ends now with ``error``."""
        now = time.monotonic()
        keep: list[_Pending] = []
        for p in self._pending:
            if p.slot == slot and (p.frame is None or p.due > now):
                if not p.final:
                    continue  # a time extension that was never sent
                p.frame = self._fail(p.cmd, slot, p.seq, error, icc)
                p.due = now
            keep.append(p)
        keep.sort(key=lambda p: (p.due, p.order))
        self._pending = keep

    def card(self, slot: int = 0) -> Any:
        """The card in a slot, or None."""
        return self._slot(slot).card

    def hardware_error(self, slot: int = 0, seq: int = 0, code: int = 0x01) -> None:
        """Queue RDR_to_PC_HardwareError on the interrupt endpoint (bHardwareErrorCode)."""
        with self.cv:
            if self.has_interrupt:
                self._intr_msgs.append(bytearray((M.RDR_to_PC_HardwareError, slot, seq, code)))
                self.intr_cv.notify_all()

    # --- faults -----------------------------------------------------------------------

    def inject(self, *faults: F.Fault) -> None:
        """Arm faults (applied in injection order)."""
        with self.cv:
            for fault in faults:
                self._faults.append([fault, fault.count])

    def clear_faults(self) -> None:
        with self.cv:
            self._faults.clear()

    def has_fault(self, kind: type[F.Fault]) -> bool:
        with self.cv:
            return any(isinstance(f, kind) for f, _ in self._faults)

    def _escape_switches(self, payload: bytes) -> None:
        """An escape arrived: log it and disarm the RefuseUntilEscape faults it satisfies."""
        self.escapes_seen.append(payload)
        kept = [item for item in self._faults if not (
            isinstance(item[0], F.RefuseUntilEscape) and payload.startswith(item[0].escape))]
        self._mode_switched = len(kept) != len(self._faults)
        self._faults = kept

    def _take_faults(self, msg_type: int, slot: int, payload: bytes) -> list[F.Fault]:
        taken: list[F.Fault] = []
        for item in self._faults:
            fault, remaining = item
            if isinstance(fault, F.ClaimedElsewhere):
                continue
            if remaining is not None and remaining <= 0:
                continue
            if isinstance(fault, F.RefuseUntilEscape) and msg_type == M.PC_to_RDR_Escape:
                continue  # the escape is what switches the mode: never refused
            if fault.matches(msg_type, slot, payload):
                taken.append(fault)
                if remaining is not None:
                    item[1] = remaining - 1
        self._faults = [i for i in self._faults if i[1] is None or i[1] > 0]
        return taken

    # --- state helpers ----------------------------------------------------------------

    def _slot(self, slot: int) -> _Slot:
        if not 0 <= slot < len(self.slots):
            raise UsageError(f"slot {slot} does not exist (reader has {len(self.slots)})")
        return self.slots[slot]

    def _reset_params(self, s: _Slot) -> None:
        s.protocol = 0
        s.fidi = 0x11
        s.tcckst = 0x00
        s.guard = 0x00
        s.waiting = 0x0A
        s.clock_stop = 0x00
        s.ifsc = 0x20
        s.nad = 0x00
        s.clock_khz = self.descriptor.dwDefaultClock
        s.data_rate = self.descriptor.dwDataRate

    def _deactivate(self, s: _Slot) -> None:
        s.active = False
        s.pps_window = False
        s.cmd_chain = None
        s.resp_chain = []
        s.card_fidi = 0x11
        self._reset_params(s)

    def _icc(self, s: _Slot | None) -> int:
        if s is None or s.card is None:
            return ICCStatus.ABSENT
        return ICCStatus.ACTIVE if s.active else ICCStatus.INACTIVE

    def _notify_change(self, slot: int) -> None:
        if not self.has_interrupt:
            return
        size = (2 * len(self.slots) + 7) // 8
        if self._intr_msgs and self._intr_msgs[-1][0] == M.RDR_to_PC_NotifySlotChange:
            msg = self._intr_msgs[-1]
        else:
            msg = bytearray(1 + size)
            msg[0] = M.RDR_to_PC_NotifySlotChange
            self._intr_msgs.append(msg)
        for i, s in enumerate(self.slots):
            byte, bit = 1 + (2 * i) // 8, (2 * i) % 8
            if s.card is not None:
                msg[byte] |= 1 << bit
            else:
                msg[byte] &= ~(1 << bit) & 0xFF
        byte, bit = 1 + (2 * slot) // 8, (2 * slot) % 8
        msg[byte] |= 1 << (bit + 1)
        self.cv.notify_all()
        self.intr_cv.notify_all()

    def announce_all(self) -> None:
        """Queue a NotifySlotChange with every slot's change bit (as readers do at plug)."""
        with self.cv:
            for i in range(len(self.slots)):
                self._notify_change(i)

    def reset(self) -> None:
        """USB reset: firmware restarts (cards powered off, queues and faults' effects gone)."""
        with self.cv:
            for s in self.slots:
                if s.card is not None and s.active:
                    s.card.power_off()
                self._deactivate(s)
                s.abort_seq = s.held_abort = None
            self._pending.clear()
            self.bulk_in.clear()
            self.intr_in.clear()
            self._intr_msgs.clear()
            self._out_buf.clear()
            self.wedged = self.halted_in = self.halted_out = self.cut_packet = False
            self.cv.notify_all()
            self.intr_cv.notify_all()

    # --- frames -----------------------------------------------------------------------

    @staticmethod
    def _status(cmd: int, icc: int) -> int:
        return (cmd << 6) | icc

    def _reply(self, cmd: int, slot: int, seq: int, status: int, error: int,
               b9: int = 0, data: bytes = b"") -> bytes:
        rtype = REPLY_TYPE.get(cmd, M.RDR_to_PC_SlotStatus)
        return build_frame(rtype, slot, seq, status, error, b9, bytes(data))

    def _fail(self, cmd: int, slot: int, seq: int, error: int, icc: int | None = None) -> bytes:
        if icc is None:
            icc = self._icc(self.slots[slot] if 0 <= slot < len(self.slots) else None)
        return self._reply(cmd, slot, seq, self._status(CommandStatus.FAILED, icc), error)

    def _ok(self, cmd: int, s: _Slot, seq: int, b9: int = 0, data: bytes = b"") -> bytes:
        return self._reply(cmd, s.index, seq, self._status(CommandStatus.OK, self._icc(s)), 0,
                           b9, data)

    def _clock_status(self, s: _Slot) -> int:
        if s.card is None or not s.active:
            return 0
        return 1 if s.clock_stopped else 0

    def _params_data(self, s: _Slot) -> bytes:
        if s.protocol == 1:
            return bytes((s.fidi, s.tcckst | 0x10, s.guard, s.waiting, s.clock_stop,
                          s.ifsc, s.nad))
        return bytes((s.fidi, s.tcckst, s.guard, s.waiting, s.clock_stop))

    # --- the bulk-OUT side --------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes written to bulk-OUT: complete frames are processed (call with cv held)."""
        self._out_buf += data
        transfer_end = len(self._out_buf)
        while len(self._out_buf) >= HEADER_SIZE:
            length = int.from_bytes(self._out_buf[1:5], "little")
            if HEADER_SIZE + length > self.max_message:
                # Too long for the reader: answer at once, drop the rest of this transfer.
                head = bytes(self._out_buf[:HEADER_SIZE])
                del self._out_buf[:transfer_end]
                self._schedule(head[0], head[5], head[6], [(0.0, self._fail(
                    head[0], head[5], head[6], 0x01, self._icc_or_absent(head[5])), True)])
                transfer_end = 0
                continue
            if len(self._out_buf) < HEADER_SIZE + length:
                break
            frame = bytes(self._out_buf[:HEADER_SIZE + length])
            del self._out_buf[:HEADER_SIZE + length]
            transfer_end = max(0, transfer_end - len(frame))
            self.process_frame(frame)

    def _icc_or_absent(self, slot: int) -> int:
        return self._icc(self.slots[slot]) if slot < len(self.slots) else ICCStatus.ABSENT

    def _schedule(self, cmd: int, slot: int, seq: int,
                  frames: Iterable[tuple[float, bytes | None, bool]],
                  open_ended: bool = False) -> None:
        now = time.monotonic()
        for delay, frame, final in frames:
            self._order += 1
            self._pending.append(_Pending(now + delay, self._order, slot, seq, cmd, frame,
                                          final, open_ended and not final))
        self._pending.sort(key=lambda p: (p.due, p.order))
        self.cv.notify_all()

    def _busy_slots(self, now: float) -> set[int]:
        return {p.slot for p in self._pending if p.frame is None or p.due > now}

    def process_frame(self, frame: bytes) -> None:
        """Run one complete PC_to_RDR frame and schedule its reply (cv held)."""
        self.commands_seen += 1
        cmd, slot, seq = frame[0], frame[5], frame[6]
        responder = self.responder
        if responder is not None:
            scripted = responder(frame)
            if scripted is not None:
                last = len(scripted) - 1
                self._schedule(cmd, slot, seq,
                               [(0.0, bytes(r), i == last) for i, r in enumerate(scripted)])
                return
        payload = frame[HEADER_SIZE:]
        if slot >= len(self.slots):
            self._schedule(cmd, slot, seq, [(0.0, self._fail(cmd, slot, seq, 0x05,
                                                             ICCStatus.ABSENT), True)])
            return
        s = self.slots[slot]
        if cmd == M.PC_to_RDR_Abort:
            self._abort_bulk(s, seq)
            return
        now = time.monotonic()
        busy = self._busy_slots(now)
        if slot in busy or len(busy) >= max(1, self.descriptor.bMaxCCIDBusySlots):
            self._schedule(cmd, slot, seq, [(0.0, self._fail(cmd, slot, seq, E.CMD_SLOT_BUSY),
                                             True)])
            return
        if cmd == M.PC_to_RDR_Escape:
            self._escape_switches(bytes(payload))
        taken = self._take_faults(cmd, slot, payload)
        for fault in taken:
            if isinstance(fault, F.Unplug) and fault.stage == "write":
                raise _UnplugNow()
            if isinstance(fault, F.Stall) and fault.endpoint == "out":
                self.halted_out = True
                raise _StallNow()
        delay = 0.0
        pin_fault: int | None = None
        for fault in taken:
            if isinstance(fault, F.CardRemoved):
                self.remove(slot)
            elif isinstance(fault, F.PinCancelled):
                pin_fault = E.PIN_CANCELLED
            elif isinstance(fault, F.PinTimeout):
                pin_fault = E.PIN_TIMEOUT
            elif isinstance(fault, F.SlowCard):
                delay += fault.delay
        reply: bytes | None
        self._wtx_plan = []
        refused = next((f for f in taken if isinstance(f, F.Refuse | F.RefuseUntilEscape)),
                       None)
        if refused is not None:
            reply, card_time = self._fail(cmd, slot, seq, refused.error & 0xFF), 0.0
        else:
            reply, card_time = self._dispatch(cmd, s, seq, frame, payload, pin_fault)
        delay += card_time
        frames: list[tuple[float, bytes | None, bool]] = []
        for multiplier in self._wtx_plan:
            frames.append((0.0, self._reply(
                cmd, slot, seq, self._status(CommandStatus.TIME_EXTENSION, self._icc(s)),
                multiplier & 0xFF), False))
        for fault in taken:
            if isinstance(fault, F.TimeExtension):
                for k in range(fault.times):
                    wtx = self._reply(cmd, slot, seq,
                                      self._status(CommandStatus.TIME_EXTENSION, self._icc(s)),
                                      fault.multiplier & 0xFF)
                    frames.append(((k + 1) * fault.interval, wtx, False))
                delay += fault.times * fault.interval
        for fault in taken:
            if reply is None:
                break
            if isinstance(fault, F.WrongSeq):
                reply = reply[:6] + bytes(((seq + fault.delta) & 0xFF,)) + reply[7:]
            elif isinstance(fault, F.WrongSlot):
                reply = reply[:5] + bytes(((slot + fault.delta) & 0xFF,)) + reply[6:]
            elif isinstance(fault, F.WrongType):
                reply = bytes((fault.msg_type,)) + reply[1:]
            elif isinstance(fault, F.BadLength):
                n = max(0, len(reply) - HEADER_SIZE + fault.delta) & 0xFFFFFFFF
                reply = reply[:1] + n.to_bytes(4, "little") + reply[5:]
            elif isinstance(fault, F.Truncate):
                reply = reply[: fault.keep]
            elif isinstance(fault, F.ChainByte) and len(reply) >= HEADER_SIZE:
                reply = reply[:9] + bytes((fault.value & 0xFF,)) + reply[10:]
            elif isinstance(fault, F.Garbage):
                reply = bytes(fault.data)
            elif isinstance(fault, F.StaleFrame) and self._last_reply is not None:
                frames.append((0.0, self._last_reply, False))
            elif isinstance(fault, F.NoAnswer):
                reply = None
                if fault.wedge:
                    self.wedged = True
        if reply is not None:
            self._last_reply = reply
        trickle = next((f for f in taken if isinstance(f, F.Trickle)), None)
        if trickle is not None and reply is not None:
            # Every piece but the last is "not final": ABORT drops those still to come.
            if trickle.pad > 0 and len(reply) >= HEADER_SIZE:
                n = (int.from_bytes(reply[1:5], "little") + trickle.pad) & 0xFFFFFFFF
                reply = reply[:1] + n.to_bytes(4, "little") + reply[5:] + bytes(trickle.pad)
            step = max(1, trickle.piece)
            cuts = range(0, len(reply), step)
            for k, at in enumerate(cuts):
                frames.append((delay + k * trickle.interval, reply[at:at + step],
                               k == len(cuts) - 1))
        else:
            frames.append((delay, reply, True))
        self._schedule(cmd, slot, seq, frames,
                       open_ended=trickle is not None and trickle.one_transfer)
        for fault in taken:
            if isinstance(fault, F.Stall) and fault.endpoint == "in":
                self.halted_in = True
            if isinstance(fault, F.Unplug) and fault.stage == "reply":
                raise _UnplugAfter()

    def exchange(self, frame: bytes) -> list[bytes]:
        """Run one PC_to_RDR frame without USB; return the replies due now, in order.

        For tests of the model itself, trace replay, and ICCD interfaces whose control
        transport is not emulated. Replies scheduled for later stay queued for bulk-IN.
        """
        with self.cv:
            self.process_frame(bytes(frame))
            now = time.monotonic()
            due = [p for p in self._pending if p.frame is not None and p.due <= now]
            self._pending = [p for p in self._pending if p not in due]
            return [p.frame for p in due if p.frame is not None]

    # --- bulk-IN side -----------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the next scheduled reply becomes readable (None: nothing scheduled)."""
        for p in self._pending:
            if p.frame is not None:
                return p.due
        return None

    def release_due(self) -> None:
        """Move the replies that are due onto the bulk-IN endpoint as packets."""
        now = time.monotonic()
        keep: list[_Pending] = []
        for p in self._pending:
            if p.frame is not None and p.due <= now:
                self._packetize(self.bulk_in, p.frame, self.bulk_packet_size,
                                end=not p.open_ended)
            else:
                keep.append(p)
        self._pending = keep

    def release_interrupts(self) -> None:
        while self._intr_msgs:
            self._packetize(self.intr_in, bytes(self._intr_msgs.pop(0)),
                            self.interrupt_packet_size)

    @staticmethod
    def _packetize(queue: deque[bytes], frame: bytes, mps: int, end: bool = True) -> None:
        for i in range(0, len(frame), mps):
            queue.append(frame[i : i + mps])
        if end and len(frame) % mps == 0:
            queue.append(b"")  # a transfer that fills its last packet ends with a ZLP

    # --- control requests -------------------------------------------------------------

    def class_abort(self, slot: int, seq: int) -> None:
        """The ABORT class request (wValue = bSeq << 8 | bSlot)."""
        with self.cv:
            if slot >= len(self.slots):
                return
            s = self.slots[slot]
            s.abort_seq = seq
            self._cut_short(slot, E.CMD_ABORTED, None)
            s.cmd_chain = None
            s.resp_chain = []
            if s.held_abort == seq:
                s.held_abort = None
                s.abort_seq = None
                self._schedule(M.PC_to_RDR_Abort, slot, seq,
                               [(0.0, self._ok(M.PC_to_RDR_Abort, s, seq, 0), True)])
            self.cv.notify_all()

    def _abort_bulk(self, s: _Slot, seq: int) -> None:
        if s.abort_seq == seq:
            s.abort_seq = None
            self._schedule(M.PC_to_RDR_Abort, s.index, seq,
                           [(0.0, self._ok(M.PC_to_RDR_Abort, s, seq, 0), True)])
        else:
            s.held_abort = seq  # answered when the class request arrives

    def data_rates_payload(self) -> bytes | str:
        """GET_DATA_RATES answer: bytes, or "stall" / "timeout"."""
        return _payload(self.data_rates_answer, self.data_rates)

    def clocks_payload(self) -> bytes | str:
        return _payload(self.clocks_answer, self.clocks)

    # --- command dispatch -------------------------------------------------------------

    def _dispatch(self, cmd: int, s: _Slot, seq: int, frame: bytes, payload: bytes,
                  pin_fault: int | None) -> tuple[bytes, float]:
        """The reply to a command, and how long the card took."""
        if cmd == M.PC_to_RDR_Secure:
            return self._secure(s, seq, frame, payload, pin_fault)
        if cmd == M.PC_to_RDR_GetSlotStatus:
            return self._ok(cmd, s, seq, self._clock_status(s)), 0.0
        handler = _HANDLERS.get(cmd)
        if handler is None:
            return self._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
        return handler(self, s, seq, frame, payload)

    def _power_on(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                  ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_IccPowerOn
        select = frame[7]
        if select > 3:
            return self._fail(cmd, s.index, seq, 7), 0.0
        support = self.descriptor.bVoltageSupport & 0x07
        if select == 0 and not self.features & Features.AUTO_VOLTAGE:
            return self._fail(cmd, s.index, seq, 7), 0.0
        if select and support and not support & _VOLTAGE_BIT[select]:
            return self._fail(cmd, s.index, seq, 7), 0.0
        if s.card is None:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), 0.0
        card_volts = int(getattr(s.card, "voltages", 0x07) or 0x07)
        if select == 0:
            usable = [v for v in (1, 2, 3) if _VOLTAGE_BIT[v] & card_volts
                      and (not support or _VOLTAGE_BIT[v] & support)]
            if not usable:
                return self._fail(cmd, s.index, seq, E.ICC_CLASS_NOT_SUPPORTED), 0.0
            select = usable[0]
        warm = s.active
        delay = float(getattr(s.card, "delay", 0.0) or 0.0)
        if not _VOLTAGE_BIT[select] & card_volts:
            if s.active:
                s.card.power_off()
            self._deactivate(s)
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        atr = s.card.power_on(cold=not warm)
        self._deactivate(s)
        if atr is None:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        atr = bytes(atr)
        s.active = True
        s.clock_stopped = False
        s.pps_window = True
        info = _parse_atr(atr)
        if info.specific and info.ta1 is not None:
            s.card_fidi = info.ta1  # specific mode: the card talks at TA1 at once
        feats = self.features
        if feats & Features.AUTO_CONF_ATR or self.level >= ExchangeLevel.SHORT_APDU:
            protos = [p for p in info.protocols if p in self._card_protocols(s)]
            s.protocol = protos[0] if protos else 0
            if s.protocol == 1:
                s.ifsc, s.waiting = info.t1_ifsc, info.t1_bwi_cwi
                s.tcckst = 0x01 if info.t1_crc else 0x00
            if info.specific:
                s.fidi = s.card_fidi
        if feats & Features.AUTO_PPS_PROPRIETARY and not info.specific and s.pps_window:
            target = info.ta1 if info.ta1 is not None else 0x11
            if target != 0x11 and self._fidi_rate_ok(s, target):
                # Before any SetParameters the PPS is for the card's first protocol.
                self._auto_pps(s, target, info.protocols[0])
        return self._ok(cmd, s, seq, 0, atr), delay

    def _card_protocols(self, s: _Slot) -> tuple[int, ...]:
        protos = getattr(s.card, "protocols", None)
        return tuple(protos) if protos else (0,)

    def _fidi_rate(self, s: _Slot, fidi: int) -> int | None:
        fi, di = FI_TABLE.get(fidi >> 4), DI_TABLE.get(fidi & 0x0F)
        if fi is None or di is None:
            return None
        clock = s.clock_khz or self.descriptor.dwDefaultClock
        return round(clock * 1000 * di / fi)

    def _fidi_rate_ok(self, s: _Slot, fidi: int) -> bool:
        # Fd/Dd (0x11) is the default every reader supports (ISO/IEC 7816-3; CCID dwDataRate
        # declares its rate, often nominally: "9600" at 4 MHz is really 10,753 bps).
        if fidi == 0x11:
            return True
        rate = self._fidi_rate(s, fidi)
        return rate is not None and self.data_rate_supported(rate, s.index)

    def _auto_pps(self, s: _Slot, fidi: int, protocol: int | None = None) -> bool:
        """The reader's own PPS exchange (AUTO_PPS_*) for ``protocol`` (default: the slot's):
        True when the card accepted."""
        request = bytearray((0xFF, 0x10 | (s.protocol if protocol is None else protocol), fidi))
        request.append(request[0] ^ request[1] ^ request[2])
        answer = s.card.supports_pps(bytes(request))
        s.pps_window = False
        if answer is None:
            return False
        answer = bytes(answer)
        if len(answer) >= 3 and answer[1] & 0x10 and answer[2] == fidi:
            s.card_fidi = s.fidi = fidi
            return True
        return False

    def _power_off(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                   ) -> tuple[bytes, float]:
        if s.card is not None and s.active:
            s.card.power_off()
        self._deactivate(s)
        return self._ok(M.PC_to_RDR_IccPowerOff, s, seq, 0), 0.0

    def _get_parameters(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                        ) -> tuple[bytes, float]:
        return self._ok(frame[0], s, seq, s.protocol, self._params_data(s)), 0.0

    def _reset_parameters(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                          ) -> tuple[bytes, float]:
        self._reset_params(s)
        return self._ok(frame[0], s, seq, s.protocol, self._params_data(s)), 0.0

    def _set_parameters(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                        ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_SetParameters
        proto = frame[7]
        # A descriptor naming neither T=0 nor T=1 (MySmartPad: dwProtocols 0x300) is read as
        # both, as the session reads it: such a reader still talks to ISO cards.
        declared = self.descriptor.dwProtocols & 0x03 or 0x03
        if proto not in (0, 1) or not declared & (1 << proto):
            return self._fail(cmd, s.index, seq, 7), 0.0
        if len(payload) != (7 if proto == 1 else 5):
            return self._fail(cmd, s.index, seq, 1), 0.0
        fidi, tcckst, guard, waiting, clock_stop = payload[:5]
        if self._fidi_rate(s, fidi) is None or not self._fidi_rate_ok(s, fidi):
            return self._fail(cmd, s.index, seq, 10), 0.0
        if proto == 0 and tcckst not in (0x00, 0x02):
            return self._fail(cmd, s.index, seq, 11), 0.0
        if proto == 1 and tcckst not in (0x10, 0x11, 0x12, 0x13):
            return self._fail(cmd, s.index, seq, 11), 0.0
        if proto == 1 and waiting >> 4 > 9:
            return self._fail(cmd, s.index, seq, 13), 0.0
        if clock_stop > 3 or (clock_stop and not self.features & Features.CLOCK_STOP):
            return self._fail(cmd, s.index, seq, 14), 0.0
        if proto == 1:
            ifsc, nad = payload[5], payload[6]
            if ifsc in (0x00, 0xFF):
                return self._fail(cmd, s.index, seq, 15), 0.0
            if nad and not self.features & Features.NAD_NOT_ZERO:
                return self._fail(cmd, s.index, seq, 16), 0.0
        feats = self.features
        auto_pps = feats & (Features.AUTO_PPS_CURRENT | Features.AUTO_PPS_PROPRIETARY)
        if s.card is not None and s.active and auto_pps and self.level == ExchangeLevel.TPDU:
            if proto not in self._card_protocols(s):
                return self._fail(cmd, s.index, seq, E.ICC_PROTOCOL_NOT_SUPPORTED), 0.0
            if fidi != s.card_fidi:
                s.protocol = proto
                if not self._auto_pps(s, fidi):
                    return self._fail(cmd, s.index, seq, 10), 0.0
        s.protocol = proto
        s.fidi, s.guard, s.waiting, s.clock_stop = fidi, guard, waiting, clock_stop
        s.tcckst = tcckst & 0x03 if proto == 1 else tcckst
        if proto == 1:
            s.ifsc, s.nad = payload[5], payload[6]
        if self.level >= ExchangeLevel.SHORT_APDU:
            s.card_fidi = fidi  # APDU-level readers negotiate with the card themselves
        if (proto == 1 and feats & Features.AUTO_IFSD and self.level == ExchangeLevel.TPDU
                and s.card is not None and s.active and s.fidi == s.card_fidi):
            self._auto_ifsd(s)
        return self._ok(cmd, s, seq, s.protocol, self._params_data(s)), 0.0

    def _auto_ifsd(self, s: _Slot) -> None:
        ifsd = max(1, min(254, self.descriptor.dwMaxIFSD or 254))
        crc = bool(s.tcckst & 0x01)
        answer = s.card.t1_block(build_t1_block(s.nad, 0xC1, bytes((ifsd,)), crc))
        if answer is not None:
            try:
                check_t1_block(bytes(answer), crc)
            except ProtocolError:  # a bad answer leaves IFSD at its default
                return
        s.pps_window = False

    def _card_wtx(self, s: _Slot) -> None:
        """Time extensions the card asked for (above TPDU level the reader relays them)."""
        take = getattr(getattr(s.card, "faults", None), "take_wtx", None)
        if take is not None:
            self._wtx_plan.extend(int(m) for m in take())

    def _exchange_check(self, s: _Slot, cmd: int, seq: int) -> bytes | None:
        if s.card is None:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE)
        if not s.active:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE)
        return None

    def _xfr_block(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                   ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_XfrBlock
        level = self.level
        if level == ExchangeLevel.CHARACTER:
            return self._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
        err = self._exchange_check(s, cmd, seq)
        if err is not None:
            return err, 0.0
        delay = float(getattr(s.card, "delay", 0.0) or 0.0)
        level_param = frame[8] | frame[9] << 8
        if self.max_working_rate and not (payload[:1] == b"\xff" and s.pps_window):
            rate = self._fidi_rate(s, s.fidi)
            if rate is not None and rate > self.max_working_rate + 2:
                return self._fail(cmd, s.index, seq, E.XFR_PARITY_ERROR), delay
        if level == ExchangeLevel.TPDU:
            return self._tpdu(s, seq, payload, delay)
        s.pps_window = False
        if level == ExchangeLevel.SHORT_APDU:
            if level_param:  # no command or response chaining at this level
                return self._fail(cmd, s.index, seq, 8), 0.0
            if len(payload) > 261 or (len(payload) > 5 and payload[4] == 0):
                return self._fail(cmd, s.index, seq, 1), 0.0
            if len(payload) < 4:
                return self._fail(cmd, s.index, seq, 1), 0.0
            self._card_wtx(s)
            resp = bytes(s.card.process_apdu(bytes(payload)))
            if not resp:
                return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
            if HEADER_SIZE + len(resp) > self.max_message:
                return self._fail(cmd, s.index, seq, E.XFR_OVERRUN), delay
            return self._ok(cmd, s, seq, 0, resp), delay
        return self._extended(s, seq, level_param, payload, delay)

    def _bwt_seconds(self, s: _Slot) -> float:
        """T=1 block waiting time of the slot's parameters (ISO/IEC 7816-3 11.4.3)."""
        clock = (s.clock_khz or self.descriptor.dwDefaultClock or 4000) * 1000.0
        fi = FI_TABLE.get(s.fidi >> 4, 372)
        di = DI_TABLE.get(s.fidi & 0x0F, 1)
        return 11 * fi / (di * clock) + (1 << (s.waiting >> 4)) * 960 * 372 / clock

    def _tpdu(self, s: _Slot, seq: int, payload: bytes, delay: float) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_XfrBlock
        if payload[:1] == b"\xff":
            if not s.pps_window:
                return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
            s.pps_window = False
            answer = s.card.supports_pps(bytes(payload))
            if answer is None:
                return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
            answer = bytes(answer)
            if len(answer) >= 2:
                s.card_fidi = answer[2] if answer[1] & 0x10 and len(answer) > 2 else 0x11
            return self._ok(cmd, s, seq, 0, answer), delay
        s.pps_window = False
        if s.fidi != s.card_fidi:
            return self._fail(cmd, s.index, seq, E.XFR_PARITY_ERROR), delay
        if s.protocol not in self._card_protocols(s):
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        if s.protocol == 1:
            if self.enforce_bwt and delay > self._bwt_seconds(s):
                return self._fail(cmd, s.index, seq, E.ICC_MUTE), 0.0
            block = s.card.t1_block(bytes(payload))
            if block is None:
                return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
            resp = bytes(block)
        else:
            if len(payload) < 5:
                return self._fail(cmd, s.index, seq, 1), 0.0
            resp = bytes(s.card.t0_command(bytes(payload)))
            if not resp:
                return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        if HEADER_SIZE + len(resp) > self.max_message:
            return self._fail(cmd, s.index, seq, E.XFR_OVERRUN), delay
        return self._ok(cmd, s, seq, 0, resp), delay

    def _extended(self, s: _Slot, seq: int, level_param: int, payload: bytes, delay: float
                  ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_XfrBlock
        if level_param == 0x0010:
            if payload or not s.resp_chain:
                return self._fail(cmd, s.index, seq, 8), 0.0
            piece = s.resp_chain.pop(0)
            chain = 0x02 if not s.resp_chain else 0x03
            return self._ok(cmd, s, seq, chain, piece), 0.0
        s.resp_chain = []
        if level_param == 0x0001:
            s.cmd_chain = bytearray(payload)
            return self._ok(cmd, s, seq, 0x10), 0.0
        if level_param in (0x0002, 0x0003):
            if s.cmd_chain is None:
                return self._fail(cmd, s.index, seq, 8), 0.0
            s.cmd_chain += payload
            if level_param == 0x0003:
                return self._ok(cmd, s, seq, 0x10), 0.0
            apdu = bytes(s.cmd_chain)
            s.cmd_chain = None
        elif level_param == 0x0000:
            s.cmd_chain = None
            apdu = bytes(payload)
        else:
            return self._fail(cmd, s.index, seq, 8), 0.0
        if len(apdu) < 4:
            return self._fail(cmd, s.index, seq, 1), 0.0
        self._card_wtx(s)
        resp = bytes(s.card.process_apdu(apdu))
        if not resp:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        size = self.max_message - HEADER_SIZE
        if self.response_chunk:
            size = max(1, min(size, self.response_chunk))
        if len(resp) <= size:
            return self._ok(cmd, s, seq, 0x00, resp), delay
        s.resp_chain = [resp[i : i + size] for i in range(size, len(resp), size)]
        return self._ok(cmd, s, seq, 0x01, resp[:size]), delay

    def _escape(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_Escape
        switched, self._mode_switched = self._mode_switched, False
        if self.escape_handler is None:
            if switched:
                return self._ok(cmd, s, seq, 0), 0.0
            return self._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
        answer = self.escape_handler(bytes(payload))
        if isinstance(answer, int):
            return self._fail(cmd, s.index, seq, answer & 0xFF), 0.0
        return self._ok(cmd, s, seq, 0, bytes(answer)), 0.0

    def _icc_clock(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                   ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_IccClock
        if frame[7] > 1:
            return self._fail(cmd, s.index, seq, 7), 0.0
        if s.card is None or not s.active:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), 0.0
        s.clock_stopped = frame[7] == 1
        return self._ok(cmd, s, seq, self._clock_status(s)), 0.0

    def _t0_apdu(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                 ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_T0APDU
        if self.level < ExchangeLevel.SHORT_APDU:
            return self._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
        changes = frame[7]
        if changes & ~0x03:
            return self._fail(cmd, s.index, seq, 7), 0.0
        if changes & 0x01:
            s.t0_get_response = frame[8]
        if changes & 0x02:
            s.t0_envelope = frame[9]
        return self._ok(cmd, s, seq, self._clock_status(s)), 0.0

    def _mechanical(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                    ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_Mechanical
        mech = self.descriptor.dwMechanical
        needed = {1: 0x01, 2: 0x02, 3: 0x04, 4: 0x08, 5: 0x08}.get(frame[7])
        if not mech:
            return self._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
        if needed is None or not mech & needed:
            return self._fail(cmd, s.index, seq, 7), 0.0
        if frame[7] in (2, 3) and s.card is not None:
            self.remove(s.index)
        return self._ok(cmd, s, seq, self._clock_status(s)), 0.0

    def _set_rate_clock(self, s: _Slot, seq: int, frame: bytes, payload: bytes
                        ) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_SetDataRateAndClockFrequency
        if len(payload) != 8:
            return self._fail(cmd, s.index, seq, 1), 0.0
        want_clock = int.from_bytes(payload[:4], "little")
        want_rate = int.from_bytes(payload[4:], "little")
        d = self.descriptor
        if self.clocks:
            below = [c for c in self.clocks if c <= want_clock]
            clock = max(below) if below else min(self.clocks)
        else:
            clock = max(min(want_clock, d.dwMaximumClock or want_clock),
                        min(d.dwDefaultClock, want_clock) or d.dwDefaultClock)
        if self.data_rates:
            below = [r for r in self.data_rates if r <= want_rate + 2]
            rate = max(below) if below else min(self.data_rates)
        else:
            rate = min(want_rate, d.dwMaxDataRate or want_rate)
        s.clock_khz, s.data_rate = clock, rate
        data = clock.to_bytes(4, "little") + rate.to_bytes(4, "little")
        return self._ok(cmd, s, seq, 0, data), 0.0

    def _secure(self, s: _Slot, seq: int, frame: bytes, payload: bytes,
                pin_fault: int | None) -> tuple[bytes, float]:
        cmd = M.PC_to_RDR_Secure
        if not payload:
            return self._fail(cmd, s.index, seq, 1), 0.0
        op = payload[0]
        support = self.descriptor.bPINSupport
        if op not in (0, 1):
            return self._fail(cmd, s.index, seq, 10), 0.0
        if not support & (1 << op):
            return self._fail(cmd, s.index, seq, E.CMD_NOT_SUPPORTED), 0.0
        err = self._exchange_check(s, cmd, seq)
        if err is not None:
            return err, 0.0
        if pin_fault is not None:
            return self._fail(cmd, s.index, seq, pin_fault), 0.0
        try:
            layout = pin_structure_layout(payload)
        except ValueError:
            return self._fail(cmd, s.index, seq, 1), 0.0
        if self.pin_sizes is not None:
            low, high = self.pin_sizes
            if not low <= layout.min_digits <= layout.max_digits <= high:
                # bError: offset of wPINMaxExtraDigit in the message (CCID 6.2.6).
                return self._fail(cmd, s.index, seq, HEADER_SIZE + layout.max_digits_at), 0.0
        prompts = self.prompts
        self.displayed.append([
            (prompts[i] if prompts is not None and 0 <= i < len(prompts) else "")
            for i in layout.messages])
        entry = self.pin_entry
        if entry is None:
            return self._fail(cmd, s.index, seq, E.PIN_TIMEOUT), 0.0
        typed = [entry.pin] if layout.operation == 0 else [
            *([entry.pin] if payload[9] & 0x02 else []), entry.new_pin or ""]
        if layout.max_digits and any(len(p) < layout.min_digits for p in typed):
            # Too few digits: the pinpad refuses the validation key until the time-out.
            return self._fail(cmd, s.index, seq, E.PIN_TIMEOUT), 0.0
        try:
            apdu = build_pin_apdu(payload, entry)
        except ValueError:
            return self._fail(cmd, s.index, seq, 11), 0.0
        delay = float(getattr(s.card, "delay", 0.0) or 0.0)
        s.pps_window = False
        if self.level == ExchangeLevel.TPDU and s.protocol == 1:
            return self._secure_t1(s, seq, payload, layout.apdu_at - 3, apdu, delay)
        resp = bytes(s.card.process_apdu(apdu))
        if not resp:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        return self._ok(cmd, s, seq, 0, resp), delay

    def _secure_t1(self, s: _Slot, seq: int, payload: bytes, at: int, apdu: bytes,
                   delay: float) -> tuple[bytes, float]:
        """TPDU pinpad, T=1 card: the I-block from bTeoPrologue (at ``at``) and the PIN
        APDU goes to the card; its block comes back as is. A prologue that is not one
        whole I-block of this APDU fails with bError = its offset in the message; a wrong
        N(S) is the card's to refuse (its R-block comes back)."""
        cmd = M.PC_to_RDR_Secure
        nad, pcb, length = payload[at : at + 3]
        for offset, bad in ((0, nad != s.nad), (1, bool(pcb & 0xA0)),
                            (2, length != len(apdu))):
            if bad:
                return self._fail(cmd, s.index, seq, HEADER_SIZE + at + offset), 0.0
        answer = s.card.t1_block(build_t1_block(nad, pcb, apdu, bool(s.tcckst & 0x01)))
        if answer is None:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE), delay
        return self._ok(cmd, s, seq, 0, bytes(answer)), delay


class _UnplugNow(Exception):
    """Raised inside the model: the device must vanish before the write completes."""


class _UnplugAfter(Exception):
    """Raised inside the model: the device vanishes once the command ran."""


class _StallNow(Exception):
    """Raised inside the model: the bulk-OUT endpoint halts on this write."""


_Handler = Callable[[VirtualReader, _Slot, int, bytes, bytes], "tuple[bytes, float]"]

_HANDLERS: dict[int, _Handler] = {
    M.PC_to_RDR_IccPowerOn: VirtualReader._power_on,
    M.PC_to_RDR_IccPowerOff: VirtualReader._power_off,
    M.PC_to_RDR_GetParameters: VirtualReader._get_parameters,
    M.PC_to_RDR_ResetParameters: VirtualReader._reset_parameters,
    M.PC_to_RDR_SetParameters: VirtualReader._set_parameters,
    M.PC_to_RDR_XfrBlock: VirtualReader._xfr_block,
    M.PC_to_RDR_Escape: VirtualReader._escape,
    M.PC_to_RDR_IccClock: VirtualReader._icc_clock,
    M.PC_to_RDR_T0APDU: VirtualReader._t0_apdu,
    M.PC_to_RDR_Mechanical: VirtualReader._mechanical,
    M.PC_to_RDR_SetDataRateAndClockFrequency: VirtualReader._set_rate_clock,
}


def _payload(answer: bytes | str | None, values: Sequence[int]) -> bytes | str:
    if answer is not None:
        return answer
    if not values:
        return "stall"
    return b"".join((v & 0xFFFFFFFF).to_bytes(4, "little") for v in values)


def _answer_from_dump(values: Sequence[int], error: str | None, notes: Iterable[str],
                      what: str) -> bytes | str | None:
    """How a dumped reader answered the request: list, odd-sized payload, stall or timeout."""
    for note in notes:
        if note.startswith(f"wrong size for {what}: "):
            return bytes(int(note.rsplit(":", 1)[1]))
    if values:
        return None
    text = (error or "").lower()
    if "timed out" in text or "timeout" in text:
        return "timeout"
    return "stall"


# --- PIN block formatting (PC_to_RDR_Secure) ----------------------------------------------


def _put_bits(buf: bytearray, bitpos: int, nbits: int, value: int) -> None:
    for k in range(nbits):
        bit = (value >> (nbits - 1 - k)) & 1
        pos = bitpos + k
        byte, shift = pos // 8, 7 - pos % 8
        if byte >= len(buf):
            raise ValueError("PIN does not fit in the APDU")
        buf[byte] = (buf[byte] & ~(1 << shift)) | (bit << shift)


def _insert_pin(data: bytearray, pin: str, fmt: int, block: int, lenfmt: int,
                offset_bytes: int | None = None) -> None:
    if not pin.isdigit():
        raise ValueError("PIN digits only")
    bytes_units = bool(fmt & 0x80)
    pos = (fmt >> 3) & 0x0F
    right = bool(fmt & 0x04)
    kind = fmt & 0x03
    digit_bits = 4 if kind == 1 else 8
    start = pos * 8 if bytes_units else pos
    if offset_bytes is not None:
        start = offset_bytes * 8
    block_bytes = block & 0x0F
    pin_bits = digit_bits * len(pin)
    if right and block_bytes:
        start += block_bytes * 8 - pin_bits
    for i, ch in enumerate(pin):
        digit = int(ch)
        value = 0x30 + digit if kind == 2 else digit
        _put_bits(data, start + i * digit_bits, digit_bits, value)
    len_bits = (block >> 4) & 0x0F
    if len_bits and offset_bytes is None:
        lpos = (lenfmt & 0x0F) * (8 if lenfmt & 0x10 else 1)
        _put_bits(data, lpos, len_bits, len(pin))


@dataclass(frozen=True, slots=True)
class PinStructureLayout:
    """Where things are in a PIN verify (op 0) or modify (op 1) operation structure."""

    operation: int
    min_digits: int
    max_digits: int
    #: Offset of wPINMaxExtraDigit in the structure (bPINOperation at 0).
    max_digits_at: int
    #: Message indexes the pinpad displays, in order.
    messages: tuple[int, ...]
    #: Offset of the APDU template.
    apdu_at: int


def pin_structure_layout(payload: bytes) -> PinStructureLayout:
    """Read a PC_to_RDR_Secure verify/modify structure (ValueError when malformed)."""
    op = payload[0] if payload else -1
    if op == 0:
        if len(payload) < 15 + 5:
            raise ValueError("PIN verify structure too short")
        count = payload[8]
        messages = () if count == 0 else (payload[11],)
        return PinStructureLayout(0, payload[6], payload[5], 5, messages, 15)
    if op == 1:
        if len(payload) < 15:
            raise ValueError("PIN modify structure too short")
        count = payload[11]
        n = 1 + (count != 0) + (count >= 3)
        shown = 3 if count == 0xFF else min(count, n)
        start = 15 + (n - 1) + 3
        if len(payload) < start + 5:
            raise ValueError("PIN modify structure too short")
        return PinStructureLayout(1, payload[8], payload[7], 7,
                                  tuple(payload[14 : 14 + n][:shown]), start)
    raise ValueError("not a PIN verify or modify structure")


def build_pin_apdu(payload: bytes, entry: PinEntry) -> bytes:
    """The APDU a pinpad sends after the user typed ``entry`` (verify or modify).

    Digits beyond the structure's maximum (wPINMaxExtraDigit) are not taken, as a pinpad
    stops accepting keys there.
    """
    layout = pin_structure_layout(payload)
    limit = layout.max_digits or None
    fmt, block, lenfmt = payload[2], payload[3], payload[4]
    apdu = bytearray(payload[layout.apdu_at:])
    if len(apdu) < 5 or len(apdu) != 5 + apdu[4]:
        raise ValueError("PIN structure has no well-formed APDU")
    if layout.operation == 0:
        data = bytearray(apdu[5:])
        _insert_pin(data, entry.pin[:limit], fmt, block, lenfmt)
        return bytes(apdu[:5] + data)
    if layout.operation == 1:
        off_old, off_new = payload[5], payload[6]
        confirm = payload[9]
        if entry.new_pin is None:
            raise ValueError("PIN modify needs a new PIN")
        if confirm & 0x01 and entry.confirm is not None and entry.confirm != entry.new_pin:
            raise ValueError("new PIN and confirmation differ")
        data = bytearray(apdu[5:])
        if confirm & 0x02:
            _insert_pin(data, entry.pin[:limit], fmt, block, lenfmt, off_old)
        _insert_pin(data, entry.new_pin[:limit], fmt, block, lenfmt, off_new)
        return bytes(apdu[:5] + data)
    raise ValueError("unknown PIN operation")
