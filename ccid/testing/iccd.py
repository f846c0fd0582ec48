"""Virtual ICCD tokens: version A and B devices answering class requests on endpoint 0.

:class:`IccdReader` is a :class:`~ccid.testing.reader.VirtualReader` (the same cards, slot
state and interrupt endpoint) whose host side is the control pipe: the backend hands it
every class request for its interface (``control_request``), and it runs each one through
the CCID model underneath, as a token's firmware drives its chip.

* Version A (bInterfaceProtocol 1): ``ICC_POWER_ON`` is an IN request whose data stage is
  the ATR; ``XFR_BLOCK`` takes a T=0 command header, then the command data; the status
  byte of ``GET_ICC_STATUS`` says 0x10 (waiting for data, or data to read with
  ``DATA_BLOCK``), 0x20 (SW1 SW2 ready), 0x40 busy, 0x80 no card; 0x00 idle. A T=1 card
  takes whole blocks with ``XFR_BLOCK`` and gives its block back with ``DATA_BLOCK``.
* Version B (bInterfaceProtocol 2): ``ICC_POWER_ON`` (wValue 1) and ``XFR_BLOCK`` (wValue
  high byte: the level parameter) start a command; ``DATA_BLOCK`` answers bResponseType
  (0x00, 0x01, 0x02, 0x03, 0x10) and data, 0x40 bStatus bError, or 0x80 wDelay while not
  ready; request 0x81 gives 0x40, the slot's bStatus, bError.

Faults (:class:`IccdFault`) change how requests are answered: time-extension storms, a busy
token, short or garbage answers, endless "more data", a wrong status, a stall, a request
that never completes, an unplug.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ccid.constants import HEADER_SIZE, ExchangeLevel
from ccid.constants import MessageType as M
from ccid.descriptor import CCIDDescriptor
from ccid.framing import build_frame
from ccid.testing.model import UnplugNow, parse_atr
from ccid.testing.reader import VirtualReader

__all__ = ["IccdFault", "IccdReader", "is_iccd_dump"]

ICC_POWER_ON, ICC_POWER_OFF, XFR_BLOCK, DATA_BLOCK = 0x62, 0x63, 0x65, 0x6F
GET_ICC_STATUS, SLOT_STATUS_B = 0xA0, 0x81

_FAULT_KINDS = ("poll", "busy", "short", "garbage", "more", "wrong-status", "stall",
                "timeout", "unplug")


@dataclass
class IccdFault:
    """How the next ``count`` matching requests (None: all) are answered.

    ``kind``: "poll" (B: DATA_BLOCK says 0x80, wDelay ``delay``), "busy" (A: status 0x40),
    "short" (an empty answer), "garbage" (``data`` instead of the answer), "more"
    (B: DATA_BLOCK says 0x03 "more data follows" with ``data``), "wrong-status" (A: status
    0x20 where 0x10 is due; B: status 0x40 with bError 0xFB), "stall", "timeout" (no
    answer: the host's transfer times out), "unplug" (the token vanishes). ``request``:
    bRequest it applies to (None: DATA_BLOCK for B answers, GET_ICC_STATUS for A status).
    """

    kind: str
    request: int | None = None
    count: int | None = 1
    data: bytes = b""
    delay: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown ICCD fault {self.kind!r}; known: {_FAULT_KINDS}")


class IccdReader(VirtualReader):
    """An ICCD token (one slot); ``iccd_version`` 1 or 2 (default: bInterfaceProtocol)."""

    def __init__(self, descriptor: CCIDDescriptor | Mapping[str, int], *,
                 iccd_version: int | None = None, **kwargs: Any) -> None:
        version = iccd_version or kwargs.get("interface_protocol") or 2
        if version not in (1, 2):
            version = 2
        kwargs.setdefault("interface_protocol", version)
        kwargs.setdefault("has_bulk", False)
        kwargs.setdefault("has_interrupt", False)
        kwargs.setdefault("firmware_level", ExchangeLevel.TPDU if version == 1
                          else ExchangeLevel.EXTENDED_APDU)
        super().__init__(descriptor, **kwargs)
        self.iccd_version = version
        self.iccd_faults: list[IccdFault] = []
        #: (bmRequestType, bRequest, wValue, length) of every class request received.
        self.requests_seen: list[tuple[int, int, int, int]] = []
        self._answer: bytes | None = None  # B: what the next DATA_BLOCK gives
        self._a_state = "idle"  # A: idle, header, data, sw, block
        self._a_header = b""
        self._a_data = b""
        self._a_sw = b""

    def inject_iccd(self, *faults: IccdFault) -> None:
        """Arm control-pipe faults (in order; each ends after ``count`` uses)."""
        with self.cv:
            self.iccd_faults.extend(faults)

    def reset(self) -> None:
        super().reset()
        self._answer = None
        self._a_state, self._a_header, self._a_data, self._a_sw = "idle", b"", b"", b""

    # --- the backend's hook ---------------------------------------------------------------

    def control_request(self, request_type: int, request: int, value: int, data: bytes,
                        length: int) -> bytes | str | None:
        """Answer one class request: bytes (IN data, or b"" for OUT), "stall", "timeout",
        or None (not an ICCD request: the backend answers it as for CCID)."""
        with self.cv:
            self.requests_seen.append((request_type, request, value, length))
            fault = self._take(request)
            if fault is not None:
                if fault.kind == "stall":
                    return "stall"
                if fault.kind == "timeout":
                    return "timeout"
                if fault.kind == "unplug":
                    raise UnplugNow()
            if self.iccd_version == 1:
                return self._a_request(request_type, request, data, fault)
            return self._b_request(request_type, request, value, data, fault)

    def _take(self, request: int) -> IccdFault | None:
        for fault in self.iccd_faults:
            default = DATA_BLOCK if self.iccd_version == 2 else GET_ICC_STATUS
            if (fault.request if fault.request is not None else default) != request:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.iccd_faults.remove(fault)
            return fault
        return None

    # --- the CCID model underneath ------------------------------------------------------

    def _run(self, msg_type: int, p1: int = 0, level: int = 0, data: bytes = b""
             ) -> bytes | None:
        """Run one CCID command through the model; its final reply (None: no answer)."""
        frame = build_frame(msg_type, 0, 0, p1, level & 0xFF, level >> 8, data)
        try:
            self.process_frame(frame)
        except UnplugNow:
            raise
        except Exception:  # a bulk fault meant for the bulk side: ignore it here
            pass
        finals = [p.frame for p in self._pending if p.final]
        self._pending.clear()
        return finals[-1] if finals else None

    def _power_select(self) -> int:
        support = self.descriptor.bVoltageSupport & 0x07
        for select, bit in ((1, 1), (2, 2), (3, 4)):
            if support & bit:
                return select
        return 0

    def _take_protocol(self) -> None:
        """After power-on: the token's firmware talks the card's first protocol."""
        s = self.slots[0]
        if not s.active or s.card is None:
            return
        info = parse_atr(bytes(s.card.atr))
        s.protocol = info.protocols[0] if info.protocols else 0
        if s.protocol == 1:
            s.ifsc, s.waiting = info.t1_ifsc, info.t1_bwi_cwi
            s.tcckst = 0x01 if info.t1_crc else 0x00

    @staticmethod
    def _succeeded(reply: bytes | None) -> bool:
        return reply is not None and len(reply) >= HEADER_SIZE and not reply[7] & 0x40

    # --- version B ------------------------------------------------------------------------

    def _b_status(self, error: int = 0, failed: bool = True) -> bytes:
        icc = self._icc(self.slots[0])
        return bytes((0x40, icc | (0x40 if failed else 0), error))

    def _b_request(self, request_type: int, request: int, value: int, data: bytes,
                   fault: IccdFault | None) -> bytes | str | None:
        if request_type == 0x21 and request == ICC_POWER_ON:
            reply = self._run(M.PC_to_RDR_IccPowerOn, self._power_select())
            self._answer = (b"\x00" + reply[HEADER_SIZE:] if self._succeeded(reply) and reply
                            else self._b_status(reply[8] if reply else 0xFE))
            return b""
        if request_type == 0x21 and request == ICC_POWER_OFF:
            self._run(M.PC_to_RDR_IccPowerOff)
            self._answer = None
            return b""
        if request_type == 0x21 and request == XFR_BLOCK:
            reply = self._run(M.PC_to_RDR_XfrBlock, 0, value >> 8, data)
            if reply is None:
                self._answer = self._b_status(0xFE)  # ICC_MUTE
            elif self._succeeded(reply):
                self._answer = bytes((reply[9],)) + reply[HEADER_SIZE:]
            else:
                self._answer = self._b_status(reply[8])
            return b""
        if request_type == 0xA1 and request == DATA_BLOCK:
            if fault is not None:
                return self._b_fault(fault)
            answer, self._answer = self._answer, None
            return answer if answer is not None else self._b_status(0x05)
        if request_type == 0xA1 and request == SLOT_STATUS_B:
            if fault is not None and fault.kind in ("short", "garbage"):
                return fault.data if fault.kind == "garbage" else b""
            return self._b_status(failed=False)
        return None

    def _b_fault(self, fault: IccdFault) -> bytes:
        kind = fault.kind
        if kind == "poll":
            return bytes((0x80, fault.delay & 0xFF, fault.delay >> 8))
        if kind == "short":
            return b""
        if kind == "garbage":
            return fault.data
        if kind == "more":
            return b"\x03" + (fault.data or b"\x00" * 16)
        if kind == "wrong-status":
            return bytes((0x40, 0x40, 0xFB))
        return self._answer or b""

    # --- version A ------------------------------------------------------------------------

    def _a_request(self, request_type: int, request: int, data: bytes,
                   fault: IccdFault | None) -> bytes | str | None:
        s = self.slots[0]
        if request_type == 0x21 and request == ICC_POWER_OFF:
            self._run(M.PC_to_RDR_IccPowerOff)
            self._a_state = "idle"
            return b""
        if request_type == 0xA1 and request == ICC_POWER_ON:
            reply = self._run(M.PC_to_RDR_IccPowerOn, self._power_select())
            self._take_protocol()
            self._a_state = "idle"
            return reply[HEADER_SIZE:] if self._succeeded(reply) and reply else b""
        if request_type == 0xA1 and request == GET_ICC_STATUS:
            if fault is not None:
                if fault.kind == "busy":
                    return b"\x40"
                if fault.kind == "short":
                    return b""
                if fault.kind == "garbage":
                    return fault.data
                if fault.kind == "wrong-status":
                    return b"\x20"
            if s.card is None:
                return b"\x80"
            return bytes(({"idle": 0x00, "header": 0x10, "data": 0x10, "block": 0x10,
                           "sw": 0x20}[self._a_state],))
        if request_type == 0x21 and request == XFR_BLOCK:
            return self._a_xfr(bytes(data))
        if request_type == 0xA1 and request == DATA_BLOCK:
            if fault is not None and fault.kind in ("short", "garbage"):
                return fault.data if fault.kind == "garbage" else b""
            return self._a_data_block()
        return None

    def _a_tpdu(self, tpdu: bytes) -> bytes:
        reply = self._run(M.PC_to_RDR_XfrBlock, 0, 0, tpdu)
        return reply[HEADER_SIZE:] if self._succeeded(reply) and reply else b""

    def _a_xfr(self, data: bytes) -> bytes | str:
        s = self.slots[0]
        if s.card is None or not s.active:
            return "stall"
        if s.protocol == 1:
            self._a_data = self._a_tpdu(data)
            self._a_state = "block"
            return b""
        if self._a_state == "header":
            resp = self._a_tpdu(self._a_header + data)
            self._a_data, self._a_sw = resp[:-2], resp[-2:]
            self._a_state = "sw"
            return b""
        if len(data) < 5:
            data = (data + b"\x00" * 5)[:5]
        self._a_header = data[:5]
        if data[4] == 0:  # case 1: nothing to send, nothing to read
            resp = self._a_tpdu(self._a_header)
            self._a_data, self._a_sw = resp[:-2], resp[-2:]
            self._a_state = "sw"
        else:
            self._a_state = "header"
        return b""

    def _a_data_block(self) -> bytes | str:
        state = self._a_state
        if state == "header":  # case 2: the card's data, then SW1 SW2 on their own
            resp = self._a_tpdu(self._a_header)
            self._a_sw = resp[-2:]
            self._a_state = "sw"
            return resp[:-2]
        if state == "sw":
            self._a_state = "idle"
            return self._a_sw
        if state == "block":
            self._a_state = "idle"
            return self._a_data
        return "stall"


def is_iccd_dump(dump: Mapping[str, Any]) -> bool:
    """The interface dump declares ICCD A or B (CCID or vendor class)."""
    itf = dump.get("interface", {})
    klass = int(itf.get("bInterfaceClass", 0x0B))
    if int(itf.get("bInterfaceProtocol", 0)) not in (1, 2):
        return False
    # A vendor-class interface is ICCD underneath only without a bulk pair.
    return klass == 0x0B or (klass == 0xFF and int(itf.get("bNumEndpoints", 0)) < 2)
