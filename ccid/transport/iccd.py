"""ICCD tokens (USB ICCD version A and B): CCID frames carried over the control pipe.

ICCD devices declare the CCID class with bInterfaceProtocol 1 (version A) or 2 (version
B), some the vendor class 0xFF with the same protocol numbers, and most have no bulk
endpoints: every message is a class request on endpoint 0. :class:`IccdTransport` has the
interface of the bulk transport (``write`` one PC_to_RDR frame, ``read`` RDR_to_PC frames)
and turns each frame into the ICCD requests that stand for it, so the session above runs
unchanged:

* ``ICC_POWER_ON`` 0x62, ``ICC_POWER_OFF`` 0x63, ``XFR_BLOCK`` 0x65 (host to device),
  ``DATA_BLOCK`` 0x6F (device to host); version A reads its status byte with
  ``GET_ICC_STATUS`` 0xA0, version B its slot status with request 0x81.
* Version A is character level with T=0 (the token runs the procedure bytes): the session
  sees a TPDU-level reader; a command header goes first, the token's status byte says
  whether it waits for the command data (0x10) or has SW1 SW2 ready (0x20); 0x40 is busy,
  0x80 no card.
* Version B answers DATA_BLOCK with a bResponseType: 0x00 complete, 0x01/0x02/0x03 parts of
  a chained response, 0x10 "send the rest of the command", 0x40 status (bStatus, bError),
  0x80 "not ready, ask again after wDelay x 10 ms". The session sees an extended-APDU
  reader (bResponseType is bChainParameter), as libccid does for short-APDU tokens.

Every poll is bounded by the read's timeout; a "not ready" or busy answer becomes a CCID
time extension frame, so the session's ceiling bounds a token that never finishes. ICCD has
no ABORT: the ABORT class request waits a little for the token to finish, then powers the
card off (the next exchange then reports the reset card), leaving a usable token.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import usb.core

from ccid import trace as _trace
from ccid.constants import ClassRequest
from ccid.descriptor import iccd_descriptor
from ccid.errors import ProtocolError, ReaderError, ReaderTimeoutError, TransportError
from ccid.transport.usb import UsbInterface, UsbTransport, _ms, usb_error

__all__ = [
    "ICCD_A",
    "ICCD_B",
    "IccdTransport",
    "iccd_descriptor",
    "iccd_version",
    "transport_class",
]

ICCD_A = 1
ICCD_B = 2

# Class requests (bRequest).
ICC_POWER_ON = 0x62
ICC_POWER_OFF = 0x63
XFR_BLOCK = 0x65
DATA_BLOCK = 0x6F
GET_ICC_STATUS = 0xA0
SLOT_STATUS_B = 0x81

_OUT = 0x21  # class, interface, host to device
_IN = 0xA1

# Version A status byte.
A_DATA = 0x10  # the token waits for the command data, or has response data to read
A_STATUS = 0x20  # SW1 SW2 ready
A_BUSY = 0x40
A_NO_ICC = 0x80

# Version B bResponseType.
B_STATUS = 0x40
B_POLL = 0x80
_B_DATA_TYPES = (0x00, 0x01, 0x02, 0x03, 0x10)

#: Pause between two GET_ICC_STATUS of a busy version A token (libccid waits 10 ms).
A_POLL_INTERVAL = 0.01
#: A busy token gives the session a time extension this often.
BUSY_REPORT = 0.25
#: Longest DATA_BLOCK the host asks for: wLength is 16-bit and Linux refuses more than
#: 4096 bytes in one control transfer.
MAX_CONTROL = 0x1000
#: Time the ABORT class request gives a busy token before powering the card off.
ABORT_GRACE = 0.2

# CCID message types the transport answers.
_POWER_ON, _POWER_OFF, _SLOT_STATUS, _XFR = 0x62, 0x63, 0x65, 0x6F
_SET_PARAMS, _GET_PARAMS, _RESET_PARAMS, _ABORT = 0x61, 0x6C, 0x6D, 0x72
_REPLY = {0x62: 0x80, 0x63: 0x81, 0x65: 0x81, 0x6F: 0x80, 0x61: 0x82, 0x6C: 0x82,
          0x6D: 0x82, 0x6B: 0x83, 0x69: 0x80, 0x73: 0x84}
_T0_PARAMS = bytes((0x11, 0x00, 0x00, 0x0A, 0x00))

_ACTIVE, _INACTIVE, _ABSENT = 0, 1, 2
_ICC_MUTE = 0xFE
_HW_ERROR = 0xFB


def iccd_version(interface_class: int, interface_protocol: int) -> int:
    """1 (ICCD A) or 2 (ICCD B) for an interface driven over the control pipe, else 0.

    libccid goes by bInterfaceProtocol alone, whatever the endpoints: the ActivCard USB
    Reader V2 declares version A and has bulk endpoints, and is driven as version A; the
    e-gate and Oberthur tokens declare the vendor class 0xFF with protocol 1 or 2 and no
    endpoint. Enumeration keeps a vendor-class interface that has a bulk pair on bulk CCID.
    """
    if interface_class in (0x0B, 0xFF) and interface_protocol in (ICCD_A, ICCD_B):
        return interface_protocol
    return 0


@dataclass(slots=True)
class _Job:
    """The command the token is working on; ``read`` polls for its answer."""

    cmd: int
    slot: int
    seq: int
    payload: bytes
    stage: str
    data: bytes = b""
    busy_since: float = 0.0


def _frame(msg_type: int, slot: int, seq: int, status: int, error: int, b9: int,
           data: bytes = b"") -> bytes:
    return (bytes((msg_type,)) + len(data).to_bytes(4, "little") +
            bytes((slot, seq, status, error, b9)) + data)


class IccdTransport(UsbTransport):
    """A claimed ICCD interface: CCID frames in and out, ICCD requests on the wire."""

    def __init__(self, info: UsbInterface, name: str) -> None:
        super().__init__(info, name)
        self.version = info.iccd or ICCD_B
        self._replies: deque[bytes] = deque()
        self._job: _Job | None = None
        # An exchange ended half-way (garbage): the token's state machine is unknown.
        self._broken = False
        self._powered = False
        self._protocol = 0
        self._params = _T0_PARAMS

    # --- control requests -------------------------------------------------------------

    def _control(self, request_type: int, request: int, value: int, data: bytes | int,
                 timeout: float, what: str) -> bytes:
        """One class request (traced); ``data``: bytes to send, or the length to read."""
        dev = self._device()
        interface = self.info.interface
        if _trace.enabled:
            length = data if isinstance(data, int) else len(data)
            setup = (bytes((request_type, request)) + value.to_bytes(2, "little") +
                     interface.to_bytes(2, "little") + length.to_bytes(2, "little"))
            _trace.record(self.name, "ctrl->",
                          setup + (data if isinstance(data, bytes) else b""))
        try:
            got = dev.ctrl_transfer(request_type, request, value, interface,
                                    data if isinstance(data, int) else (data or None),
                                    _ms(timeout))
        except usb.core.USBError as exc:
            raise usb_error(exc, f"ICCD {what}", reader=self.name) from exc
        if isinstance(data, int):
            out = bytes(got)
            if _trace.enabled:
                _trace.record(self.name, "ctrl<-", out)
            return out
        return b""

    # --- the bulk-transport interface ---------------------------------------------------

    def write(self, frame: bytes, timeout: float) -> None:
        """Take one PC_to_RDR frame: send the ICCD requests that start it."""
        self._device()
        frame = bytes(frame)
        if _trace.enabled:
            _trace.record(self.name, "->", frame)
        if len(frame) < 10:
            raise ProtocolError("a CCID frame shorter than its header", reader=self.name)
        cmd, slot, seq = frame[0], frame[5], frame[6]
        payload = frame[10:]
        job = _Job(cmd, slot, seq, payload, "")
        timeout = max(timeout, 0.05)
        if cmd == _ABORT:
            self._answer(job, _frame(0x81, slot, seq, self._icc(), 0, 0))
            return
        if slot != 0:
            self._answer(job, _frame(_REPLY.get(cmd, 0x81), slot, seq, 0x40 | _ABSENT, 5, 0))
            return
        if cmd == _POWER_ON:
            self._power_off(timeout)
            if self.version == ICCD_B:
                self._control(_OUT, ICC_POWER_ON, 1, b"", timeout, "ICC_POWER_ON")
                job.stage = "b-data"
            else:
                job.stage = "a-power"
        elif cmd == _POWER_OFF:
            self._power_off(timeout)
            self._answer(job, _frame(0x81, 0, seq, _INACTIVE, 0, 0))
            return
        elif cmd == _SLOT_STATUS:
            job.stage = "status"
        elif cmd == _XFR and not self._powered:
            # Powered off under the session (an abort): the card must be reconnected.
            self._answer(job, self._failed(job, _ICC_MUTE))
            return
        elif cmd == _XFR:
            level = int.from_bytes(frame[8:10], "little")
            if self.version == ICCD_B:
                self._control(_OUT, XFR_BLOCK, (level & 0xFF) << 8, payload, timeout,
                              "XFR_BLOCK")
                job.stage = "b-data"
            elif self._protocol == 1 or len(payload) < 4:
                self._control(_OUT, XFR_BLOCK, 0, payload, timeout, "XFR_BLOCK")
                job.stage = "a-block"
            else:
                header = (payload + b"\x00")[:5]
                self._control(_OUT, XFR_BLOCK, 0, header, timeout, "XFR_BLOCK")
                job.stage, job.data = "a-header", payload[5:]
        elif cmd == _SET_PARAMS:
            self._protocol = frame[7] & 1
            self._params = payload
            self._answer(job, _frame(0x82, 0, seq, self._icc(), 0, self._protocol, payload))
            return
        elif cmd in (_GET_PARAMS, _RESET_PARAMS):
            if cmd == _RESET_PARAMS:
                self._protocol, self._params = 0, _T0_PARAMS
            self._answer(job, _frame(0x82, 0, seq, self._icc(), 0, self._protocol,
                                     self._params))
            return
        else:  # escape, clock, mechanical, secure...: not in ICCD
            self._answer(job, _frame(_REPLY.get(cmd, 0x81), 0, seq, 0x40 | self._icc(), 0, 0))
            return
        job.busy_since = time.monotonic()
        self._job = job

    @property
    def pollable(self) -> bool:
        """Control transfers: whether one would wait is not known (``ccid.aio`` runs each
        call in a worker thread)."""
        return False

    @property
    def keeps_partial_reads(self) -> bool:
        """Replies are built whole from control transfers: a timeout loses nothing."""
        return True

    def read(self, timeout: float) -> bytes:
        """The next RDR_to_PC frame: a queued answer, or the token polled for one."""
        self._device()
        if self._replies:
            return self._replies.popleft()
        job = self._job
        if job is None:
            raise ReaderTimeoutError("no command in progress on the ICCD token",
                                     reader=self.name)
        deadline = time.monotonic() + max(timeout, 0.001)
        try:
            reply = self._poll(job, deadline)
        except ReaderTimeoutError:
            raise  # the token may still answer: the session aborts or reads again
        except (ProtocolError, TransportError):
            self._job = None  # garbage or an unplug ends the command
            self._broken = True
            raise
        except ReaderError:
            # A stalled request: the session reads once more, and the token may answer
            # the repeated poll (a bulk reader's cleared halt works the same way).
            raise
        if reply[7] & 0xC0 != 0x80:  # the final answer (not a time extension)
            self._job = None
        return reply

    def trace_in(self, frame: bytes) -> None:
        if _trace.enabled:
            _trace.record(self.name, "<-", frame)

    def class_request_out(self, request: ClassRequest, value: int, timeout: float) -> None:
        """ABORT: ICCD has none; let the token finish briefly, else power the card off."""
        if request != ClassRequest.ABORT:
            super().class_request_out(request, value, timeout)
            return
        job, self._job = self._job, None
        broken, self._broken = self._broken, False
        self._replies.clear()
        if job is None and not (broken and self.version == ICCD_A):
            return  # version B starts afresh with the next XFR_BLOCK
        if job is not None and self.version == ICCD_B:
            end = time.monotonic() + min(timeout, ABORT_GRACE)
            try:
                while time.monotonic() < end:
                    reply = self._poll(job, end)
                    if reply[7] & 0xC0 != 0x80:
                        return  # it finished: nothing to undo
            except (ReaderTimeoutError, ProtocolError):
                pass
        # A version A token is half-way through a command's steps, a version B token still
        # busy: powering the card off is the only reset ICCD has.
        self._power_off(max(0.05, timeout))

    # --- helpers ----------------------------------------------------------------------

    def _answer(self, job: _Job, frame: bytes) -> None:
        self._job = None
        self._replies.append(frame)

    def _icc(self) -> int:
        return _ACTIVE if self._powered else _INACTIVE

    def _power_off(self, timeout: float) -> None:
        self._powered = False
        self._protocol, self._params = 0, _T0_PARAMS
        self._control(_OUT, ICC_POWER_OFF, 0, b"", timeout, "ICC_POWER_OFF")

    def _wtx(self, job: _Job) -> bytes:
        return _frame(_REPLY.get(job.cmd, 0x80), job.slot, job.seq, 0x80 | self._icc(), 1, 0)

    def _failed(self, job: _Job, error: int, icc: int | None = None) -> bytes:
        icc = self._icc() if icc is None else icc
        return _frame(_REPLY.get(job.cmd, 0x80), job.slot, job.seq, 0x40 | icc, error, 0)

    def _ok(self, job: _Job, data: bytes, chain: int = 0) -> bytes:
        return _frame(_REPLY.get(job.cmd, 0x80), job.slot, job.seq, self._icc(), 0, chain,
                      data)

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReaderTimeoutError("the ICCD token did not answer in time",
                                     reader=self.name)
        return left

    def _poll(self, job: _Job, deadline: float) -> bytes:
        if job.stage == "status":
            return self._slot_status(job, deadline)
        if job.stage == "b-data":
            return self._b_data(job, deadline)
        return self._a_step(job, deadline)

    def _slot_status(self, job: _Job, deadline: float) -> bytes:
        if self.version == ICCD_B:
            got = self._control(_IN, SLOT_STATUS_B, 0, 3, self._left(deadline),
                                "SLOT_STATUS")
            if len(got) < 2:
                raise ProtocolError(f"ICCD slot status of {len(got)} byte(s)",
                                    reader=self.name)
            icc = got[1] & 0x03
            icc = _ABSENT if icc >= 2 else icc
        else:
            status = self._a_status(deadline, wait_busy=False)
            icc = _ABSENT if status == A_NO_ICC else self._icc()
        if icc == _ACTIVE and not self._powered:
            icc = _INACTIVE  # powered by someone before us: the session powers it afresh
        return _frame(0x81, 0, job.seq, icc, 0, 0)

    # --- version B ----------------------------------------------------------------------

    def _b_data(self, job: _Job, deadline: float) -> bytes:
        got = self._control(_IN, DATA_BLOCK, 0, MAX_CONTROL, self._left(deadline),
                            "DATA_BLOCK")
        if not got:
            raise ProtocolError("the ICCD token answered DATA_BLOCK with no bytes",
                                reader=self.name)
        kind = got[0]
        if kind == B_POLL:
            if len(got) < 3:
                raise ProtocolError(f"ICCD DATA_BLOCK polling answer of {len(got)} byte(s)",
                                    reader=self.name)
            delay = max(1, got[1] | got[2] << 8) * 0.01
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            return self._wtx(job)
        if kind == B_STATUS:
            if len(got) < 3:
                raise ProtocolError(f"ICCD DATA_BLOCK status of {len(got)} byte(s)",
                                    reader=self.name)
            icc = got[1] & 0x03
            if icc >= 2:
                icc = _ABSENT
            if job.cmd == _POWER_ON and icc == _ACTIVE:
                icc = _INACTIVE
            return self._failed(job, got[2] or _HW_ERROR, icc)
        if kind not in _B_DATA_TYPES:
            raise ProtocolError(f"ICCD DATA_BLOCK with unknown bResponseType 0x{kind:02X}",
                                reader=self.name)
        if job.cmd == _POWER_ON:
            if kind != 0x00 or len(got) < 2:
                raise ProtocolError("the ICCD token gave no ATR", reader=self.name)
            self._powered = True
            return self._ok(job, got[1:])
        return self._ok(job, got[1:], kind)

    # --- version A ----------------------------------------------------------------------

    def _a_status(self, deadline: float, *, wait_busy: bool = True) -> int:
        """GET_ICC_STATUS; while busy, poll until ``deadline`` (then ReaderTimeoutError)."""
        while True:
            got = self._control(_IN, GET_ICC_STATUS, 0, 1, self._left(deadline),
                                "GET_ICC_STATUS")
            if len(got) != 1:
                raise ProtocolError(f"ICCD GET_ICC_STATUS answer of {len(got)} byte(s)",
                                    reader=self.name)
            status = got[0]
            if not status & A_BUSY or not wait_busy:
                return status & ~A_BUSY if not wait_busy else status
            if time.monotonic() + A_POLL_INTERVAL >= deadline:
                raise ReaderTimeoutError("the ICCD token stayed busy", reader=self.name)
            time.sleep(A_POLL_INTERVAL)

    def _a_wait(self, job: _Job, deadline: float) -> int | None:
        """The token's status once not busy, or None: busy long enough to report (WTX)."""
        report = min(deadline, time.monotonic() + BUSY_REPORT)
        try:
            return self._a_status(report)
        except ReaderTimeoutError:
            return None  # still busy: a time extension; the session's ceiling bounds it

    def _a_step(self, job: _Job, deadline: float) -> bytes:
        if job.stage == "a-power":
            atr = self._control(_IN, ICC_POWER_ON, 0, 33, self._left(deadline),
                                "ICC_POWER_ON")
            if not atr:
                return self._failed(job, _ICC_MUTE)
            self._powered = True
            return self._ok(job, atr)
        status = self._a_wait(job, deadline)
        if status is None:
            return self._wtx(job)
        if status & A_NO_ICC:
            self._powered = False
            return self._failed(job, _ICC_MUTE, _ABSENT if status == A_NO_ICC else None)
        if job.stage == "a-block":  # T=1 block, or a command the token takes whole
            got = self._control(_IN, DATA_BLOCK, 0, MAX_CONTROL, self._left(deadline),
                                "DATA_BLOCK")
            return self._ok(job, got)
        if job.stage == "a-header":
            if status == A_DATA:
                if job.data:
                    self._control(_OUT, XFR_BLOCK, 0, job.data, self._left(deadline),
                                  "XFR_BLOCK")
                    job.data, job.stage = b"", "a-sw"
                    return self._a_step(job, deadline)
                le = job.payload[4] if len(job.payload) > 4 else 0
                got = self._control(_IN, DATA_BLOCK, 0, le or 256, self._left(deadline),
                                    "DATA_BLOCK")
                job.data, job.stage = got, "a-sw"
                return self._a_step(job, deadline)
            job.stage = "a-sw"
        if job.stage == "a-sw":
            if status != A_STATUS:
                raise ProtocolError(f"ICCD token status 0x{status:02X} where SW1 SW2 were "
                                    "due", reader=self.name)
            sw = self._control(_IN, DATA_BLOCK, 0, 2, self._left(deadline), "DATA_BLOCK")
            if len(sw) != 2:
                raise ProtocolError(f"ICCD status word of {len(sw)} byte(s)",
                                    reader=self.name)
            return self._ok(job, job.data + sw)
        raise ProtocolError(f"ICCD exchange in an unknown stage {job.stage!r}",
                            reader=self.name)


def transport_class(info: UsbInterface) -> type[UsbTransport]:
    """The transport that drives ``info``: control pipe for ICCD tokens, else bulk."""
    return IccdTransport if info.iccd else UsbTransport
