"""PIN entry on a TPDU-level pinpad with a T=1 card (PC_to_RDR_Secure carries T=1).

At TPDU level the pinpad sends the card a whole T=1 block: the host gives it the block's
prologue (NAD, PCB with the session's N(S), LEN) in the structure's bTeoPrologue, and the
reader returns the card's block as is. The session's T=1 state takes that block as the
answer to its own I-block, so the sequence numbers stay in step for the next exchange.
"""

from __future__ import annotations

from typing import Any

from ccid.errors import ProtocolError

__all__ = ["secure_t1"]


def secure_t1(reader: Any, s: Any, payload: bytes, apdu_length: int, timeout: float) -> bytes:
    """Run PC_to_RDR_Secure ``payload`` (its PIN APDU: the last ``apdu_length`` bytes, the
    3-byte bTeoPrologue just before it) over T=1; the card's response APDU."""
    t1 = s.t1
    at = len(payload) - apdu_length - 3
    prologue = t1.secure_prologue(payload[at + 3:])
    try:
        block = reader._secure(s, payload[:at] + prologue + payload[at + 3:], timeout)
    except BaseException:
        t1.secure_cancel()  # the pinpad sent nothing: no sequence number moved
        raise
    try:
        following, _wtx, response = t1.step(bytes(block))
    except BaseException:
        t1.secure_cancel()
        raise
    if following is None:
        return bytes(response)
    if not following[1] & 0x80:
        # T=1 recovery would send our I-block again, but it carries the template's filler,
        # not the PIN (only the pinpad has it): that must never reach the card.
        t1.secure_cancel()
        raise ProtocolError("the card did not take the pinpad's T=1 block (it answered "
                            f"{bytes(block[:3]).hex(' ')})", reader=reader.name, slot=s.index)
    # S(WTX response) or an R-block asking for the rest of a chained response.
    result: bytes = reader._t1_run(s, following, timeout + 5.0)
    return result
