"""ATR decoding: real ATRs, synthetic edge cases, errors, and a fuzz of any byte string."""

from __future__ import annotations

from functools import reduce
from operator import xor
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccid.errors import ProtocolError
from ccid.protocol.atr import ATR, ATRError, parse_atr
from ccid.protocol.params import DI_TABLE, FI_TABLE, FMAX_TABLE


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def with_tck(text: str) -> bytes:
    """Append the right TCK to a synthetic ATR."""
    body = h(text)
    return body + bytes([reduce(xor, body[1:], 0)])


# Real ATRs (published in smart-card ATR lists), with the values they must decode to.
REAL: list[tuple[str, str, dict[str, Any]]] = [
    (
        "PC/SC contactless storage card (T=0 and T=1 offered, no TA1)",
        "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 03 00 00 00 00 68",
        dict(protocols=(0, 1), fi_di_index=0x11, Fi=372, Di=1, TCK=0x68, ifsc=32,
             historical=h("80 4F 0C A0 00 00 03 06 03 00 03 00 00 00 00")),
    ),
    (
        "OpenPGP card 2 (T=1, TA1 18, TC1 FF, IFSC 254, T=15 class A+B)",
        "3B DA 18 FF 81 B1 FE 75 1F 03 00 31 C5 73 C0 01 40 00 90 00 0C",
        dict(protocols=(1,), first_protocol=1, fi_di_index=0x18, Fi=372, Di=12,
             f_max=5_000_000, guard_time_N=255, ifsc=254, bwi=7, cwi=5, edc="lrc",
             clock_stop=0, class_indicator=0x03, classes=("A", "B"), TCK=0x0C),
    ),
    (
        "YubiKey 4 (T=1, TA1 13)",
        "3B F8 13 00 00 81 31 FE 15 59 75 62 69 6B 65 79 34 D4",
        dict(protocols=(1,), fi_di_index=0x13, Di=4, ifsc=254, bwi=1, cwi=5,
             historical=b"Yubikey4", guard_time_N=0, clock_stop=None, classes=()),
    ),
    (
        "YubiKey NEO (T=1)",
        "3B FC 13 00 00 81 31 FE 15 59 75 62 69 6B 65 79 4E 45 4F 72 33 E1",
        dict(protocols=(1,), historical=b"YubikeyNEOr3", TCK=0xE1),
    ),
    (
        "NXP JCOP 2.4.1 (T=1, BWI 4, CWI 5)",
        "3B F8 13 00 00 81 31 FE 45 4A 43 4F 50 76 32 34 31 B7",
        dict(protocols=(1,), bwi=4, cwi=5, historical=b"JCOPv241"),
    ),
    (
        "Estonian ID (T=0 first, then T=1)",
        "3B FE 18 00 00 80 31 FE 45 45 73 74 45 49 44 20 76 65 72 20 31 2E 30 A8",
        dict(protocols=(0, 1), first_protocol=0, ifsc=254, bwi=4, cwi=5, wi=10,
             historical=b"EstEID ver 1.0"),
    ),
    (
        "Belgian eID (T=0 only, TC2 WI=10, no TCK)",
        "3B 98 13 40 0A A5 03 01 01 01 AD 13 11",
        dict(protocols=(0,), fi_di_index=0x13, wi=10, TCK=None, tck_ok=True),
    ),
    (
        "Gemalto (T=0 only, TA1 96, 15 historical bytes)",
        "3B 7F 96 00 00 80 31 80 65 B0 84 41 3D F6 12 0F FE 82 90 00",
        dict(protocols=(0,), fi_di_index=0x96, Fi=512, Di=32, TCK=None, specific_mode=False),
    ),
    (
        "US CAC (T=0 with a T=15 TA: TCK present)",
        "3B DB 96 00 80 1F 03 00 31 C0 64 B0 F3 10 00 07 90 00 80",
        dict(protocols=(0,), clock_stop=0, classes=("A", "B"), TCK=0x80),
    ),
    (
        "SIM (T=0, TA1 96, T=15 TA C7: clock stop no preference, classes A B C)",
        "3B 9F 96 80 1F C7 80 31 A0 73 BE 21 13 67 43 20 07 18 00 00 01 A5",
        dict(protocols=(0,), clock_stop=3, classes=("A", "B", "C"), TCK=0xA5),
    ),
    (
        "Inverse convention (TS 3F), T=0 only",
        "3F 65 25 08 22 04 68 90 00",
        dict(convention="inverse", protocols=(0,), guard_time_N=8, TCK=None),
    ),
    (
        "No interface bytes at all",
        "3B 02 14 50",
        dict(protocols=(0,), fi_di_index=0x11, wi=10, historical=h("14 50")),
    ),
]


@pytest.mark.parametrize(("name", "text", "expect"), REAL, ids=[r[0] for r in REAL])
def test_real_atrs(name: str, text: str, expect: dict[str, Any]) -> None:
    raw = h(text)
    atr = parse_atr(raw)
    assert bytes(atr) == raw
    assert atr.tck_ok
    for field, value in expect.items():
        assert getattr(atr, field) == value, field
    lines = atr.describe()
    assert lines[0].endswith(text.upper())
    assert any(line.startswith("TS = ") for line in lines)


def test_describe_ta1_line() -> None:
    atr = parse_atr(h("3B 7F 96 00 00 80 31 80 65 B0 84 41 3D F6 12 0F FE 82 90 00"))
    ta1 = next(line for line in atr.describe() if line.startswith("TA(1)"))
    assert "Fi=512" in ta1 and "Di=32" in ta1 and "16.000 cycles/etu" in ta1
    assert "250000 bit/s" in ta1


def test_interface_levels_structure() -> None:
    atr = parse_atr(h("3B DA 18 FF 81 B1 FE 75 1F 03 00 31 C5 73 C0 01 40 00 90 00 0C"))
    assert atr.TA == (0x18, None, 0xFE, 0x03)
    assert atr.TB == (None, None, 0x75, None)
    assert atr.TC == (0xFF, None, None, None)
    assert atr.TD == (0x81, 0xB1, 0x1F, None)
    assert atr.T0 == 0xDA


def test_t1_crc_and_later_levels() -> None:
    # TD1 T=1, TD2 T=1: TA3 IFSC 0x80, TC3 CRC; TD3 T=1 again with another TA4 (ignored).
    atr = parse_atr(with_tck("3B 80 81 F1 80 45 01 11 40"))
    assert atr.protocols == (1,)
    assert atr.ifsc == 0x80 and atr.bwi == 4 and atr.cwi == 5 and atr.edc == "crc"
    assert any("CRC" in line for line in atr.describe())


def test_t1_defaults_without_specific_bytes() -> None:
    atr = parse_atr(with_tck("3B 80 01"))  # TD1 = T=1, nothing else
    assert atr.protocols == (1,)
    assert (atr.ifsc, atr.bwi, atr.cwi, atr.edc) == (32, 4, 13, "lrc")


def test_reserved_ifsc_falls_back() -> None:
    assert parse_atr(with_tck("3B 80 81 11 FF")).ifsc == 32
    assert parse_atr(with_tck("3B 80 81 11 00")).ifsc == 32


def test_specific_mode_ta2() -> None:
    # TA1 96, TD1 T=1 with TA2 = 0x81 (specific T=1, cannot change, Fi/Di from TA1).
    atr = parse_atr(with_tck("3B 90 96 91 81 31 FE 55"))
    assert atr.specific_mode and atr.specific_protocol == 1
    assert atr.can_change_mode is False and atr.implicit_params is False
    assert atr.protocols == (1,)
    atr2 = parse_atr(with_tck("3B 90 96 11 11"))  # TA2 0x11: can change, implicit
    assert atr2.specific_mode and atr2.can_change_mode is True and atr2.implicit_params is True
    plain = parse_atr(h("3B 10 96"))
    assert not plain.specific_mode
    assert plain.specific_protocol is None and plain.can_change_mode is None
    assert any("specific mode" in line for line in atr.describe())


def test_rfu_ta1_gives_none_factors() -> None:
    atr = parse_atr(h("3B 10 70"))  # Fi index 7 and Di index 0 are RFU
    assert atr.Fi is None and atr.Di is None and atr.f_max is None
    assert any("RFU" in line for line in atr.describe())


def test_tc2_zero_wi_defaults() -> None:
    assert parse_atr(h("3B 80 40 00")).wi == 10
    assert parse_atr(h("3B 80 40 FF")).wi == 255


def test_t0_only_with_spare_tck() -> None:
    # A T=0-only ATR with one trailing byte: read as a TCK and checked.
    raw = with_tck("3B 02 14 50")
    atr = parse_atr(raw)
    assert raw[-1] == atr.TCK and atr.tck_ok
    with pytest.raises(ATRError, match="TCK"):
        parse_atr(raw[:-1] + bytes([raw[-1] ^ 1]))


def test_bad_tck() -> None:
    raw = bytearray(h("3B F8 13 00 00 81 31 FE 15 59 75 62 69 6B 65 79 34 D4"))
    raw[-1] ^= 0x5A
    with pytest.raises(ATRError, match="wrong TCK"):
        parse_atr(bytes(raw))
    atr = parse_atr(bytes(raw), check_tck=False)
    assert atr.tck_ok is False and raw[-1] == atr.TCK
    assert any("WRONG" in line for line in atr.describe())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("3B", "T0 missing"),
        ("3A 00", "TS 0x3A"),
        ("03 00", "TS 0x03"),
        ("3B 10", "TA1 missing"),
        ("3B 80", "TD1 missing"),
        ("3B 80 81", "TD2 missing"),  # TD1 announces TD2
        ("3B 05 01 02", "historical"),
        ("3B 80 01", "TCK missing"),  # T=1 offered: TCK required
        ("3B 00 00 00", "unexpected"),  # two bytes after a T=0-only ATR
        ("3B 0F" + " 00" * 32, "longer than 33"),
    ],
)
def test_errors(text: str, match: str) -> None:
    with pytest.raises(ATRError, match=match):
        parse_atr(h(text))


def test_atr_error_is_protocol_error() -> None:
    assert issubclass(ATRError, ProtocolError)


def test_tables_in_one_place() -> None:
    assert FI_TABLE[0x9] == 512 and DI_TABLE[0x6] == 32 and FMAX_TABLE[0x1] == 5_000_000
    assert 0x7 not in FI_TABLE and 0x0 not in DI_TABLE


@given(st.binary(max_size=40))
def test_fuzz_any_bytes(raw: bytes) -> None:
    try:
        atr = parse_atr(raw)
    except ATRError:
        return
    assert bytes(atr) == raw
    assert atr.tck_ok
    atr.describe()
    for name in ("protocols", "first_protocol", "Fi", "Di", "f_max", "fi_di_index",
                 "specific_mode", "specific_protocol", "can_change_mode", "implicit_params",
                 "guard_time_N", "wi", "ifsc", "bwi", "cwi", "edc", "clock_stop",
                 "class_indicator", "classes"):
        getattr(atr, name)


@st.composite
def structured_atrs(draw: st.DrawFn) -> bytes:
    """Well-formed ATRs: random interface bytes, historical bytes and a right TCK."""
    ts = draw(st.sampled_from([0x3B, 0x3F]))
    k = draw(st.integers(0, 15))
    body = bytearray()
    levels = draw(st.integers(1, 4))
    any_t = False
    y = draw(st.integers(0, 7))  # TA/TB/TC presence of level 1 (TD set below)
    t0 = ((y | (0x8 if levels > 1 else 0)) << 4) | k
    for level in range(1, levels + 1):
        for bit in (1, 2, 4):
            if y & bit:
                body.append(draw(st.integers(0, 255)))
        if level < levels:
            y = draw(st.integers(0, 7))
            t = draw(st.sampled_from([0, 1, 15]))
            any_t = any_t or t != 0
            body.append(((y | (0x8 if level + 1 < levels else 0)) << 4) | t)
    body += draw(st.binary(min_size=k, max_size=k))
    raw = bytes([ts, t0]) + bytes(body)
    if any_t:
        raw += bytes([reduce(xor, raw[1:], 0)])
    return raw


@given(structured_atrs())
def test_structured_atrs_parse(raw: bytes) -> None:
    if len(raw) > 33:
        with pytest.raises(ATRError):
            parse_atr(raw)
        return
    atr = parse_atr(raw)
    assert isinstance(atr, ATR)
    assert bytes(atr) == raw
    assert len(atr.historical) == raw[1] & 0x0F
    assert all(t != 15 for t in atr.protocols)
