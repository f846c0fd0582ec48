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
from typing import TYPE_CHECKING, Any, Protocol

from ccid.constants import (
    HEADER_SIZE,
    REPLY_TYPE,
    CommandStatus,
    ExchangeLevel,
    ICCStatus,
    MessageType,
    SlotErrorCode,
)
from ccid.descriptor import CCIDDescriptor, parse_ccid_descriptor
from ccid.errors import DescriptorError, UsageError
from ccid.framing import build_frame
from ccid.testing import clock
from ccid.testing import faults as F
from ccid.testing.commands import dispatch
from ccid.testing.model import Pending, SlotState
from ccid.testing.model import parse_atr as parse_atr
from ccid.testing.pinpad import PinEntry as PinEntry
from ccid.testing.pinpad import PinStructureLayout as PinStructureLayout
from ccid.testing.pinpad import build_pin_apdu as build_pin_apdu
from ccid.testing.pinpad import pin_structure_layout as pin_structure_layout

if TYPE_CHECKING:
    from ccid.testing.backend import VirtualDevice

__all__ = ["CardLike", "EscapeHandler", "PinEntry", "Responder", "VirtualReader"]

M = MessageType
E = SlotErrorCode


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
        self.slots = [SlotState(i) for i in range(descriptor.slot_count)]
        self._faults: list[list[Any]] = []  # [fault, remaining]
        self._pending: list[Pending] = []
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
            "data_rates_answer": clock.answer_from_dump(
                rates, dump.get("data_rates_request_error"), dump.get("notes", ()),
                "GET_DATA_RATES"),
            "clocks_answer": clock.answer_from_dump(
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
        return clock.data_rate_supported(self, rate, slot)

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
        keep: list[Pending] = []
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
        self.queue_interrupt(bytes((M.RDR_to_PC_HardwareError, slot, seq, code)))

    def queue_interrupt(self, *messages: bytes) -> None:
        """Queue interrupt-IN messages as they are (recorded ones, or malformed on purpose);
        a reader without an interrupt endpoint drops them."""
        with self.cv:
            if self.has_interrupt:
                self._intr_msgs.extend(bytearray(m) for m in messages)
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
        kept = [item for item in self._faults if not item[0].disarmed_by(payload)]
        self._mode_switched = len(kept) != len(self._faults)
        self._faults = kept

    def _take_faults(self, msg_type: int, slot: int, payload: bytes) -> list[F.Fault]:
        taken: list[F.Fault] = []
        for item in self._faults:
            fault, remaining = item
            if remaining is not None and remaining <= 0:
                continue
            if fault.takes(msg_type, slot, payload):
                taken.append(fault)
                if remaining is not None:
                    item[1] = remaining - 1
        self._faults = [i for i in self._faults if i[1] is None or i[1] > 0]
        return taken

    # --- state helpers ----------------------------------------------------------------

    def _slot(self, slot: int) -> SlotState:
        if not 0 <= slot < len(self.slots):
            raise UsageError(f"slot {slot} does not exist (reader has {len(self.slots)})")
        return self.slots[slot]

    def _reset_params(self, s: SlotState) -> None:
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

    def _deactivate(self, s: SlotState) -> None:
        s.active = False
        s.pps_window = False
        s.cmd_chain = None
        s.resp_chain = []
        s.card_fidi = 0x11
        self._reset_params(s)

    def _icc(self, s: SlotState | None) -> int:
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

    def _ok(self, cmd: int, s: SlotState, seq: int, b9: int = 0, data: bytes = b"") -> bytes:
        return self._reply(cmd, s.index, seq, self._status(CommandStatus.OK, self._icc(s)), 0,
                           b9, data)

    def _params_data(self, s: SlotState) -> bytes:
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
            self._pending.append(Pending(now + delay, self._order, slot, seq, cmd, frame,
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
        taken = self._take_faults(cmd, slot, payload) if self._faults else []
        self._wtx_plan = []
        plan: F.ReplyPlan | None = None
        if taken:
            plan = F.ReplyPlan(self, cmd, slot, seq, lambda m: self._reply(
                cmd, slot, seq, self._status(CommandStatus.TIME_EXTENSION, self._icc(s)), m),
                self._last_reply)
            for fault in taken:
                fault.before_command(plan)
            for fault in taken:
                fault.shape(plan)
        reply: bytes | None
        if plan is not None and plan.refusal is not None:
            reply, card_time = self._fail(cmd, slot, seq, plan.refusal), 0.0
        else:
            reply, card_time = dispatch(self, cmd, s, seq, frame, payload,
                                        None if plan is None else plan.pin_error)
        frames: list[tuple[float, bytes | None, bool]] = []
        for multiplier in self._wtx_plan:
            frames.append((0.0, self._reply(
                cmd, slot, seq, self._status(CommandStatus.TIME_EXTENSION, self._icc(s)),
                multiplier & 0xFF), False))
        trickle: F.Trickle | None = None
        if plan is None:
            delay = card_time
        else:
            plan.delay += card_time
            plan.frames = frames
            for fault in taken:
                fault.after_command(plan)
            for fault in taken:
                if reply is None:
                    break
                reply = fault.mangle(reply, plan)
            delay, trickle = plan.delay, plan.trickle
        if reply is not None:
            self._last_reply = reply
        if trickle is not None and reply is not None:
            frames.extend(trickle.pieces(reply, delay))
        else:
            frames.append((delay, reply, True))
        self._schedule(cmd, slot, seq, frames,
                       open_ended=trickle is not None and trickle.one_transfer)
        if plan is not None:
            for fault in taken:
                fault.after_reply(plan)

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

    def answers_at_once(self) -> bool:
        """An XfrBlock written now is answered without waiting inside the write: no
        ``responder`` and no card application that may wait (``Application.instant``)."""
        if self.responder is not None:
            return False
        for s in self.slots:
            card = s.card
            if card is not None and not card.app.instant:
                return False
        return True

    def next_due(self) -> float | None:
        """When the next scheduled reply becomes readable (None: nothing scheduled)."""
        for p in self._pending:
            if p.frame is not None:
                return p.due
        return None

    def release_due(self) -> None:
        """Move the replies that are due onto the bulk-IN endpoint as packets."""
        now = time.monotonic()
        keep: list[Pending] = []
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

    def _abort_bulk(self, s: SlotState, seq: int) -> None:
        if s.abort_seq == seq:
            s.abort_seq = None
            self._schedule(M.PC_to_RDR_Abort, s.index, seq,
                           [(0.0, self._ok(M.PC_to_RDR_Abort, s, seq, 0), True)])
        else:
            s.held_abort = seq  # answered when the class request arrives

    def data_rates_payload(self) -> bytes | str:
        """GET_DATA_RATES answer: bytes, or "stall" / "timeout"."""
        return clock.answer_payload(self.data_rates_answer, self.data_rates)

    def clocks_payload(self) -> bytes | str:
        return clock.answer_payload(self.clocks_answer, self.clocks)

    # --- shared by the command handlers -------------------------------------------------

    def _exchange_check(self, s: SlotState, cmd: int, seq: int) -> bytes | None:
        if s.card is None:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE)
        if not s.active:
            return self._fail(cmd, s.index, seq, E.ICC_MUTE)
        return None
