"""T=0: command APDU to TPDU mapping (ISO/IEC 7816-3 12.2, 7816-4 5.1), sans-IO.

``T0Exchange`` turns one APDU into the TPDUs a TPDU-level reader must send, and the card's
replies into one APDU response: GET RESPONSE on 61xx, re-issue with P3 = xx on 6Cxx.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from ccid.errors import ProtocolError, UsageError

__all__ = ["Apdu", "ApduCase", "T0Error", "T0Exchange", "classify_apdu", "parse_apdu"]

_INS_GET_RESPONSE: Final = 0xC0


class T0Error(ProtocolError):
    """The card broke the T=0 exchange (short reply, endless 61xx/6Cxx)."""


class ApduCase(Enum):
    """ISO/IEC 7816-4 command cases: S short, E extended."""

    CASE_1 = "1"
    CASE_2S = "2S"
    CASE_3S = "3S"
    CASE_4S = "4S"
    CASE_2E = "2E"
    CASE_3E = "3E"
    CASE_4E = "4E"

    @property
    def extended(self) -> bool:
        return self.value.endswith("E")


@dataclass(frozen=True, slots=True)
class Apdu:
    """A command APDU split into header, data (Nc bytes) and Ne (0 when absent)."""

    case: ApduCase
    header: bytes
    data: bytes
    ne: int


def parse_apdu(apdu: bytes) -> Apdu:
    """Split a command APDU; ``UsageError`` naming what is wrong when malformed."""
    apdu = bytes(apdu)
    n = len(apdu)
    if n < 4:
        raise UsageError(f"APDU of {n} bytes is shorter than the 4-byte header")
    header = apdu[:4]
    if n == 4:
        return Apdu(ApduCase.CASE_1, header, b"", 0)
    if n == 5:
        return Apdu(ApduCase.CASE_2S, header, b"", apdu[4] or 256)
    b5 = apdu[4]
    if b5 != 0:
        if n == 5 + b5:
            return Apdu(ApduCase.CASE_3S, header, apdu[5:], 0)
        if n == 6 + b5:
            return Apdu(ApduCase.CASE_4S, header, apdu[5:-1], apdu[-1] or 256)
        raise UsageError(
            f"short APDU: Lc={b5} needs {5 + b5} or {6 + b5} bytes, got {n}"
        )
    if n < 7:
        raise UsageError(f"APDU of {n} bytes with byte 5 = 00 is neither short nor extended")
    if n == 7:
        return Apdu(ApduCase.CASE_2E, header, b"", int.from_bytes(apdu[5:7], "big") or 65536)
    lc = int.from_bytes(apdu[5:7], "big")
    if lc == 0:
        raise UsageError(f"extended APDU of {n} bytes has Lc = 0")
    if n == 7 + lc:
        return Apdu(ApduCase.CASE_3E, header, apdu[7:], 0)
    if n == 9 + lc:
        return Apdu(ApduCase.CASE_4E, header, apdu[7:-2],
                    int.from_bytes(apdu[-2:], "big") or 65536)
    raise UsageError(f"extended APDU: Lc={lc} needs {7 + lc} or {9 + lc} bytes, got {n}")


def classify_apdu(apdu: bytes) -> ApduCase:
    """The ISO/IEC 7816-4 case of a command APDU; ``UsageError`` when malformed."""
    return parse_apdu(apdu).case


class T0Exchange:
    """One APDU over T=0: call ``next_tpdu()``, send it, ``receive()`` the reply, repeat.

    ``next_tpdu()`` returns None once ``done``; ``response`` is then data + SW1 SW2.

    * case 1: header + P3 = 00; case 2: header + P3 = Le; case 3/4: header + Lc + data
      (case 4 drops Le: the data comes back through GET RESPONSE);
    * 61xx: GET RESPONSE (CLA of the command, INS C0, P3 = xx) and data accumulates over
      chained 61xx; 6Cxx after a TPDU that asked for data (case 2 or GET RESPONSE):
      the same TPDU again with P3 = xx (a 6Cxx to a TPDU carrying data is final);
    * extended APDUs are sent short when they fit (Nc <= 255; Ne > 256 asks 256 and
      relies on 61xx), else ``UsageError`` (ENVELOPE is not supported);
    * ``auto_get_response=False``: the first reply is the response, 61xx/6Cxx included.

    At most ``max_rounds`` TPDUs are sent; a card asking for more raises ``T0Error``.
    """

    def __init__(self, apdu: bytes, *, auto_get_response: bool = True,
                 max_rounds: int = 256) -> None:
        if max_rounds < 1:
            raise UsageError(f"max_rounds must be at least 1, got {max_rounds}")
        parsed = parse_apdu(apdu)
        if len(parsed.data) > 255:
            raise UsageError(
                f"APDU carries {len(parsed.data)} data bytes: over T=0 at most 255 fit a "
                "short TPDU (ENVELOPE is not supported); use T=1 or an APDU-level reader"
            )
        self._cla = parsed.header[0]
        self._auto = auto_get_response
        self._max_rounds = max_rounds
        self._rounds = 0
        self._data = bytearray()
        self._response: bytes | None = None
        if parsed.data:
            self._tpdu: bytes | None = parsed.header + bytes([len(parsed.data)]) + parsed.data
        elif parsed.ne:
            self._tpdu = parsed.header + bytes([parsed.ne & 0xFF if parsed.ne < 256 else 0])
        else:
            self._tpdu = parsed.header + b"\x00"
        # Only a TPDU that asks for data (no data field) may be re-issued with a new P3.
        self._asks_data = not parsed.data and parsed.ne > 0
        self._waiting = False

    @property
    def done(self) -> bool:
        """True once the APDU response is known."""
        return self._response is not None

    @property
    def response(self) -> bytes:
        """The APDU response (data + SW1 SW2); ``UsageError`` before ``done``."""
        if self._response is None:
            raise UsageError("T=0 exchange not finished: no response yet")
        return self._response

    @property
    def rounds(self) -> int:
        """TPDUs handed out so far."""
        return self._rounds

    def next_tpdu(self) -> bytes | None:
        """The next TPDU to send, or None when the exchange is over."""
        if self._response is not None:
            return None
        if self._waiting:
            raise UsageError("T=0 exchange is waiting for the reply to the last TPDU")
        if self._tpdu is None:  # pragma: no cover - set whenever not done
            raise UsageError("T=0 exchange has nothing to send")
        if self._rounds >= self._max_rounds:
            raise T0Error(f"card still asks for more after {self._rounds} TPDUs")
        self._rounds += 1
        self._waiting = True
        return self._tpdu

    def receive(self, response: bytes) -> None:
        """Feed the card's reply (data + SW1 SW2) to the last TPDU."""
        if not self._waiting:
            raise UsageError("T=0 exchange got a reply but sent no TPDU")
        response = bytes(response)
        if len(response) < 2:
            raise T0Error(f"T=0 reply of {len(response)} bytes has no status word")
        self._waiting = False
        sw1, sw2 = response[-2], response[-1]
        self._data += response[:-2]
        if not self._auto:
            self._finish(sw1, sw2)
            return
        if sw1 == 0x61:
            self._tpdu = bytes([self._cla, _INS_GET_RESPONSE, 0x00, 0x00, sw2])
            self._asks_data = True
        elif sw1 == 0x6C and self._asks_data and self._tpdu is not None:
            self._tpdu = self._tpdu[:4] + bytes([sw2])
        else:
            self._finish(sw1, sw2)

    def _finish(self, sw1: int, sw2: int) -> None:
        self._response = bytes(self._data) + bytes([sw1, sw2])
        self._tpdu = None
