"""PPS, Fi/Di choice, SetParameters structures and waiting times."""

from __future__ import annotations

from functools import reduce
from operator import xor
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccid.errors import ProtocolError, UsageError
from ccid.protocol.atr import parse_atr
from ccid.protocol.params import (
    DI_TABLE,
    FI_TABLE,
    PPSError,
    T0Parameters,
    T1Parameters,
    baud_rate,
    build_pps_request,
    check_pps_response,
    choose_fi_di,
    effective_fi_di,
    etu_seconds,
    parameters_from_atr,
    t0_wwt_seconds,
    t1_bwt_seconds,
    t1_cwt_seconds,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def with_tck(text: str) -> bytes:
    body = h(text)
    return body + bytes([reduce(xor, body[1:], 0)])


def atr_with_ta1(ta1: int) -> bytes:
    return bytes([0x3B, 0x10, ta1])


# --- rates --------------------------------------------------------------------------


def test_baud_rate_values() -> None:
    assert baud_rate(372, 1, 4000) == 10753
    assert baud_rate(372, 12, 4000) == 129032
    assert baud_rate(512, 32, 4000) == 250000
    assert baud_rate(372, 1, 3571) == 9599  # 3.5712 MHz gives 9600; 3571 kHz a little less
    with pytest.raises(UsageError):
        baud_rate(0, 1, 4000)


@pytest.fixture(scope="module")
def ct700_rates(ct700_vectors: dict[str, Any]) -> list[int]:
    rates: list[int] = ct700_vectors["get_data_rates_response"]["expect"]["rates_bps"]
    return rates


@pytest.mark.parametrize(
    ("ta1", "expect_fi_di", "expect_rate"),
    [
        (0x96, 0x96, 250000),  # listed as is
        (0x18, 0x18, 129032),  # 129032.26 rounds to the listed rate
        (0x13, 0x13, 43011),
        (0x97, 0x97, 500000),  # fastest the CT700 lists
        (0x17, 0x16, 344086),  # 688172 not listed: Di 64 -> 32
        (0x67, 0x66, 68817),  # 137634 not listed: next smaller Di
        (0x91, 0x11, 10753),  # 7812 not listed and no smaller Di: default
        (0xD9, 0xD9, 39063),  # 39062.5 rounds half up, as the reader lists it
        (0x11, 0x11, 10753),
    ],
)
def test_choose_fi_di_ct700(ct700_rates: list[int], ta1: int, expect_fi_di: int,
                            expect_rate: int) -> None:
    atr = parse_atr(atr_with_ta1(ta1))
    fi_di, rate = choose_fi_di(atr, clock_khz=4000, data_rates=ct700_rates, max_data_rate=0)
    assert (fi_di, rate) == (expect_fi_di, expect_rate)
    assert fi_di == 0x11 or any(abs(rate - r) <= 2 for r in ct700_rates)


def test_choose_fi_di_rate_tolerance() -> None:
    atr = parse_atr(atr_with_ta1(0x96))  # 250000 bit/s at 4 MHz
    assert choose_fi_di(atr, clock_khz=4000, data_rates=[249998], max_data_rate=0)[0] == 0x96
    # 3 bit/s off is not the same rate: fall to Di 20 (156250), listed
    assert choose_fi_di(atr, clock_khz=4000, data_rates=[249997, 156250],
                        max_data_rate=0) == (0x99, 156250)


def test_choose_fi_di_without_list_uses_max_rate() -> None:
    atr = parse_atr(atr_with_ta1(0x96))
    assert choose_fi_di(atr, clock_khz=4000, data_rates=[], max_data_rate=250000) == (0x96, 250000)
    # 250000 too fast: Di 20 (156250) is the next smaller
    assert choose_fi_di(atr, clock_khz=4000, data_rates=[], max_data_rate=200000) == (0x99, 156250)
    assert choose_fi_di(atr, clock_khz=4000, data_rates=[], max_data_rate=9600) == (0x11, 10753)


def test_choose_fi_di_respects_fmax() -> None:
    atr = parse_atr(atr_with_ta1(0x96))  # f(max) 5 MHz
    fi_di, _ = choose_fi_di(atr, clock_khz=8000, data_rates=[], max_data_rate=0)
    assert fi_di == 0x11


def test_choose_fi_di_no_ta1_and_rfu() -> None:
    for raw in (h("3B 00"), atr_with_ta1(0x7F)):
        atr = parse_atr(raw)
        assert choose_fi_di(atr, clock_khz=4000, data_rates=[], max_data_rate=0)[0] == 0x11


@given(st.integers(0, 255), st.sampled_from([3571, 4000, 4800, 5000]),
       st.lists(st.integers(9600, 1_000_000), max_size=20), st.integers(0, 1_000_000))
def test_choose_fi_di_properties(ta1: int, clock: int, rates: list[int], max_rate: int) -> None:
    atr = parse_atr(atr_with_ta1(ta1))
    fi_di, rate = choose_fi_di(atr, clock_khz=clock, data_rates=rates, max_data_rate=max_rate)
    fi, di = FI_TABLE[fi_di >> 4], DI_TABLE[fi_di & 0x0F]
    assert rate == baud_rate(fi, di, clock)
    assert rate >= baud_rate(372, 1, clock)  # never slower than the default
    if fi_di != 0x11:
        assert fi_di >> 4 == ta1 >> 4  # same Fi as the card
        assert di <= DI_TABLE[ta1 & 0x0F]
        if rates:
            assert any(abs(rate - r) <= 2 for r in rates)
        elif max_rate:
            assert rate <= max_rate


# --- PPS ----------------------------------------------------------------------------


def test_build_pps_request() -> None:
    assert build_pps_request(1, 0x96) == h("FF 11 96 78")
    assert build_pps_request(0, 0x18) == h("FF 10 18 F7")
    assert build_pps_request(1, None) == h("FF 01 FE")
    assert build_pps_request(0, None) == h("FF 00 FF")
    for bad in ((15, None), (-1, None), (1, 256)):
        with pytest.raises(UsageError):
            build_pps_request(*bad)


def test_pps_echo_accepted() -> None:
    req = build_pps_request(1, 0x96)
    assert check_pps_response(req, req) == 0x96


def test_pps_card_keeps_default() -> None:
    req = build_pps_request(1, 0x96)
    assert check_pps_response(req, h("FF 01 FE")) is None


def pck(text: str) -> str:
    """Append the right PCK to a PPS body."""
    body = h(text)
    return (body + bytes([reduce(xor, body, 0)])).hex(" ")


@pytest.mark.parametrize(
    ("response", "match"),
    [
        ("FF 11 96", "announces"),  # PCK missing
        ("FF 11", "too short"),
        (pck("FE 11 96"), "PPSS"),
        (pck("FF 10 96"), "T=0"),  # other protocol
        (pck("FF 11 95"), "PPS1=0x95"),  # different Fi/Di
        ("FF 11 96 00", "PCK"),
        (pck("FF 31 96 00"), "PPS2"),  # PPS2 not requested
        (pck("FF 91 96"), "reserved"),
        ("FF 11 96 78 00", "announces"),
    ],
)
def test_pps_refused(response: str, match: str) -> None:
    req = build_pps_request(1, 0x96)
    with pytest.raises(PPSError, match=match):
        check_pps_response(req, h(response))


def test_pps_with_pps2_echoed() -> None:
    req = h(pck("FF 31 13 05"))
    assert check_pps_response(req, req) == 0x13
    assert check_pps_response(req, h(pck("FF 21 05"))) is None


def test_pps_bad_request_is_usage_error() -> None:
    with pytest.raises(UsageError):
        check_pps_response(h("FF 11 96"), h("FF 11 96 78"))


@given(st.binary(max_size=8))
def test_pps_fuzz(response: bytes) -> None:
    req = build_pps_request(1, 0x13)
    try:
        result = check_pps_response(req, response)
    except PPSError:
        return
    assert result in (None, 0x13)


# --- SetParameters structures --------------------------------------------------------


def test_t0_parameters_bytes() -> None:
    p = T0Parameters(0x96, 0x02, 0x00, 0x0A, 0x03)
    assert p.to_bytes() == h("96 02 00 0A 03")
    assert T0Parameters.from_bytes(p.to_bytes()) == p
    with pytest.raises(ProtocolError):
        T0Parameters.from_bytes(h("96 02 00 0A"))
    with pytest.raises(UsageError):
        T0Parameters(bmFindexDindex=256)


def test_t1_parameters_bytes() -> None:
    p = T1Parameters(0x18, 0x11, 0xFF, 0x75, 0x00, 0xFE, 0x00)
    assert p.to_bytes() == h("18 11 FF 75 00 FE 00")
    assert T1Parameters.from_bytes(p.to_bytes()) == p
    with pytest.raises(ProtocolError):
        T1Parameters.from_bytes(h("18 11 FF 75 00 FE 00 00"))


@given(st.binary(min_size=7, max_size=7))
def test_t1_parameters_roundtrip(data: bytes) -> None:
    assert T1Parameters.from_bytes(data).to_bytes() == data


def test_parameters_from_atr_t1() -> None:
    atr = parse_atr(h("3B DA 18 FF 81 B1 FE 75 1F 03 00 31 C5 73 C0 01 40 00 90 00 0C"))
    p = parameters_from_atr(atr, 1, 0x18)
    assert isinstance(p, T1Parameters)
    assert p.to_bytes() == h("18 10 FF 75 00 FE 00")
    # without PPS the card stays at the default 0x11
    assert parameters_from_atr(atr, 1, None).bmFindexDindex == 0x11


def test_parameters_from_atr_t1_crc_inverse() -> None:
    atr = parse_atr(with_tck("3F 80 81 F1 80 45 01 1F C3"))  # CRC, inverse, T=15 TA C3
    p = parameters_from_atr(atr, 1, None)
    assert isinstance(p, T1Parameters)
    assert p.bmTCCKST1 == 0x13
    assert p.bIFSC == 0x80 and p.bmWaitingIntegersT1 == 0x45 and p.bClockStop == 3


def test_parameters_from_atr_t0() -> None:
    atr = parse_atr(h("3F 65 25 08 22 04 68 90 00"))
    p = parameters_from_atr(atr, 0, None)
    assert isinstance(p, T0Parameters)
    assert p.to_bytes() == h("11 02 08 0A 00")
    belgian = parse_atr(h("3B 98 13 40 0A A5 03 01 01 01 AD 13 11"))
    assert parameters_from_atr(belgian, 0, 0x13).to_bytes() == h("13 00 00 0A 00")
    with pytest.raises(UsageError):
        parameters_from_atr(atr, 2, None)


def test_effective_fi_di_specific_mode() -> None:
    explicit = parse_atr(with_tck("3B 90 96 91 81 31 FE 55"))  # TA2 bit 5 clear
    assert effective_fi_di(explicit, None) == 0x96
    implicit = parse_atr(with_tck("3B 90 96 11 11"))
    assert effective_fi_di(implicit, None) == 0x11
    assert effective_fi_di(implicit, 0x13) == 0x13


# --- waiting times ------------------------------------------------------------------


def test_etu() -> None:
    assert etu_seconds(0x11, 4000) == pytest.approx(372 / 4_000_000)
    with pytest.raises(UsageError):
        etu_seconds(0x70, 4000)


def test_wwt() -> None:
    atr = parse_atr(h("3B 80 40 FF"))  # WI 255
    # 960 * 255 * 372 / 4 MHz = 22.766 s
    assert t0_wwt_seconds(atr, 4000, 0x11) == pytest.approx(960 * 255 * 372 / 4e6)
    # default WI 10 at Fi 372: 0.89 s, raised to the 1 s floor
    assert t0_wwt_seconds(parse_atr(h("3B 00")), 4000) == 1.0
    assert t0_wwt_seconds(parse_atr(h("3B 00")), 4000, floor=0) == pytest.approx(0.8928)


def test_bwt_cwt() -> None:
    atr = parse_atr(h("3B DA 18 FF 81 B1 FE 75 1F 03 00 31 C5 73 C0 01 40 00 90 00 0C"))
    etu = 372 / 12 / 4e6
    # BWI 7: 11 etu + 128 * 960 * 372 / f
    assert t1_bwt_seconds(atr, 4000, 0x18) == pytest.approx(11 * etu + 128 * 960 * 372 / 4e6)
    default = parse_atr(with_tck("3B 80 01"))  # BWI 4: 16 * 960 * 372 / f = 1.43 s
    assert t1_bwt_seconds(default, 4000) == pytest.approx(11 * 372 / 4e6 + 16 * 960 * 372 / 4e6)
    assert t1_bwt_seconds(parse_atr(with_tck("3B 80 81 21 15")), 4000) == 1.0  # BWI 1: 0.18 s
    # CWI 5: (11 + 32) etu, tiny: the floor applies
    assert t1_cwt_seconds(atr, 4000, 0x18) == 0.01
    assert t1_cwt_seconds(atr, 4000, 0x18, floor=0) == pytest.approx(43 * etu)
