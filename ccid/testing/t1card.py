"""Card side of the T=1 block protocol (ISO/IEC 7816-3 clause 11), sans-IO.

``T1Card.receive(block)`` takes one block from the interface device and returns the card's
answer block, or None when the answer is lost (a fault) or nothing was heard. Every transition
is a row of ``TRANSITIONS``: (phase, kind of block received) -> handler. Pairs missing from the
table are protocol errors, answered with an R-block "other error" as the standard prescribes.

Behaviour, by the standard's rules:

- I-blocks: chaining from the host (M bit) is acknowledged with R(N(R)); a complete command goes
  to the APDU handler; the response is sent in I-blocks of at most IFSD bytes, chained with the
  M bit, each further block released by the host's R(N(R) = next N(S)).
- An R-block naming the N(S) of the card's last I-block asks for it again (lost or garbled
  response); while the card waits for S(WTX/IFS response) it repeats its S(request); any
  other R-block is answered R(N(R)): "send me the I-block with this N(S)" (the host's block,
  or the card's acknowledgement of it, was lost).
- A block with a bad EDC gets R(N(R), error 1), any other invalid block R(N(R), error 2)
  (length, reserved LEN FF, I-block above IFSC, wrong N(S), unexpected or malformed S-block).
- S(RESYNCH request) resets N(S), N(R), IFSD, IFSC and chains; S(IFS request) sets IFSD;
  S(ABORT request) drops the chains in progress. The card itself can send S(IFS request)
  (``request_ifs``) and S(WTX request)s (``wtx_plan``) before a response.
- Faults: ``corrupt_next`` blocks sent with a broken EDC, ``lose_next`` blocks lost (None);
  either way the card's state moves on as if the block had gone out.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto

from ccid.framing import T1BlockError, T1Status, build_t1_block, check_t1_block

__all__ = ["Kind", "Phase", "T1Card"]

DEFAULT_IFS = 32

# S-block types (low bits of PCB)
S_RESYNCH, S_IFS, S_ABORT, S_WTX = 0, 1, 2, 3
S_RESPONSE = 0x20
ERR_EDC, ERR_OTHER = 1, 2


class Phase(Enum):
    """Where the card is in an exchange."""

    IDLE = auto()  # waiting for a command (or the host's next move after a response)
    RX_CHAIN = auto()  # receiving a chained command
    TX_CHAIN = auto()  # sending a chained response, waiting for R-block acknowledgements
    WAIT_WTX = auto()  # sent S(WTX request), waiting for S(WTX response)
    WAIT_IFS = auto()  # sent S(IFS request), waiting for S(IFS response)


class Kind(Enum):
    """What kind of (valid) block arrived."""

    I = auto()  # noqa: E741 - the standard's name
    I_MORE = auto()
    R = auto()
    RESYNCH_REQ = auto()
    IFS_REQ = auto()
    ABORT_REQ = auto()
    WTX_RESP = auto()
    IFS_RESP = auto()
    OTHER_S = auto()


_ANY = tuple(Phase)
_TALKING = (Phase.IDLE, Phase.RX_CHAIN, Phase.TX_CHAIN)

#: (phase, kind) -> name of the T1Card method that handles it.
TRANSITIONS: dict[tuple[Phase, Kind], str] = {
    **{(p, Kind.RESYNCH_REQ): "_on_resynch" for p in _ANY},
    **{(p, Kind.ABORT_REQ): "_on_abort" for p in _ANY},
    **{(p, Kind.IFS_REQ): "_on_ifs_request" for p in _TALKING},
    **{(p, Kind.R): "_on_r" for p in _ANY},
    (Phase.IDLE, Kind.I): "_on_i",
    (Phase.IDLE, Kind.I_MORE): "_on_i",
    (Phase.RX_CHAIN, Kind.I): "_on_i",
    (Phase.RX_CHAIN, Kind.I_MORE): "_on_i",
    (Phase.WAIT_WTX, Kind.WTX_RESP): "_on_wtx_response",
    (Phase.WAIT_IFS, Kind.IFS_RESP): "_on_ifs_response",
}


def _classify(pcb: int, inf: bytes) -> Kind | None:
    """Kind of a block with a valid EDC, or None when its PCB/INF combination is invalid."""
    if pcb & 0x80 == 0:
        return Kind.I_MORE if pcb & 0x20 else Kind.I
    if pcb & 0xC0 == 0x80:
        return Kind.R if not inf and pcb & 0x20 == 0 and pcb & 0x0F <= 2 else None
    stype, is_response = pcb & 0x1F, bool(pcb & S_RESPONSE)
    if stype in (S_RESYNCH, S_ABORT):
        if inf:
            return None
        if is_response:
            return Kind.OTHER_S
        return Kind.RESYNCH_REQ if stype == S_RESYNCH else Kind.ABORT_REQ
    if stype in (S_IFS, S_WTX):
        if len(inf) != 1:
            return None
        if stype == S_IFS:
            if not 1 <= inf[0] <= 254:
                return None
            return Kind.IFS_RESP if is_response else Kind.IFS_REQ
        return Kind.WTX_RESP if is_response else Kind.OTHER_S
    return None


class T1Card:
    """One card's T=1 link state. ``handler`` turns a complete command APDU into a response."""

    def __init__(self, handler: Callable[[bytes], bytes], *, ifsc: int = DEFAULT_IFS,
                 crc: bool = False) -> None:
        self.handler = handler
        self.initial_ifsc = ifsc
        self.crc = crc
        # faults and card-initiated requests: survive reset() (a test arms them once)
        self.corrupt_next = 0
        self.lose_next = 0
        self.wtx_plan: list[int] = []
        self.request_ifs_value: int | None = None
        #: counters for tests and reports
        self.blocks_in = 0
        self.errors_in = 0
        self.reset()

    def reset(self) -> None:
        """Power-on or RESYNCH: sequence numbers 0, sizes from the ATR, no chains."""
        self.ns = 0  # N(S) of the next I-block the card sends
        self.nr = 0  # N(S) the card expects in the next I-block from the host
        self.ifsc = self.initial_ifsc
        self.ifsd = DEFAULT_IFS
        self.phase = Phase.IDLE
        self.rx = bytearray()
        self.tx = b""
        self.last: bytes | None = None  # last block sent (good copy), for retransmission
        self.last_i: bytes | None = None
        self.last_i_ns = 1
        self._wtx_queue: list[int] = []
        self._wtx_sent = 0
        self._ifs_sent = 0
        self.nad = 0

    # --- configuration (also reachable through VirtualCard.faults) ---------------------

    def request_ifs(self, value: int) -> None:
        """Before the next response, send S(IFS request, value) and use it as IFSC once agreed."""
        if not 1 <= value <= 254:
            raise ValueError("IFS is 1..254")
        self.request_ifs_value = value

    # --- the entry point ---------------------------------------------------------------

    def receive(self, block: bytes) -> bytes | None:
        """One block in, the card's block out (None: nothing heard, or the answer was lost)."""
        if not block:
            return None
        self.blocks_in += 1
        try:
            nad, pcb, inf = check_t1_block(bytes(block), self.crc)
        except T1BlockError as exc:
            self.errors_in += 1
            return self._error(ERR_EDC if exc.status == T1Status.EDC else ERR_OTHER)
        self.nad = nad
        kind = _classify(pcb, inf)
        if kind is None or (kind in (Kind.I, Kind.I_MORE) and len(inf) > self.ifsc):
            self.errors_in += 1
            return self._error(ERR_OTHER)
        handler = TRANSITIONS.get((self.phase, kind))
        if handler is None:
            self.errors_in += 1
            return self._error(ERR_OTHER)
        result: bytes | None = getattr(self, handler)(pcb, inf)
        return result

    # --- sending -----------------------------------------------------------------------

    def _block(self, pcb: int, inf: bytes = b"") -> bytes:
        nad = ((self.nad & 0x07) << 4) | ((self.nad >> 4) & 0x07)  # swap SAD and DAD
        return build_t1_block(nad, pcb, inf, self.crc)

    def _emit(self, block: bytes, *, remember: bool = True) -> bytes | None:
        if remember:
            self.last = block
        if self.lose_next > 0:
            self.lose_next -= 1
            return None
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            return block[:-1] + bytes((block[-1] ^ 0x5A,))
        return block

    def _error(self, code: int) -> bytes | None:
        # Error R-blocks are never what gets retransmitted: "last" keeps the real last block.
        return self._emit(self._block(0x80 | (self.nr << 4) | code), remember=False)

    def _send_chunk(self) -> bytes | None:
        chunk, self.tx = self.tx[: self.ifsd], self.tx[self.ifsd :]
        more = bool(self.tx)
        block = self._block((self.ns << 6) | (0x20 if more else 0), chunk)
        self.last_i, self.last_i_ns = block, self.ns
        self.ns ^= 1
        self.phase = Phase.TX_CHAIN if more else Phase.IDLE
        return self._emit(block)

    def _deliver(self) -> bytes | None:
        """Send what comes before the response (WTX, IFS request), else the response."""
        if self._wtx_queue:
            self._wtx_sent = self._wtx_queue.pop(0)
            self.phase = Phase.WAIT_WTX
            return self._emit(self._block(0xC0 | S_WTX, bytes((self._wtx_sent,))))
        if self.request_ifs_value is not None:
            self._ifs_sent = self.request_ifs_value
            self.phase = Phase.WAIT_IFS
            return self._emit(self._block(0xC0 | S_IFS, bytes((self._ifs_sent,))))
        return self._send_chunk()

    # --- transitions -------------------------------------------------------------------

    def _on_i(self, pcb: int, inf: bytes) -> bytes | None:
        if (pcb >> 6) & 1 != self.nr:
            self.errors_in += 1
            return self._error(ERR_OTHER)
        self.nr ^= 1
        self.rx += inf
        if pcb & 0x20:
            self.phase = Phase.RX_CHAIN
            return self._emit(self._block(0x80 | (self.nr << 4)))
        apdu, self.rx = bytes(self.rx), bytearray()
        self.tx = self.handler(apdu)
        self._wtx_queue, self.wtx_plan = list(self.wtx_plan), []
        return self._deliver()

    def _on_r(self, pcb: int, inf: bytes) -> bytes | None:
        nr = (pcb >> 4) & 1
        if self.phase is Phase.TX_CHAIN:
            if nr != self.last_i_ns:
                return self._send_chunk()  # acknowledgement: next piece
            return self._repeat(self.last_i)
        if self.phase in (Phase.WAIT_WTX, Phase.WAIT_IFS):
            return self._repeat(self.last)  # the S(request) went wrong: again
        if self.phase is Phase.IDLE and nr == self.last_i_ns and self.last_i is not None:
            return self._repeat(self.last_i)  # the response went wrong: again
        # The host's I-block (or our acknowledgement of a chained one) was lost: say which
        # N(S) the card expects, so that the host sends it (again).
        return self._emit(self._block(0x80 | (self.nr << 4)))

    def _repeat(self, block: bytes | None) -> bytes | None:
        if block is None:
            self.errors_in += 1
            return self._error(ERR_OTHER)
        self.last = block
        return self._emit(block)

    def _on_resynch(self, pcb: int, inf: bytes) -> bytes | None:
        self.reset()
        self.request_ifs_value = None
        return self._emit(self._block(0xE0 | S_RESYNCH))

    def _on_abort(self, pcb: int, inf: bytes) -> bytes | None:
        self.rx, self.tx = bytearray(), b""
        self._wtx_queue = []
        self.phase = Phase.IDLE
        return self._emit(self._block(0xE0 | S_ABORT))

    def _on_ifs_request(self, pcb: int, inf: bytes) -> bytes | None:
        self.ifsd = inf[0]
        return self._emit(self._block(0xE0 | S_IFS, inf))

    def _on_wtx_response(self, pcb: int, inf: bytes) -> bytes | None:
        if inf[0] != self._wtx_sent:
            self.errors_in += 1
            return self._error(ERR_OTHER)
        return self._deliver()

    def _on_ifs_response(self, pcb: int, inf: bytes) -> bytes | None:
        if inf[0] != self._ifs_sent:
            self.errors_in += 1
            return self._error(ERR_OTHER)
        self.ifsc = self._ifs_sent
        self.request_ifs_value = None
        return self._deliver()
