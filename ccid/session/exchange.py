"""The exchange drivers: one APDU in, its response out, at the reader's exchange level.

* APDU level (short / extended): one XfrBlock, or extended-APDU chaining (wLevelParameter)
  through :class:`ccid.framing.Chain` and the rest of a chained response;
* T=1 at TPDU level: ``framing.Chain`` for the common blocks, the sans-IO
  ``ccid.protocol.t1.T1Protocol`` for everything else (error recovery, S-blocks, WTX);
* T=0 at TPDU level: the sans-IO ``ccid.protocol.t0.T0Exchange`` (GET RESPONSE, Le).

The protocol objects decide what to send; the command channel sends it. A one-busy-slot
reader is held for the whole APDU (another slot's command cannot slip in between).
"""

from __future__ import annotations

import time
from typing import Final

from ccid.constants import HEADER_SIZE, ChainParameter, ExchangeLevel, LevelParameter
from ccid.descriptor import CCIDDescriptor
from ccid.engine import CHAINED_RESPONSE_LIMIT, ChainedResponse
from ccid.errors import CardError, CardMuteError, ProtocolError, UnsupportedReaderError, UsageError
from ccid.framing import CHAIN_EXTENDED, CHAIN_T1, Chain
from ccid.protocol.t0 import T0Exchange
from ccid.session.channel import Channel, LeftChain
from ccid.session.slot import SlotState

__all__ = ["T1_MAX_ROUNDS", "Exchange", "character_level"]

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
    """Runs APDUs on the slots of one reader."""

    def __init__(self, channel: Channel, descriptor: CCIDDescriptor, *,
                 auto_get_response: bool) -> None:
        self.channel = channel
        self.name = channel.name
        self.level = descriptor.exchange_level
        self.auto_get_response = auto_get_response

    def transmit(self, s: SlotState, apdu: bytes, ceiling: float, raw_t0: bool) -> bytes:
        """Send ``apdu`` to the card in ``s`` (slot lock held); its response + SW1 SW2."""
        level = self.level
        if level is _SHORT_APDU or level is _EXTENDED_APDU:
            return self.apdu_level(s, apdu, ceiling)
        if s.protocol == 1:
            return self.t1_run(s, s.t1.start(apdu), ceiling, apdu)
        if level is _CHARACTER:
            raise character_level(self.name, s.index)
        return self.t0_run(s, apdu, ceiling, raw_t0)

    def t0_run(self, s: SlotState, apdu: bytes, ceiling: float, raw: bool) -> bytes:
        exchange = T0Exchange(apdu, auto_get_response=self.auto_get_response and not raw)
        channel = self.channel
        deadline = _monotonic() + ceiling
        held = channel.hold(deadline)
        try:
            while True:
                tpdu = exchange.next_tpdu()
                if tpdu is None:
                    return exchange.response
                exchange.receive(channel.xfr(s, tpdu, deadline, held=held)[HEADER_SIZE:])
        finally:
            if held:
                channel.unhold()

    # The fast chain and the protocol object's fallback share one hold of the reader and
    # one deadline: split, each half would need both.
    def t1_run(self, s: SlotState, block: bytes, ceiling: float, apdu: bytes | None = None
               ) -> bytes:
        """Run a T=1 exchange from its first ``block``. ``apdu``: the APDU that block
        starts; the hot part of its exchange (I-blocks acknowledged, the card's I-blocks
        taken) then runs through :class:`ccid.framing.Chain`, and the protocol object takes
        over only where that stops (error recovery, S-blocks, WTX)."""
        channel = self.channel
        t1 = s.t1
        step = t1.step
        xfr = channel.xfr
        deadline = _monotonic() + ceiling
        bwi = 0
        held = channel.hold(deadline)
        try:
            limit = channel.engine.max_message_length
            if apdu is not None and (not limit or limit >= HEADER_SIZE + 5 + t1.ifsc):
                chain = s.t1_chain
                if chain is None:
                    chain = s.t1_chain = Chain(
                        CHAIN_T1, chunk=t1.ifsc, slot=s.index, max_length=limit, nad=t1.nad,
                        crc=t1.crc, ifsd=t1.ifsd, resp_cap=t1.max_response)
                first = chain.first(channel.engine.next_seq(), apdu, ns=t1.ns, nr=t1.nr,
                                    chunk=t1.ifsc, ifsd=t1.ifsd)
                try:
                    response = channel.pump(s, chain, first, deadline, held)
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
                channel.unhold()

    def apdu_level(self, s: SlotState, apdu: bytes, ceiling: float) -> bytes:
        channel = self.channel
        deadline = _monotonic() + ceiling
        limit = channel.engine.max_message_length
        room = (limit or 65546) - HEADER_SIZE
        if self.level is _SHORT_APDU and len(apdu) > min(room, _SHORT_APDU_MAX):
            raise UsageError(
                f"APDU of {len(apdu)} bytes does not fit a short-APDU reader "
                "(at most 261 bytes: 4 header + Lc + 255 data + Le)", reader=self.name)
        held = channel.hold(deadline)
        try:
            if self.level is _SHORT_APDU:
                return channel.xfr(s, apdu, deadline, held=held)[HEADER_SIZE:]
            if len(apdu) <= room:  # one message: the common case, no chaining plumbing
                frame = channel.xfr(s, apdu, deadline, held=held)
                if frame[9] == _CHAIN_COMPLETE:
                    return frame[HEADER_SIZE:]
                return self._chained_rest(s, frame, deadline, held)
            chain = s.apdu_chain
            if chain is None or chain.chunk != max(1, room):
                chain = s.apdu_chain = Chain(
                    CHAIN_EXTENDED, chunk=max(1, room), slot=s.index, max_length=limit,
                    resp_cap=CHAINED_RESPONSE_LIMIT)
            try:
                return channel.pump(s, chain, chain.first(channel.engine.next_seq(), apdu),
                                    deadline, held)
            except LeftChain as left:
                frame = left.reply
            if chain.phase == 0:
                channel.recover()
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
                channel.unhold()

    def _chained_rest(self, s: SlotState, frame: bytes, deadline: float, held: bool = False,
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
            frame = self.channel.xfr(s, b"", deadline, level=_CONTINUE_RESPONSE, held=held)
            done = add(frame[9], frame[HEADER_SIZE:])
        raise ProtocolError("chained response never ended", reader=self.name, slot=s.index)
