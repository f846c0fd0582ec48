"""Status words (ISO/IEC 7816-4 5.6) and hex helpers.

``describe(sw)`` says what a status word means; ``check(response)`` is the opt-in strict
mode: it returns the response data when the card reported success and raises
``StatusWordError`` (a ``CardError`` carrying ``sw1``/``sw2``) otherwise. ``to_hex`` and
``from_hex`` convert bytes to and from the ``"3B 65 00"`` text smart-card tools print.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ccid.errors import StatusWordError, UsageError

__all__ = ["StatusWordError", "check", "describe", "from_hex", "is_success", "split", "to_hex"]

# exact status words, then per-SW1 fallbacks (a meaning for the whole class)
_EXACT: dict[int, str] = {
    0x9000: "success",
    0x6281: "warning: part of the returned data may be corrupted",
    0x6282: "warning: end of file or record reached before Le bytes were read",
    0x6283: "warning: the selected file is deactivated",
    0x6284: "warning: file control information not formatted as expected",
    0x6285: "warning: the selected file is in termination state",
    0x6286: "warning: no input data available from a sensor",
    0x6381: "warning: the file was filled up by the last write",
    0x6401: "execution error: immediate response required by the card",
    0x6581: "execution error: memory failure",
    0x6700: "wrong length",
    0x6881: "logical channel not supported",
    0x6882: "secure messaging not supported",
    0x6883: "last command of the chain expected",
    0x6884: "command chaining not supported",
    0x6981: "command incompatible with the file structure",
    0x6982: "security status not satisfied",
    0x6983: "authentication method blocked",
    0x6984: "reference data not usable",
    0x6985: "conditions of use not satisfied",
    0x6986: "command not allowed (no current EF)",
    0x6987: "expected secure messaging data objects missing",
    0x6988: "incorrect secure messaging data objects",
    0x6A80: "incorrect parameters in the data field",
    0x6A81: "function not supported",
    0x6A82: "file or application not found",
    0x6A83: "record not found",
    0x6A84: "not enough memory space in the file",
    0x6A85: "Nc inconsistent with the TLV structure",
    0x6A86: "incorrect parameters P1-P2",
    0x6A87: "Nc inconsistent with P1-P2",
    0x6A88: "referenced data or reference data not found",
    0x6A89: "file already exists",
    0x6A8A: "DF name already exists",
    0x6B00: "wrong parameters P1-P2",
    0x6D00: "instruction not supported or invalid",
    0x6E00: "class not supported",
    0x6F00: "no precise diagnosis",
}

_BY_SW1: dict[int, str] = {
    0x62: "warning: state of non-volatile memory unchanged",
    0x63: "warning: state of non-volatile memory changed",
    0x64: "execution error: state of non-volatile memory unchanged",
    0x65: "execution error: state of non-volatile memory changed",
    0x66: "execution error: security-related issue",
    0x67: "wrong length",
    0x68: "functions in CLA not supported",
    0x69: "command not allowed",
    0x6A: "wrong parameters P1-P2",
    0x6B: "wrong parameters P1-P2",
    0x6D: "instruction not supported or invalid",
    0x6E: "class not supported",
    0x6F: "no precise diagnosis",
}


def _sw(sw: Any) -> int:
    """One status word as an int from 0x9000, (0x90, 0x00), b"\\x90\\x00" or a response."""
    if isinstance(sw, bool):
        raise UsageError(f"a status word is an int 0..0xFFFF or two bytes, not {sw!r}")
    if isinstance(sw, int):
        if 0 <= sw <= 0xFFFF:
            return sw
        raise UsageError(f"a status word is 0..0xFFFF, got 0x{sw:X}")
    if isinstance(sw, str):
        raise UsageError(f"a status word is an int or bytes, not str {sw!r}: use from_hex")
    try:
        data = bytes(sw)
    except (TypeError, ValueError):
        raise UsageError(
            f"a status word is an int or two bytes, not {type(sw).__name__}") from None
    if len(data) < 2:
        raise UsageError(f"a response holds at least SW1 SW2, got {len(data)} byte(s)")
    return data[-2] << 8 | data[-1]


def split(response: bytes | bytearray | memoryview | Sequence[int]) -> tuple[bytes, int, int]:
    """``(data, sw1, sw2)`` of a response APDU (UsageError when shorter than 2 bytes)."""
    raw = bytes(response)
    if len(raw) < 2:
        raise UsageError(f"a response holds at least SW1 SW2, got {len(raw)} byte(s)")
    return raw[:-2], raw[-2], raw[-1]


def describe(sw: int | bytes | bytearray | memoryview | Sequence[int]) -> str:
    """What a status word means: ``describe(0x6A82)``, ``describe(b"\\x6a\\x82")`` or a
    whole response (its last two bytes) -> ``"file or application not found"``."""
    word = _sw(sw)
    sw1, sw2 = word >> 8, word & 0xFF
    exact = _EXACT.get(word)
    if exact is not None:
        return exact
    if sw1 == 0x61:
        return f"success, {sw2 or 256} more byte(s) available (GET RESPONSE)"
    if sw1 == 0x6C:
        return f"wrong Le: the exact length is {sw2 or 256}"
    if word & 0xFFF0 == 0x63C0:
        return f"verification failed, {sw2 & 0x0F} tries left"
    if sw1 == 0x62 and 0x02 <= sw2 <= 0x80:
        return f"warning: the card asks for {sw2} byte(s) to be fetched (triggering)"
    if sw1 == 0x64 and 0x02 <= sw2 <= 0x80:
        return f"execution error: the card asks for {sw2} byte(s) to be fetched (triggering)"
    if sw1 == 0x9F:  # GSM 11.11 cards answer 9Fxx where ISO cards answer 61xx
        return f"success, {sw2 or 256} byte(s) of response available (GSM)"
    if sw1 & 0xF0 == 0x90:
        return "proprietary status (9Xxx)"
    fallback = _BY_SW1.get(sw1)
    return fallback if fallback is not None else "unknown status"


def is_success(sw: int | bytes | bytearray | memoryview | Sequence[int]) -> bool:
    """True for 9000 and 61xx (the command worked; 61xx: more data can be fetched)."""
    word = _sw(sw)
    return word == 0x9000 or word >> 8 == 0x61


def check(response: bytes | bytearray | memoryview | Sequence[int]) -> bytes:
    """The response data without SW1 SW2 when the card reported success (9000, 61xx);
    ``StatusWordError`` carrying ``sw1``/``sw2``/``data`` otherwise.

    Opt-in: ``Card.transmit`` itself never raises for a status word, as PC/SC does not.
    """
    data, sw1, sw2 = split(response)
    if (sw1 == 0x90 and sw2 == 0) or sw1 == 0x61:
        return data
    raise StatusWordError(f"card answered {sw1:02X} {sw2:02X}: {describe(sw1 << 8 | sw2)}",
                          sw1=sw1, sw2=sw2, data=data)


def to_hex(data: bytes | bytearray | memoryview | Sequence[int], sep: str = " ") -> str:
    """``b"\\x3b\\x65"`` -> ``"3B 65"`` (uppercase; ``sep=""`` packs the bytes together)."""
    if isinstance(data, str):
        raise UsageError("to_hex takes bytes, not str")
    try:
        raw = bytes(data)
    except (TypeError, ValueError):
        raise UsageError(
            f"to_hex takes bytes or byte values 0..255, not {type(data).__name__}") from None
    return sep.join(f"{b:02X}" for b in raw)


def from_hex(text: str) -> bytes:
    """Hex text -> bytes. Accepts what smart-card tools print and users type:
    ``"3B 65 00"``, ``"3b6500"``, ``"3B:65:00"``, ``"3B,65,00"``, ``"0x3B 0x65 0x00"``,
    across lines; ``UsageError`` naming the problem otherwise."""
    if not isinstance(text, str):
        raise UsageError(f"from_hex takes str, not {type(text).__name__}")
    tokens = text.replace(",", " ").replace(":", " ").split()
    digits = []
    for token in tokens:
        if token[:2] in ("0x", "0X"):
            token = token[2:]
            if not token or len(token) > 2:
                raise UsageError(f"0x prefixes one byte (0x3B), got {text[:40]!r}")
            if len(token) % 2:  # 0x1 is one byte, written short
                token = "0" + token
        digits.append(token)
    cleaned = "".join(digits)
    bad = next((c for c in cleaned if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise UsageError(f"not hexadecimal: {bad!r} in {text[:40]!r}")
    if len(cleaned) % 2:
        raise UsageError(f"odd number of hex digits ({len(cleaned)}) in {text[:40]!r}")
    return bytes.fromhex(cleaned)
