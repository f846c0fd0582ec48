"""T=1 block protocol, interface-device side (ISO/IEC 7816-3 clause 11), sans-IO.

``T1Protocol.start(apdu)`` gives the first block to send; every block the card returns
goes to ``receive()``, which answers ``SendBlock`` (send this next) or ``Complete`` (the
APDU response). The caller owns the clock: after a block waiting time without a reply it
calls ``timeout_error()`` for the block to send instead.

Which block is acceptable in which state is one table, ``TRANSITIONS``; anything not in it
is an invalid block and goes through error recovery (ISO/IEC 7816-3 11.6.3 rules 7.x):
an R-block naming the block we expect, up to ``max_retries`` times, then S(RESYNCH
request) up to ``max_retries`` times, then ``T1Error``. After a successful
resynchronisation in the middle of an APDU the APDU is sent again from its start (once).
Card S-requests are bounded too: ``MAX_WTX`` time extensions per exchange and
``MAX_IFS_REQUESTS`` S(IFS request)s in a row. Every failure raises ``T1Error`` and leaves
the protocol idle, ready for the next exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

from ccid import framing
from ccid.errors import CardError, ProtocolError, UsageError
from ccid.framing import T1Status

# The framing twins' raw functions: (status, nad, pcb, inf) and EDC-appending build, no
# exception or length re-check on the per-block path (INF <= IFSC/IFSD <= 254 here).
_check_raw = framing._check_t1
_build_raw = framing._build_t1
_T1_EDC = int(T1Status.EDC)

__all__ = [
    "MAX_IFS_REQUESTS",
    "TRANSITIONS",
    "BlockKind",
    "Complete",
    "RError",
    "SendBlock",
    "T1Error",
    "T1Event",
    "T1Protocol",
    "T1State",
    "classify_block",
]

# PCB layout (ISO/IEC 7816-3 11.3.2.2).
I_NS: Final = 0x40  # I-block send sequence number N(S)
I_MORE: Final = 0x20  # I-block chaining (M)
R_BLOCK: Final = 0x80
R_NR: Final = 0x10  # R-block N(R)
S_BLOCK: Final = 0xC0
S_RESPONSE: Final = 0x20
S_RESYNCH: Final = 0x00
S_IFS: Final = 0x01
S_ABORT: Final = 0x02
S_WTX: Final = 0x03

#: Largest response accepted: 65,536 data bytes + SW1 SW2.
MAX_RESPONSE: Final = 65_538
#: Waiting time extensions accepted in one exchange before giving up.
MAX_WTX: Final = 1024
#: Resynchronisations (each of up to max_retries S(RESYNCH) attempts) in one exchange.
MAX_RESYNCS: Final = 1
#: S(IFS request)s from the card in a row without the exchange moving on: a card that
#: keeps asking would otherwise hold the slot forever (each answer is a valid block).
MAX_IFS_REQUESTS: Final = 3


class T1Error(ProtocolError, CardError):
    """The T=1 exchange failed: retries and resynchronisation exhausted, or card ABORT.

    Both a protocol error (the blocks on the link went wrong) and a card error (the card
    side of the link misbehaved), never a usage error: the protocol object is idle again.
    """


class RError(IntEnum):
    """R-block error bits (ISO/IEC 7816-3 11.3.2.2)."""

    NONE = 0
    EDC = 1
    OTHER = 2


@dataclass(frozen=True, slots=True)
class SendBlock:
    """Send ``block`` to the card; ``wtx`` > 0: the card asked for BWT x ``wtx`` (bBWI)."""

    block: bytes
    wtx: int = 0


@dataclass(frozen=True, slots=True)
class Complete:
    """The exchange is over: ``response`` is the APDU response (empty for S exchanges)."""

    response: bytes


T1Event = SendBlock | Complete
#: What a transition handler returns: an event, or its tuple form (see T1Protocol.step).
_Step = tuple[bytes | None, int, bytes]


class T1State(Enum):
    """Where the interface device is in the exchange."""

    # Members are singletons compared by identity: hash them by identity too (C speed)
    # instead of Enum's hash of the name, for the per-block TRANSITIONS lookup.
    __hash__ = object.__hash__

    IDLE = "idle"  # nothing in flight
    SENDING = "sending"  # sent I(N(S), M=1): expect R acknowledging it
    AWAITING = "awaiting"  # sent the last I-block of the command: expect the card's I-block
    RECEIVING = "receiving"  # card is chaining: sent R(N(R)), expect its next I-block
    IFS_PENDING = "ifs"  # sent S(IFS request): expect S(IFS response)
    RESYNC_PENDING = "resync"  # sent S(RESYNCH request): expect S(RESYNCH response)


class BlockKind(Enum):
    """A received block, classified against the current sequence numbers."""

    __hash__ = object.__hash__  # see T1State

    I_LAST = "I(M=0)"  # I-block with the expected N(S), not chained
    I_MORE = "I(M=1)"  # I-block with the expected N(S), chained
    R_ACK = "R(ack)"  # R-block with N(R) != our N(S), no error: acknowledges our I-block
    R_NAK = "R(nak)"  # R-block with N(R) == our N(S) or error bits: send it again
    S_IFS_REQ = "S(IFS req)"
    S_WTX_REQ = "S(WTX req)"
    S_ABORT_REQ = "S(ABORT req)"
    S_IFS_RESP = "S(IFS resp)"
    S_RESYNCH_RESP = "S(RESYNCH resp)"
    INVALID = "invalid"  # anything else: wrong N(S), RFU bits, bad INF, unexpected S


class _Action(Enum):
    __hash__ = object.__hash__  # see T1State

    NEXT_CHUNK = "next_chunk"
    RESEND_I = "resend_i"
    RESEND_R = "resend_r"
    RECEIVE_LAST = "receive_last"
    RECEIVE_MORE = "receive_more"
    ANSWER_IFS = "answer_ifs"
    ANSWER_WTX = "answer_wtx"
    ABORTED = "aborted"
    IFS_DONE = "ifs_done"
    RESYNCH_DONE = "resynch_done"


# Members as module constants for the per-block code: on Python 3.11 ``Enum.MEMBER`` is an
# attribute lookup of about 0.2 us.
_IDLE, _SENDING, _AWAITING, _RECEIVING = (
    T1State.IDLE, T1State.SENDING, T1State.AWAITING, T1State.RECEIVING)
_I_LAST, _I_MORE, _R_ACK, _R_NAK, _INVALID = (
    BlockKind.I_LAST, BlockKind.I_MORE, BlockKind.R_ACK, BlockKind.R_NAK, BlockKind.INVALID)
_R_OTHER = int(RError.OTHER)

_CARD_TURN = (T1State.AWAITING, T1State.RECEIVING)
_EXCHANGING = (T1State.SENDING, *_CARD_TURN)

#: (state, kind of block received) -> action. Missing pairs are invalid blocks.
#: Actions move to: NEXT_CHUNK -> SENDING | AWAITING; RESEND_* -> same state;
#: RECEIVE_MORE -> RECEIVING; RECEIVE_LAST, IFS_DONE -> IDLE;
#: RESYNCH_DONE -> IDLE, or SENDING | AWAITING when an APDU restarts;
#: ANSWER_* -> same state; ABORTED -> IDLE (raises).
TRANSITIONS: Final[dict[tuple[T1State, BlockKind], _Action]] = {
    (T1State.SENDING, BlockKind.R_ACK): _Action.NEXT_CHUNK,
    (T1State.SENDING, BlockKind.R_NAK): _Action.RESEND_I,
    (T1State.AWAITING, BlockKind.R_NAK): _Action.RESEND_I,
    (T1State.AWAITING, BlockKind.I_LAST): _Action.RECEIVE_LAST,
    (T1State.AWAITING, BlockKind.I_MORE): _Action.RECEIVE_MORE,
    (T1State.RECEIVING, BlockKind.I_LAST): _Action.RECEIVE_LAST,
    (T1State.RECEIVING, BlockKind.I_MORE): _Action.RECEIVE_MORE,
    (T1State.RECEIVING, BlockKind.R_ACK): _Action.RESEND_R,
    (T1State.RECEIVING, BlockKind.R_NAK): _Action.RESEND_R,
    **{(s, BlockKind.S_IFS_REQ): _Action.ANSWER_IFS for s in _EXCHANGING},
    **{(s, BlockKind.S_WTX_REQ): _Action.ANSWER_WTX for s in _EXCHANGING},
    **{(s, BlockKind.S_ABORT_REQ): _Action.ABORTED for s in _EXCHANGING},
    (T1State.IFS_PENDING, BlockKind.S_IFS_RESP): _Action.IFS_DONE,
    (T1State.RESYNC_PENDING, BlockKind.S_RESYNCH_RESP): _Action.RESYNCH_DONE,
}


def classify_block(pcb: int, inf: bytes, *, ns: int, nr: int, ifsd: int) -> BlockKind:
    """Kind of a well-framed block given our N(S) ``ns`` and the card's expected ``nr``."""
    if not pcb & 0x80:  # I-block
        if pcb & 0x1F or len(inf) > ifsd:
            return _INVALID
        if (pcb & I_NS) >> 6 != nr:
            return _INVALID
        if pcb & I_MORE:
            # An empty chained block would let a card chain forever without progress.
            return _I_MORE if inf else _INVALID
        return _I_LAST
    if pcb & 0xC0 == R_BLOCK:
        if pcb & 0x20 or pcb & 0x0F > _R_OTHER or inf:
            return _INVALID
        if (pcb & R_NR) >> 4 == ns or pcb & 0x0F:
            return _R_NAK
        return _R_ACK
    # S-block
    kind = pcb & 0x1F
    if pcb & S_RESPONSE:
        if kind == S_IFS and len(inf) == 1:
            return BlockKind.S_IFS_RESP
        if kind == S_RESYNCH and not inf:
            return BlockKind.S_RESYNCH_RESP
        return _INVALID
    if kind == S_IFS and len(inf) == 1 and 0x01 <= inf[0] <= 0xFE:
        return BlockKind.S_IFS_REQ
    if kind == S_WTX and len(inf) == 1 and inf[0] >= 1:
        return BlockKind.S_WTX_REQ
    if kind == S_ABORT:
        return BlockKind.S_ABORT_REQ
    return _INVALID


class T1Protocol:
    """Host side of T=1 for one card: chaining, WTX, IFS, error recovery, resync.

    ``ifsc``: the card's maximum INF (from the ATR); ``ifsd``: the largest INF we accept
    (tell the card with ``ifs_request``); ``crc``: EDC is CRC (else LRC); ``nad``: NAD byte.
    """

    #: The longest response accepted (see MAX_RESPONSE).
    max_response = MAX_RESPONSE

    def __init__(self, ifsc: int = 32, ifsd: int = 254, crc: bool = False, nad: int = 0,
                 max_retries: int = 3) -> None:
        for name, value in (("ifsc", ifsc), ("ifsd", ifsd)):
            if not 1 <= value <= 254:
                raise UsageError(f"{name} must be 1..254, got {value}")
        if not 0 <= nad <= 0xFF:
            raise UsageError(f"nad must be a byte, got {nad}")
        if max_retries < 1:
            raise UsageError(f"max_retries must be at least 1, got {max_retries}")
        self._initial_ifsc = ifsc
        self.ifsc = ifsc
        self.ifsd = ifsd
        self.crc = crc
        self.nad = nad
        self.max_retries = max_retries
        self.ns = 0  # N(S) of our next (or pending) I-block
        self.nr = 0  # N(S) we expect in the card's next I-block
        self.state = T1State.IDLE
        self._apdu = b""
        self._offset = 0  # command bytes acknowledged so far
        self._chunk = b""  # INF of the pending I-block
        self._more = False
        self._response = bytearray()
        self._last_s = b""  # our pending S request (IFS/RESYNCH), resent on error
        self._ifs_asked = 0
        self._retries = 0
        self._resync_attempts = 0
        self._resyncs = 0
        self._wtx_count = 0
        self._ifs_requests = 0  # card S(IFS request)s since the exchange last moved on
        self._after_resync = T1State.IDLE  # what a resync restarts
        self._handlers: dict[_Action, Callable[[bytes], T1Event | _Step]] = {
            _Action.NEXT_CHUNK: self._next_chunk,
            _Action.RESEND_I: self._resend_i,
            _Action.RESEND_R: self._resend_r,
            _Action.RECEIVE_LAST: self._receive_last,
            _Action.RECEIVE_MORE: self._receive_more,
            _Action.ANSWER_IFS: self._answer_ifs,
            _Action.ANSWER_WTX: self._answer_wtx,
            _Action.ABORTED: self._aborted,
            _Action.IFS_DONE: self._ifs_done,
            _Action.RESYNCH_DONE: self._resynch_done,
        }

    # --- public --------------------------------------------------------------------

    def start(self, apdu: bytes) -> bytes:
        """Begin sending ``apdu``; returns the first I-block."""
        self._require_idle("start an APDU")
        apdu = bytes(apdu)
        if not apdu:
            raise UsageError("cannot send an empty APDU over T=1")
        self._apdu = apdu
        self._resyncs = 0
        self._wtx_count = 0
        self._ifs_requests = 0
        return self._begin_apdu()

    def ifs_request(self, ifsd: int) -> bytes:
        """S(IFS request) announcing ``ifsd``; ``ifsd`` applies once the card confirms."""
        self._require_idle("negotiate IFSD")
        if not 1 <= ifsd <= 254:
            raise UsageError(f"IFSD must be 1..254, got {ifsd}")
        self._ifs_asked = ifsd
        self._resyncs = 0
        self._reset_retries()
        self.state = T1State.IFS_PENDING
        self._last_s = self._build(S_BLOCK | S_IFS, bytes([ifsd]))
        return self._last_s

    def resync_request(self) -> bytes:
        """S(RESYNCH request): on the response, sequence numbers and IFSC reset."""
        self._require_idle("resynchronise")
        self._resyncs = 0
        self._after_resync = T1State.IDLE
        return self._start_resync()

    def receive(self, block: bytes) -> T1Event:
        """Handle one block from the card."""
        following, wtx, response = self.step(block)
        if following is None:
            return Complete(response)
        return SendBlock(following, wtx)

    def step(self, block: bytes) -> tuple[bytes | None, int, bytes]:
        """:meth:`receive` without event objects, for the reader's per-block loop.

        Returns ``(block to send, wtx, b"")`` or, when the exchange is over,
        ``(None, 0, response)``.
        """
        if self.state is _IDLE:
            raise UsageError("T=1 received a block with no exchange in progress")
        if type(block) is not bytes:
            block = bytes(block)
        status, _nad, pcb, inf = _check_raw(block, self.crc)
        if status:
            code = RError.EDC if status == _T1_EDC else RError.OTHER
            return self._recover(code), 0, b""
        kind = classify_block(pcb, inf, ns=self.ns, nr=self.nr, ifsd=self.ifsd)
        action = TRANSITIONS.get((self.state, kind))
        if action is None:
            return self._recover(RError.OTHER), 0, b""
        event = self._handlers[action](inf)
        if isinstance(event, tuple):  # the hot handlers answer in this form directly
            return event
        if isinstance(event, Complete):
            return None, 0, event.response
        return event.block, event.wtx, b""

    def resume(self, phase: int, ns: int, nr: int, offset: int, sent: int,
               response: bytes) -> None:
        """Take over the APDU exchange begun with :meth:`start` that another driver (the
        reader's :class:`ccid.framing.Chain`) moved on: ``phase`` 0 idle (it ended),
        1 sending, 2 awaiting, 3 receiving; ``offset``/``sent``: the command bytes before
        and in the I-block in flight; ``response``: what the card sent so far."""
        self.state = (_IDLE, _SENDING, _AWAITING, _RECEIVING)[phase]
        self.ns, self.nr = ns, nr
        self._offset = offset
        self._chunk = self._apdu[offset : offset + sent]
        self._more = offset + sent < len(self._apdu)
        self._response[:] = response
        # Every move the driver made reset the retry counters, as the handlers here do.
        self._reset_retries()

    def timeout_error(self) -> bytes:
        """The block to send after a block waiting time passed without a reply."""
        if self.state is T1State.IDLE:
            raise UsageError("T=1 timeout with no exchange in progress")
        return self._recover(RError.OTHER)

    def reset(self) -> None:
        """Forget everything (after a card reset): sequence numbers 0, IFSC initial."""
        self.state = T1State.IDLE
        self.ns = self.nr = 0
        self.ifsc = self._initial_ifsc
        self._clear()

    # --- building ------------------------------------------------------------------

    def _build(self, pcb: int, inf: bytes = b"") -> bytes:
        block: bytes = _build_raw(self.nad, pcb, inf, self.crc)  # INF <= 254 here
        return block

    def _i_block(self) -> bytes:
        pcb = (self.ns << 6) | (I_MORE if self._more else 0)
        return self._build(pcb, self._chunk)

    def _r_block(self, code: int = 0) -> bytes:
        """R-block acknowledging the card's next I-block; ``code``: an RError bit."""
        return self._build(R_BLOCK | (self.nr << 4) | code)

    def _clear(self) -> None:
        """Drop the exchange in progress: IDLE, nothing pending, counters at zero."""
        self.state = T1State.IDLE
        self._response.clear()
        self._apdu = self._chunk = self._last_s = b""
        self._offset = 0
        self._more = False
        self._reset_retries()
        self._resyncs = self._wtx_count = self._ifs_requests = 0
        self._after_resync = T1State.IDLE

    def _fail(self, message: str) -> T1Error:
        """End the exchange (the object stays usable) and give the error to raise."""
        self._clear()
        return T1Error(message)

    def _require_idle(self, what: str) -> None:
        if self.state is not T1State.IDLE:
            raise UsageError(f"cannot {what}: T=1 exchange in progress ({self.state.value})")

    def _reset_retries(self) -> None:
        self._retries = 0
        self._resync_attempts = 0

    def _begin_apdu(self) -> bytes:
        self._offset = 0
        self._response.clear()
        self._reset_retries()
        return self._send_chunk()

    def _send_chunk(self) -> bytes:
        self._chunk = self._apdu[self._offset : self._offset + self.ifsc]
        self._more = self._offset + len(self._chunk) < len(self._apdu)
        self.state = _SENDING if self._more else _AWAITING
        return self._i_block()

    # --- actions -------------------------------------------------------------------

    def _next_chunk(self, _inf: bytes) -> _Step:
        self._retries = self._resync_attempts = self._ifs_requests = 0
        self._offset += len(self._chunk)
        self.ns ^= 1
        return self._send_chunk(), 0, b""

    def _resend_i(self, _inf: bytes) -> T1Event:
        # Cut again from the pending offset: the card may have changed IFSC since the
        # block was first sent, and the resent block must fit the current one.
        return SendBlock(self._count_retry() or self._send_chunk())

    def _resend_r(self, _inf: bytes) -> T1Event:
        return SendBlock(self._count_retry() or self._r_block())

    def _take(self, inf: bytes) -> None:
        if self.state is _AWAITING:
            self.ns ^= 1  # the card's I-block acknowledges our last one
        self._reset_retries()
        self._ifs_requests = 0
        self.nr ^= 1
        if len(self._response) + len(inf) > MAX_RESPONSE:
            raise self._fail(f"card response exceeds {MAX_RESPONSE} bytes")
        self._response += inf

    def _receive_more(self, inf: bytes) -> _Step:
        self._take(inf)
        self.state = _RECEIVING
        return self._r_block(), 0, b""

    def _receive_last(self, inf: bytes) -> _Step:
        self._take(inf)
        self.state = _IDLE
        response = bytes(self._response)
        self._response.clear()
        return None, 0, response

    def _answer_ifs(self, inf: bytes) -> T1Event:
        self._ifs_requests += 1
        if self._ifs_requests > MAX_IFS_REQUESTS:
            raise self._fail(f"card sent more than {MAX_IFS_REQUESTS} S(IFS request)s "
                             "in a row without moving the exchange on")
        self.ifsc = inf[0]
        return SendBlock(self._build(S_BLOCK | S_RESPONSE | S_IFS, inf))

    def _answer_wtx(self, inf: bytes) -> T1Event:
        self._wtx_count += 1
        if self._wtx_count > MAX_WTX:
            raise self._fail(f"card asked for more than {MAX_WTX} waiting time extensions")
        return SendBlock(self._build(S_BLOCK | S_RESPONSE | S_WTX, inf), wtx=inf[0])

    def _aborted(self, _inf: bytes) -> T1Event:
        raise self._fail("card aborted the chained exchange (S(ABORT request))")

    def _ifs_done(self, inf: bytes) -> T1Event:
        if inf[0] != self._ifs_asked:
            return SendBlock(self._recover(RError.OTHER))
        self.ifsd = inf[0]
        self._clear()
        return Complete(b"")

    def _resynch_done(self, _inf: bytes) -> T1Event:
        self.ns = self.nr = 0
        self.ifsc = self._initial_ifsc
        self._reset_retries()
        if self._after_resync is T1State.IDLE:
            self._clear()
            return Complete(b"")
        # Mid-APDU: the card lost its context; send the APDU again from the start.
        return SendBlock(self._begin_apdu())

    # --- error recovery ------------------------------------------------------------

    def _count_retry(self) -> bytes | None:
        """Count one retry; past the limit return the resync block to send instead."""
        self._retries += 1
        if self._retries > self.max_retries:
            return self._escalate()
        return None

    def _recover(self, code: RError) -> bytes:
        """Block to send after an invalid block or a timeout (ISO/IEC 7816-3 rules 7.1-7.4)."""
        if self.state is T1State.RESYNC_PENDING:
            return self._start_resync()
        escalated = self._count_retry()
        if escalated is not None:
            return escalated
        if self.state is T1State.IFS_PENDING:
            return self._last_s
        return self._r_block(code)

    def _escalate(self) -> bytes:
        if self.state is T1State.IFS_PENDING:
            raise self._fail(f"no valid S(IFS response) after {self.max_retries} retries")
        if self._resyncs >= MAX_RESYNCS:
            raise self._fail(f"T=1 exchange failed after {self.max_retries} retries "
                             "and resynchronisation")
        self._resyncs += 1
        self._after_resync = self.state
        return self._start_resync()

    def _start_resync(self) -> bytes:
        self._resync_attempts += 1
        if self._resync_attempts > self.max_retries:
            raise self._fail(f"no S(RESYNCH response) after {self.max_retries} attempts")
        self.state = T1State.RESYNC_PENDING
        self._last_s = self._build(S_BLOCK | S_RESYNCH)
        return self._last_s

    # --- PIN entry on a TPDU pinpad (PC_to_RDR_Secure) ---------------------------------

    def secure_prologue(self, apdu: bytes) -> bytes:
        """NAD, PCB and LEN of the I-block a TPDU pinpad sends for ``apdu`` (the PIN
        APDU as in the structure: its PIN bytes are replaced, its length is not).

        The exchange is under way from here, as after :meth:`start`: the block the reader
        returns goes to :meth:`step`; :meth:`secure_cancel` if the pinpad sent nothing.
        A pinpad sends one block: an APDU longer than IFSC is refused.
        """
        if len(apdu) > self.ifsc:
            raise UsageError(f"the PIN APDU ({len(apdu)} bytes) does not fit in one T=1 "
                             f"block (IFSC {self.ifsc})")
        return self.start(apdu)[:3]

    def secure_cancel(self) -> None:
        """The pinpad did not send the block (cancelled, timed out, refused) or the card
        did not take it: nothing moved, the sequence numbers stay as they were."""
        self.state = T1State.IDLE
        self._apdu = self._chunk = b""
        self._response.clear()

