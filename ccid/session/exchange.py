"""The exchange drivers: one APDU in, its response out, at the reader's exchange level.

* APDU level (short / extended): one XfrBlock, or extended-APDU chaining (wLevelParameter)
  through :class:`ccid.framing.Chain` and the rest of a chained response;
* T=1 at TPDU level: ``framing.Chain`` for the common blocks, the sans-IO
  ``ccid.protocol.t1.T1Protocol`` for everything else (error recovery, S-blocks, WTX);
* T=0 at TPDU level: the sans-IO ``ccid.protocol.t0.T0Exchange`` (GET RESPONSE, Le).

Each driver is sans-IO: a generator that yields what to send and is sent the reply (or has
the transfer's exception thrown into it), so the same driver runs under the blocking runner
here (:meth:`Exchange.run`) and under ``ccid.aio``'s runner on the event loop. A request is
one of

* ``(XFR, data, bwi, level)``: one XfrBlock; the reply is its DataBlock frame, whole;
* ``(PUMP, chain, frame, None)``: drive a :class:`ccid.framing.Chain` from its first frame; the
  reply is the response, or :class:`~ccid.session.channel.LeftChain` is thrown in;
* ``(RECOVER, None, None, None)``: drop whatever the reader still sends (after a mismatched reply).

A one-busy-slot reader is held by the runner for the whole APDU (another slot's command
cannot slip in between).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, Final

from ccid.constants import HEADER_SIZE, ChainParameter, ExchangeLevel, LevelParameter
from ccid.descriptor import CCIDDescriptor
from ccid.engine import CHAINED_RESPONSE_LIMIT, ChainedResponse
from ccid.errors import CardError, CardMuteError, ProtocolError, UnsupportedReaderError, UsageError
from ccid.framing import CHAIN_EXTENDED, CHAIN_T1, Chain
from ccid.protocol.t0 import T0Exchange
from ccid.session.channel import Channel, LeftChain
from ccid.session.slot import SlotState

__all__ = [
    "PUMP", "RECOVER", "T1_MAX_ROUNDS", "XFR", "Exchange", "NowRun", "Steps",
    "character_level",
]

#: A driver: yields requests (see the module docstring), returns the response. Every
#: request is a 4-tuple, so that a runner unpacks it in one step.
Steps = Generator[tuple[int, Any, Any, Any], Any, bytes]

XFR: Final = 0
PUMP: Final = 1
RECOVER: Final = 2

_monotonic = time.monotonic
# Enum members as plain module constants: on Python 3.11 each ``Enum.MEMBER`` access costs
# about 0.2 us, several times per APDU on the hot path.
_SHORT_APDU: Final = ExchangeLevel.SHORT_APDU
_EXTENDED_APDU: Final = ExchangeLevel.EXTENDED_APDU
_CHARACTER: Final = ExchangeLevel.CHARACTER
_CHAIN_COMPLETE: Final = int(ChainParameter.COMPLETE)
_CONTINUE_RESPONSE: Final = int(LevelParameter.CONTINUE_RESPONSE)
#: Longest short APDU: 4 header + Lc + 255 data + Le.
_SHORT_APDU_MAX: Final = 261
#: Most T=1 blocks one exchange may take after the fast path leaves it (a 64 KB chain at
#: IFS 1 needs 65,536): a card that never ends an exchange is stopped here or by the ceiling.
T1_MAX_ROUNDS: Final = 70_000


def character_level(reader: str, slot: int) -> UnsupportedReaderError:
    """The error for a character-level reader (refused at connect, before power-up)."""
    return UnsupportedReaderError(
        "the reader exchanges characters (dwFeatures: character level), which this "
        "library does not drive; APDUs need a TPDU, short or extended APDU reader",
        reader=reader, slot=slot)


class Exchange:
    """The drivers of one reader's slots, and the blocking runner that feeds them."""

    def __init__(self, channel: Channel, descriptor: CCIDDescriptor, *,
                 auto_get_response: bool) -> None:
        self.channel = channel
        self.name = channel.name
        self.level = descriptor.exchange_level
        self.auto_get_response = auto_get_response

    # --- the blocking runner --------------------------------------------------------------

    def transmit(self, s: SlotState, apdu: bytes, ceiling: float, raw_t0: bool) -> bytes:
        """Send ``apdu`` to the card in ``s`` (slot lock held); its response + SW1 SW2."""
        return self.run(s, self.steps(s, apdu, raw_t0), ceiling)

    def t1_run(self, s: SlotState, block: bytes, ceiling: float) -> bytes:
        """Run a T=1 exchange that starts with ``block`` (an S-block, a pinpad's follow-up)."""
        return self.run(s, self.t1_steps(s, block), ceiling)

    def run(self, s: SlotState, steps: Steps, ceiling: float) -> bytes:
        """Feed a driver its replies from the channel until it returns, within ``ceiling``."""
        channel = self.channel
        deadline = _monotonic() + ceiling
        held = channel.hold(deadline)
        try:
            xfr = channel.xfr
            send = steps.send
            kind, a, b, c = next(steps)
            while True:
                try:
                    if kind == XFR:
                        got = xfr(s, a, deadline, b, c, held)
                    elif kind == PUMP:
                        got = channel.pump(s, a, b, deadline, held)
                    else:
                        channel.recover()
                        got = None
                except BaseException as exc:
                    # The driver decides: T=1 recovers from a mute card, a chain goes on
                    # after the piece that left it; anything else comes back out.
                    kind, a, b, c = steps.throw(exc)
                else:
                    kind, a, b, c = send(got)
        except StopIteration as end:
            response: bytes = end.value
            return response
        finally:
            if held:
                channel.unhold()

    # --- the drivers ----------------------------------------------------------------------

    def steps(self, s: SlotState, apdu: bytes, raw_t0: bool) -> Steps:
        """The driver of one APDU on the card in ``s`` at this reader's level."""
        level = self.level
        if level is _SHORT_APDU or level is _EXTENDED_APDU:
            limit = self.channel.engine.max_message_length
            room = (limit or 65546) - HEADER_SIZE
            if level is _SHORT_APDU and len(apdu) > min(room, _SHORT_APDU_MAX):
                raise UsageError(
                    f"APDU of {len(apdu)} bytes does not fit a short-APDU reader "
                    "(at most 261 bytes: 4 header + Lc + 255 data + Le)", reader=self.name)
            return self._apdu_steps(s, apdu, room)
        if s.protocol == 1:
            return self.t1_steps(s, None, apdu)
        if level is _CHARACTER:
            raise character_level(self.name, s.index)
        return self._t0_steps(apdu, raw_t0)

    def _t0_steps(self, apdu: bytes, raw: bool) -> Steps:
        exchange = T0Exchange(apdu, auto_get_response=self.auto_get_response and not raw)
        while True:
            tpdu = exchange.next_tpdu()
            if tpdu is None:
                return exchange.response
            frame = yield (XFR, tpdu, 0, 0)
            exchange.receive(frame[HEADER_SIZE:])

    # The fast chain and the protocol object's fallback are one exchange: split, each half
    # would need the other's state.
    def t1_steps(self, s: SlotState, block: bytes | None, apdu: bytes | None = None
                 ) -> Steps:
        """A T=1 exchange from its first ``block`` (None: the I-block that starts
        ``apdu``). With ``apdu`` the hot part of its exchange (I-blocks acknowledged, the
        card's I-blocks taken) runs through :class:`ccid.framing.Chain`, and the protocol
        object takes over only where that stops (error recovery, S-blocks, WTX)."""
        t1 = s.t1
        step = t1.step
        bwi = 0
        try:
            if block is None:
                assert apdu is not None
                block = t1.start(apdu)
            engine = self.channel.engine
            limit = engine.max_message_length
            if apdu is not None and (not limit or limit >= HEADER_SIZE + 5 + t1.ifsc):
                chain = s.t1_chain
                if chain is None:
                    chain = s.t1_chain = Chain(
                        CHAIN_T1, chunk=t1.ifsc, slot=s.index, max_length=limit, nad=t1.nad,
                        crc=t1.crc, ifsd=t1.ifsd, resp_cap=t1.max_response)
                first = chain.first(engine.next_seq(), apdu, ns=t1.ns, nr=t1.nr,
                                    chunk=t1.ifsc, ifsd=t1.ifsd)
                try:
                    response = yield (PUMP, chain, first, None)
                except LeftChain as left:
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
                    whole: bytes = response
                    return whole
            for _ in range(T1_MAX_ROUNDS):  # each round moves the exchange or a retry
                try:
                    frame = yield (XFR, block, bwi, 0)
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
                # Abandoned mid-exchange (timeout, bad reply, card gone, a runner that
                # gave up): the next APDU starts clean; sequence numbers that drifted from
                # the card's are T=1 error recovery's job (R-blocks, then RESYNCH).
                t1.reset()
            raise

    def _apdu_steps(self, s: SlotState, apdu: bytes, room: int) -> Steps:
        frame: bytes
        if self.level is _SHORT_APDU:
            frame = yield (XFR, apdu, 0, 0)
            return frame[HEADER_SIZE:]
        if len(apdu) <= room:  # one message: the common case, no chaining plumbing
            frame = yield (XFR, apdu, 0, 0)
            if frame[9] == _CHAIN_COMPLETE:
                return frame[HEADER_SIZE:]
            return (yield from self._chained_rest(s, frame))
        chain = s.apdu_chain
        if chain is None or chain.chunk != max(1, room):
            chain = s.apdu_chain = Chain(
                CHAIN_EXTENDED, chunk=max(1, room), slot=s.index,
                max_length=self.channel.engine.max_message_length,
                resp_cap=CHAINED_RESPONSE_LIMIT)
        try:
            first = chain.first(self.channel.engine.next_seq(), apdu)
            response: bytes = yield (PUMP, chain, first, None)
            return response
        except LeftChain as left:
            frame = left.reply
        if chain.phase == 0:
            yield (RECOVER, None, None, None)
            raise ProtocolError(
                f"reader answered bChainParameter 0x{frame[9]:02X} to a command "
                "piece instead of asking for the next one (0x10)", reader=self.name,
                slot=s.index)
        joined = ChainedResponse()
        if chain.phase == 2:  # pieces 0x01 (0x03...) taken: the next one broke the chain
            joined.add(0x01, chain.response())
        return (yield from self._chained_rest(s, frame, joined))

    def _chained_rest(self, s: SlotState, frame: bytes,
                      joined: ChainedResponse | None = None) -> Steps:
        """Ask for the rest of a chained response (wLevelParameter 0x10) and join it;
        ``joined``: the pieces taken so far."""
        if joined is None:
            joined = ChainedResponse()
        add = joined.add
        done = add(frame[9], frame[HEADER_SIZE:])
        for _ in range(70_000):
            if done:
                return joined.result()
            frame = yield (XFR, b"", 0, _CONTINUE_RESPONSE)
            done = add(frame[9], frame[HEADER_SIZE:])
        raise ProtocolError("chained response never ended", reader=self.name, slot=s.index)


class NowRun:
    """A driver run by a caller that must not wait (``ccid.aio`` on its event loop).

    :meth:`io` does a request as far as it goes without waiting and returns the reply, or
    a callable that finishes the request (the channel's general path: time extensions,
    timeouts, ABORT) for the caller to run in a thread that may block, through
    :meth:`later`. :meth:`end` gives back what the run holds. Made by ``Card.transmit_now``.
    """

    __slots__ = ("card", "channel", "deadline", "end", "held", "s", "steps")

    def __init__(self, channel: Channel, s: SlotState, steps: Steps, deadline: float,
                 held: bool, card: Any, end: Any) -> None:
        self.channel = channel
        self.s = s
        self.steps = steps
        self.deadline = deadline
        self.held = held
        self.card = card
        #: Called once when the run is over (releases the reader and the slot).
        self.end = end

    def io(self, request: tuple[int, Any, Any, Any]) -> Any:
        """The reply to ``request`` (bytes), or a callable that gets it (see above)."""
        kind = request[0]
        if kind == XFR:
            return self.channel.xfr_now(self.s, request[1], self.deadline, request[2],
                                        request[3], self.held)
        if kind == PUMP:
            return self.channel.pump_now(self.s, request[1], request[2], self.deadline,
                                         self.held)
        return self.channel.recover

    def later(self, rest: Any) -> Any:
        """Run ``rest`` (from :meth:`io`) as this handle's call: ``Card.cancel()`` from
        another thread reaches its waits."""
        tls = self.channel.tls
        tls.card = self.card
        try:
            return rest()
        finally:
            tls.card = None
