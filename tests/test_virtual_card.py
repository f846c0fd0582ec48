"""The virtual smart card: ATR builder, PPS, T=0 and T=1 at TPDU level, applications, faults.

Blocks and TPDUs are plain bytes built here (T=1 blocks through ccid.framing.build_t1_block), so
every expectation follows from ISO/IEC 7816-3/-4, not from the card's own code.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccid.constants import Voltage
from ccid.errors import UsageError
from ccid.framing import T1BlockError, T1Status, build_t1_block, check_t1_block
from ccid.testing.apps import (
    APDU,
    DF,
    EF,
    PIN,
    APDUError,
    Application,
    CardOS,
    Echo,
    FileSystem,
    TestApplet,
    parse_apdu,
)
from ccid.testing.atrbuild import (
    ATR_INVERSE_T0,
    ATR_JAVACARD_T1,
    ATR_OPENPGP,
    ATR_SIM_T0,
    ATR_T0_T1,
    atr_fields,
    build_atr,
    inverse_line_bytes,
)
from ccid.testing.card import VirtualCard

HAVE_HOST_ATR = importlib.util.find_spec("ccid.protocol.atr") is not None


def cap(n: int) -> settings:
    """At most ``n`` examples (state-machine fuzzing: each example is a whole sequence)."""
    return settings(max_examples=min(n, settings().max_examples))


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def sw(resp: bytes) -> int:
    return int.from_bytes(resp[-2:], "big")


# --- ATR ---------------------------------------------------------------------------------

HAND_MADE_ATRS = [
    # (arguments, expected bytes worked out by hand from ISO/IEC 7816-3 clause 8)
    ({}, "3B 00"),  # T=0 alone is implicit: no TD1, no TCK
    ({"historical": b"\x01\x02"}, "3B 02 01 02"),
    ({"protocols": (1,)}, "3B 80 01 81"),  # TD1 names T=1; TCK = 80 ^ 01
    ({"protocols": (0, 1)}, "3B 80 80 01 01"),
    ({"protocols": (1, 0), "ifsc": 100}, "3B 80 81 91 64 00 F4"),
    ({"protocols": (0,), "tc1": 0x02, "tc2": 0x0A}, "3B C0 02 40 0A"),  # T=0 only: no TCK
    ({"protocols": (1,), "crc": True}, "3B 80 81 41 01 41"),
    ({"protocols": (1,), "specific": 1, "specific_changeable": False}, "3B 80 11 81 10"),
    ({"ta1": 0x96}, "3B 10 96"),
    ({"inverse": True, "tb1": 0x00}, "3F 20 00"),
]


@pytest.mark.parametrize(("kwargs", "expected"), HAND_MADE_ATRS)
def test_build_atr_hand_made(kwargs: dict[str, object], expected: str) -> None:
    assert build_atr(**kwargs) == h(expected)  # type: ignore[arg-type]


def test_openpgp_layout_matches_a_real_card() -> None:
    # The ATR an OpenPGP card v2.0 sends (public fact), rebuilt from its parameters.
    assert h("3B DA 18 FF 81 B1 FE 75 1F 03 00 31 C5 73 C0 01 40 00 90 00 0C") == ATR_OPENPGP


def _walk(atr: bytes) -> tuple[list[int], dict[tuple[str, int], int], bytes, bool]:
    """Test-side ISO walk: announced T's, interface bytes by (kind, level), historical, TCK."""
    pos, y, level = 2, atr[1] >> 4, 1
    announced: list[int] = []
    iface: dict[tuple[str, int], int] = {}
    while True:
        for bit, kind in ((1, "A"), (2, "B"), (4, "C")):
            if y & bit:
                iface[(kind, level)] = atr[pos]
                pos += 1
        if not y & 8:
            break
        announced.append(atr[pos] & 0x0F)
        y = atr[pos] >> 4
        pos += 1
        level += 1
    hist = atr[pos : pos + (atr[1] & 0x0F)]
    pos += atr[1] & 0x0F
    has_tck = pos == len(atr) - 1
    assert pos + has_tck == len(atr)
    return announced, iface, hist, has_tck


atr_args = st.fixed_dictionaries(
    {
        "protocols": st.sampled_from([(0,), (1,), (0, 1), (1, 0)]),
        "inverse": st.booleans(),
        "ta1": st.none() | st.integers(0, 255),
        "tb1": st.none() | st.integers(0, 255),
        "tc1": st.none() | st.integers(0, 255),
        "tc2": st.none() | st.integers(1, 255),
        "historical": st.binary(max_size=15),
    },
    optional={
        "t1": st.tuples(st.integers(1, 254), st.integers(0, 15), st.integers(0, 15),
                        st.booleans()),
        "specific": st.integers(0, 1),
        "classes": st.integers(1, 7),
    },
)


@cap(600)
@given(atr_args)
def test_build_atr_follows_iso_rules(args: dict[str, object]) -> None:
    kwargs = dict(args)
    t1 = kwargs.pop("t1", None)
    protocols = kwargs["protocols"]
    assert isinstance(protocols, tuple)
    if t1 is not None and 1 in protocols:
        assert isinstance(t1, tuple)
        kwargs.update(ifsc=t1[0], bwi=t1[1], cwi=t1[2], crc=t1[3])
    try:
        atr = build_atr(**kwargs)  # type: ignore[arg-type]
    except UsageError:
        # only the 33-byte limit may refuse these arguments
        return
    assert len(atr) <= 33
    assert atr[0] == (0x3F if kwargs["inverse"] else 0x3B)
    announced, iface, hist, has_tck = _walk(atr)
    assert hist == kwargs["historical"]
    assert has_tck == any(t != 0 for t in announced)  # TCK present iff a T other than 0
    if has_tck:
        check = 0
        for b in atr[1:]:
            check ^= b
        assert check == 0
    assert tuple(dict.fromkeys(t for t in announced if t != 15)) in (protocols, ())
    if protocols[0] != 0:
        assert announced[0] == protocols[0]  # TD1 names the first offered protocol
    for name, key in (("ta1", ("A", 1)), ("tb1", ("B", 1)), ("tc1", ("C", 1)),
                      ("tc2", ("C", 2))):
        assert iface.get(key) == kwargs[name]
    if "specific" in kwargs:
        assert iface[("A", 2)] & 0x0F == kwargs["specific"]
    if t1 is not None and 1 in protocols:
        level = announced.index(1) + 2
        # the T=1 group follows a TD naming T=1 and sits at level >= 3
        while level < 3 or announced[level - 2] != 1:
            level += 1
        assert isinstance(t1, tuple)
        assert iface[("A", level)] == t1[0]
        assert iface[("B", level)] == (t1[1] << 4) | t1[2]
        assert iface[("C", level)] == int(t1[3])
    fields = atr_fields(atr)
    assert fields.problems == ()
    assert fields.protocols == protocols
    if HAVE_HOST_ATR:
        from ccid.protocol.atr import parse_atr

        parsed = parse_atr(atr)
        assert parsed.protocols == protocols
        assert parsed.tck_ok
        assert parsed.ifsc == fields.ifsc
        assert parsed.edc == ("crc" if fields.crc else "lrc")
        assert (parsed.bwi, parsed.cwi) == (fields.bwi, fields.cwi)


@pytest.mark.parametrize(
    ("atr", "protocols", "ifsc", "crc"),
    [
        (ATR_JAVACARD_T1, (1,), 254, False),
        (ATR_SIM_T0, (0,), 32, False),
        (ATR_INVERSE_T0, (0,), 32, False),
        (ATR_T0_T1, (0, 1), 254, True),
        (ATR_OPENPGP, (1,), 254, False),
    ],
)
def test_named_atrs(atr: bytes, protocols: tuple[int, ...], ifsc: int, crc: bool) -> None:
    f = atr_fields(atr)
    assert (f.problems, f.protocols, f.ifsc, f.crc) == ((), protocols, ifsc, crc)
    if HAVE_HOST_ATR:
        from ccid.protocol.atr import parse_atr

        assert parse_atr(atr).protocols == protocols
    assert (atr[0] == 0x3F) == (atr is ATR_INVERSE_T0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"protocols": ()},
        {"protocols": (15,)},
        {"historical": bytes(16)},
        {"ta1": 256},
        {"protocols": (0,), "ifsc": 32},  # T=1 parameters without T=1
        {"protocols": (1,), "ifsc": 255},
        {"protocols": (1,), "bwi": 16},
        {"clock_stop": 4},
        {"protocols": tuple(range(15)), "ta1": 1, "historical": bytes(15)},  # 35 bytes
    ],
)
def test_build_atr_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        build_atr(**kwargs)  # type: ignore[arg-type]


@given(st.binary(max_size=40))
def test_atr_fields_never_raises(raw: bytes) -> None:
    fields = atr_fields(raw)
    assert fields.protocols
    assert 1 <= fields.ifsc <= 254


def test_atr_fields_reports_problems() -> None:
    good = build_atr((1,))
    assert "TCK wrong" in atr_fields(good[:-1] + bytes((good[-1] ^ 1,))).problems
    assert "TCK missing" in atr_fields(good[:-1]).problems
    assert "extra bytes after the ATR" in atr_fields(good + b"\x00").problems


def test_inverse_line_bytes() -> None:
    # TS of the inverse convention is 3F logically and 03 on the line (ISO/IEC 7816-3 8.1).
    assert inverse_line_bytes(b"\x3f") == b"\x03"
    assert inverse_line_bytes(inverse_line_bytes(ATR_INVERSE_T0)) == ATR_INVERSE_T0


# --- power, PPS ----------------------------------------------------------------------------


def test_power_on_cold_and_warm_atr() -> None:
    warm = build_atr((1,), ifsc=32)
    card = VirtualCard(ATR_T0_T1, warm_atr=warm)
    assert card.power_on(cold=False) == ATR_T0_T1  # warm reset of an unpowered card is cold
    assert card.power_on(cold=False) == warm
    assert card.atr == warm
    assert card.t1.ifsc == 32 and not card.t1.crc  # the warm ATR's T=1 parameters apply
    assert card.power_on() == ATR_T0_T1
    assert card.t1.crc


def test_defaults() -> None:
    card = VirtualCard()
    atr = card.power_on()
    assert atr is not None
    assert card.protocols == (0, 1) and card.protocol == 0
    assert card.fi_di == 0x11 and card.delay == 0.0
    assert card.voltages == Voltage.V5_0 | Voltage.V3_0 | Voltage.V1_8
    if HAVE_HOST_ATR:
        from ccid.protocol.atr import parse_atr

        assert parse_atr(atr).ifsc == 254


def test_mute_unpowered_and_voltage() -> None:
    card = VirtualCard(ATR_SIM_T0)
    assert card.voltages == Voltage.V5_0 | Voltage.V3_0  # from the T=15 class indicator
    assert card.t0_command(h("00 20 00 80 00")) == b""  # not powered
    assert card.process_apdu(h("80 10 00 00 01 AA")) == b""
    assert card.power_on(voltage=Voltage.V1_8) is None
    assert card.power_on(voltage=Voltage.V3_0) == ATR_SIM_T0
    assert card.t1_block(build_t1_block(0, 0, b"", False)) is None  # T=1 not offered
    card.faults.mute()
    assert card.power_on() is None
    assert card.t0_command(h("00 20 00 80 00")) == b""
    card.faults.mute(False)
    assert card.power_on() == ATR_SIM_T0
    card.power_off()
    assert card.t0_command(h("00 20 00 80 00")) == b""


def pps(*body: int) -> bytes:
    check = 0
    for b in body:
        check ^= b
    return bytes((*body, check))


def test_pps_accept_refuse_and_errors() -> None:
    card = VirtualCard(ATR_T0_T1)  # TA1 96: Fi 512, Di 32
    card.power_on()
    assert card.supports_pps(pps(0xFF, 0x11, 0x96)) == pps(0xFF, 0x11, 0x96)
    assert card.protocol == 1 and card.current_fi_di == 0x96
    assert card.supports_pps(pps(0xFF, 0x11, 0x96)) is None  # only right after the ATR
    card.power_on()
    assert card.protocol == 0 and card.current_fi_di == 0x11
    # Di 64 is more than the card's 32: PPS1 left out, default speed
    assert card.supports_pps(pps(0xFF, 0x10, 0x97)) == pps(0xFF, 0x00)
    card.power_on()
    assert card.supports_pps(pps(0xFF, 0x70, 0x94, 0x01, 0x02)) == pps(0xFF, 0x10, 0x94)
    for bad in (h("FF 10 96 00"), pps(0xFF, 0x12, 0x11), pps(0xFE, 0x10, 0x11), h("FF 10"),
                pps(0xFF, 0x10)):
        card.power_on()
        assert card.supports_pps(bad) is None
    card.power_on()
    card.t0_command(h("00 20 00 80 00"))
    assert card.supports_pps(pps(0xFF, 0x10, 0x11)) is None  # an exchange came first


def test_specific_mode_refuses_pps() -> None:
    atr = build_atr((1,), ta1=0x13, specific=1, ifsc=64)
    card = VirtualCard(atr)
    card.power_on()
    assert card.specific_mode and card.protocol == 1 and card.current_fi_di == 0x13
    assert card.supports_pps(pps(0xFF, 0x11, 0x13)) is None


def test_strict_protocol() -> None:
    card = VirtualCard(strict_protocol=True)
    card.power_on()
    assert card.supports_pps(pps(0xFF, 0x01)) == pps(0xFF, 0x01)
    assert card.t0_command(h("00 20 00 80 00")) == b""
    assert card.t1_block(build_t1_block(0, 0, h("00 20 00 80"), False)) is not None


# --- applications --------------------------------------------------------------------------

APDU_CASES = [
    ("00 A4 00 00", APDU(0, 0xA4, 0, 0)),
    ("00 B0 00 00 00", APDU(0, 0xB0, 0, 0, ne=256)),
    ("00 B0 00 00 10", APDU(0, 0xB0, 0, 0, ne=16)),
    ("00 D6 00 00 02 AA BB", APDU(0, 0xD6, 0, 0, h("AA BB"))),
    ("80 10 00 00 02 AA BB 00", APDU(0x80, 0x10, 0, 0, h("AA BB"), ne=256)),
    ("00 B0 00 00 00 00 00", APDU(0, 0xB0, 0, 0, ne=65536, extended=True)),
    ("00 B0 00 00 00 01 00", APDU(0, 0xB0, 0, 0, ne=256, extended=True)),
    ("80 10 00 00 00 00 02 AA BB", APDU(0x80, 0x10, 0, 0, h("AA BB"), extended=True)),
    ("80 10 00 00 00 00 01 AA FF FF", APDU(0x80, 0x10, 0, 0, h("AA"), ne=65535, extended=True)),
]


@pytest.mark.parametrize(("raw", "expected"), APDU_CASES)
def test_parse_apdu(raw: str, expected: APDU) -> None:
    assert parse_apdu(h(raw)) == expected
    assert expected.to_bytes() == h(raw)


@pytest.mark.parametrize("raw", ["", "00 A4 00", "00 D6 00 00 02 AA", "00 D6 00 00 02 AA BB CC DD",
                                 "00 B0 00 00 00 00", "80 10 00 00 00 00 00 AA",
                                 "80 10 00 00 00 00 02 AA"])
def test_parse_apdu_rejects(raw: str) -> None:
    with pytest.raises(APDUError) as err:
        parse_apdu(h(raw))
    assert err.value.sw == 0x6700


@cap(1000)
@given(st.builds(APDU, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                 st.integers(0, 255), st.binary(max_size=300),
                 st.none() | st.integers(1, 65536), st.booleans()))
def test_apdu_round_trip(cmd: APDU) -> None:
    parsed = parse_apdu(cmd.to_bytes())
    assert (parsed.cla, parsed.ins, parsed.p1, parsed.p2, parsed.data) == (
        cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data)
    assert parsed.ne == cmd.ne


@pytest.fixture
def card() -> VirtualCard:
    c = VirtualCard(seed=1)
    assert c.power_on() is not None
    return c


def test_verify_retry_counter(card: VirtualCard) -> None:
    assert card.process_apdu(h("00 20 00 80")) == h("63 C3")  # status: 3 tries
    assert card.process_apdu(h("00 20 00 80 04 30 30 30 30")) == h("63 C2")
    assert card.process_apdu(h("00 20 00 80 04 30 30 30 31")) == h("63 C1")
    assert card.process_apdu(h("00 20 00 80 04 31 32 33 34")) == h("90 00")  # resets counter
    assert card.process_apdu(h("00 20 00 80")) == h("90 00")
    for expected in ("63 C2", "63 C1", "69 83"):
        assert card.process_apdu(h("00 20 00 80 02 00 00")) == h(expected)
    assert card.process_apdu(h("00 20 00 80 04 31 32 33 34")) == h("69 83")  # blocked
    card.power_on()
    assert card.process_apdu(h("00 20 00 80 04 31 32 33 34")) == h("69 83")  # still blocked
    assert card.process_apdu(h("00 20 00 81 04 31 32 33 34")) == h("6A 88")


def test_pin_protected_file_and_reset(card: VirtualCard) -> None:
    assert card.process_apdu(h("00 A4 00 0C 02 00 02")) == h("90 00")
    assert card.process_apdu(h("00 B0 00 00 06")) == h("69 82")
    assert card.process_apdu(h("00 20 00 80 04 31 32 33 34")) == h("90 00")
    assert card.process_apdu(h("00 B0 00 00 06")) == b"secret" + h("90 00")
    card.power_on(cold=False)  # the security status does not survive a reset
    card.process_apdu(h("00 A4 00 0C 02 00 02"))
    assert card.process_apdu(h("00 B0 00 00 06")) == h("69 82")


def test_select_read_update(card: VirtualCard) -> None:
    fcp = card.process_apdu(h("00 A4 00 00 02 00 01 00"))
    assert sw(fcp) == 0x9000 and h("83 02 00 01") in fcp and h("80 02 01 00") in fcp
    assert card.process_apdu(h("00 B0 00 10 04")) == h("10 11 12 13 90 00")
    assert card.process_apdu(h("00 D6 00 10 02 AA BB")) == h("90 00")
    assert card.process_apdu(h("00 B0 00 0F 04")) == h("0F AA BB 12 90 00")
    assert card.process_apdu(h("00 B0 00 FE 04")) == h("FE FF 62 82")  # end of file first
    assert card.process_apdu(h("00 B0 01 01 01")) == h("6B 00")
    assert card.process_apdu(h("00 D6 00 FF 02 01 02")) == h("6A 84")
    assert card.process_apdu(h("00 A4 00 0C 02 12 34")) == h("6A 82")
    # by DF name, then an EF under it by P1=02, then by short EF id
    name = card.process_apdu(h("00 A4 04 00 05 F0 63 63 69 64 00"))
    assert sw(name) == 0x9000 and h("84 07 F0 63 63 69 64 00 01") in name
    assert card.process_apdu(h("00 A4 02 0C 02 50 01")) == h("90 00")
    assert card.process_apdu(h("00 B0 00 01 02")) == h("07 0E 90 00")
    assert card.process_apdu(h("00 B0 81 02 01")) == h("0E 90 00")  # SFI 1, offset 2
    assert card.process_apdu(h("00 A4 02 0C 02 3F 00")) == h("6A 82")  # P1=02 is EF only
    assert card.process_apdu(h("00 A4 00 0C")) == h("90 00")  # back to the MF
    assert card.process_apdu(h("00 B0 00 00 01")) == h("69 86")  # no current EF
    assert card.process_apdu(h("00 A4 04 0C 03 A0 A0 A0")) == h("6A 82")


def test_get_challenge(card: VirtualCard) -> None:
    a = card.process_apdu(h("00 84 00 00 08"))
    b = card.process_apdu(h("00 84 00 00 08"))
    assert len(a) == len(b) == 10 and sw(a) == sw(b) == 0x9000 and a != b
    assert card.process_apdu(h("00 84 00 01 08")) == h("6A 86")
    assert card.process_apdu(h("00 84 00 00")) == h("67 00")


def test_applet_deselected_by_reset(card: VirtualCard) -> None:
    """The El Capitan report: after another process reset the card, 80 34 gets 69 85."""
    command = h("80 34 00 0E 0E")
    assert card.process_apdu(command) == h("69 85")
    assert card.process_apdu(h("00 A4 04 00 06 A0 00 00 00 18 FF")) == h("90 00")
    assert card.process_apdu(command) == bytes(range(14)) + h("90 00")
    assert card.process_apdu(h("80 10 00 00 01 55")) == h("55 90 00")  # echo still there
    card.power_on(cold=False)
    assert card.process_apdu(command) == h("69 85")
    card.process_apdu(h("00 A4 04 00 06 A0 00 00 00 18 FF"))
    card.power_on(cold=True)
    assert card.process_apdu(command) == h("69 85")


def test_card_os_routing() -> None:
    os_ = CardOS([FileSystem(), Echo(), TestApplet()], unselected_sw=0x6D00)
    assert os_.process(h("80 34 00 0E 0E")) == h("6D 00")
    assert os_.process(h("00 FF 00 00")) == h("6D 00")
    assert os_.process(h("A0 FF 00 00")) == h("6D 00")
    assert os_.process(h("00 A4 04 00 06 A0 00 00 00 18 FF")) == h("90 00")
    assert os_.process(h("00 B0 00 00 01")) == h("69 86")  # file system reachable through
    assert os_.process(h("00 A4")) == h("67 00")


def test_echo_extended_65535(card: VirtualCard) -> None:
    data = os.urandom(65535)
    apdu = h("80 10 00 00 00 FF FF") + data + h("00 00")
    assert card.process_apdu(apdu) == data + h("90 00")
    apdu = h("80 12 00 00 00 FF FF")
    resp = card.process_apdu(apdu)
    assert len(resp) == 65537 and resp[:4] == h("00 01 02 03") and resp[256] == 0
    assert card.process_apdu(h("80 10 00 00 04 01 02 03 04 02")) == h("01 02 90 00")


def test_callable_and_broken_apps() -> None:
    card = VirtualCard(app=lambda apdu: apdu[::-1] + b"\x90\x00")
    card.power_on()
    assert card.process_apdu(h("01 02 03 04")) == h("04 03 02 01 90 00")

    def boom(apdu: bytes) -> bytes:
        raise RuntimeError("bug in the application")

    card = VirtualCard(app=boom)
    card.power_on()
    assert card.process_apdu(h("00 00 00 00")) == h("6F 00")
    card = VirtualCard(app=lambda apdu: b"\x90")
    card.power_on()
    assert card.process_apdu(h("00 00 00 00")) == h("6F 00")


def test_custom_file_tree() -> None:
    fs = FileSystem(DF(0x3F00, [EF(0x1234, bytearray(b"hello"))]), pins={1: PIN(b"0", 1)})
    assert fs.process(h("00 A4 00 0C 02 12 34")) == h("90 00")
    assert fs.process(h("00 B0 00 00 05")) == b"hello" + h("90 00")
    assert fs.process(h("00 20 00 01 01 31")) == h("69 83")
    assert isinstance(fs, Application)


# --- T=0 -----------------------------------------------------------------------------------


def test_t0_case1_case3(card: VirtualCard) -> None:
    assert card.t0_command(h("00 20 00 80 00")) == h("63 C3")  # no data: only SW
    assert card.t0_command(h("00 A4 00 0C 02 00 01")) == h("90 00")
    assert card.t0_command(h("00 D6 00 00 02 AA BB")) == h("90 00")
    assert card.t0_command(h("00 B0 00 00 03")) == h("AA BB 02 90 00")


def test_t0_case2_wrong_le(card: VirtualCard) -> None:
    card.t0_command(h("00 A4 04 00 06 A0 00 00 00 18 FF"))
    assert card.t0_command(h("80 34 00 0E 00")) == h("6C 0E")  # 256 asked, 14 there
    assert card.t0_command(h("80 34 00 0E 0E")) == bytes(range(14)) + h("90 00")
    card.t0_wrong_le = False
    assert card.t0_command(h("80 34 00 0E 00")) == h("67 00")


def test_t0_case4_get_response(card: VirtualCard) -> None:
    assert card.t0_command(h("80 10 00 00 04 01 02 03 04")) == h("61 04")
    assert card.t0_command(h("00 C0 00 00 08")) == h("6C 04")  # asked too much: retry
    assert card.t0_command(h("00 C0 00 00 04")) == h("01 02 03 04 90 00")
    assert card.t0_command(h("00 C0 00 00 04")) == h("6D 00")  # nothing pending any more
    data = bytes(range(200))
    assert card.t0_command(h("80 10 00 00 C8") + data) == h("61 C8")
    assert card.t0_command(h("00 C0 00 00 64")) == data[:100] + h("61 64")
    assert card.t0_command(h("00 C0 00 00 64")) == data[100:] + h("90 00")
    # another command drops what was pending
    assert card.t0_command(h("80 10 00 00 02 AA BB")) == h("61 02")
    assert card.t0_command(h("00 20 00 80 00")) == h("63 C3")
    assert card.t0_command(h("00 C0 00 00 02")) == h("6D 00")
    card.t0_get_response = False
    assert card.t0_command(h("80 10 00 00 02 AA BB")) == h("AA BB 90 00")


def test_t0_long_response_and_always_61() -> None:
    card = VirtualCard(app=lambda apdu: bytes(300) + b"\x90\x00")
    card.power_on()
    assert card.t0_command(h("00 CA 00 00 00")) == bytes(256) + h("61 2C")
    assert card.t0_command(h("00 C0 00 00 2C")) == bytes(44) + h("90 00")
    card = VirtualCard(t0_always_61=True)
    card.power_on()
    card.t0_command(h("00 A4 00 0C 02 00 01"))
    assert card.t0_command(h("00 B0 00 00 02")) == h("61 02")
    assert card.t0_command(h("00 C0 00 00 02")) == h("00 01 90 00")


def test_t0_invalid(card: VirtualCard) -> None:
    assert card.t0_command(h("00 60 00 00 00")) == h("6D 00")  # INS 6x: procedure byte
    assert card.t0_command(h("00 D6 00 00 03 AA BB")) == h("67 00")
    assert card.t0_command(h("00 D6 00")) == b""
    t1_only = VirtualCard(ATR_JAVACARD_T1)
    t1_only.power_on()
    assert t1_only.t0_command(h("00 20 00 80 00")) == b""


# --- T=1 -----------------------------------------------------------------------------------


class Host:
    """Test-side T=1 interface device: blocks built by hand, N(S) tracked here."""

    def __init__(self, card: VirtualCard, crc: bool = False, nad: int = 0) -> None:
        self.card, self.crc, self.nad = card, crc, nad
        self.ns = 0

    def block(self, pcb: int, inf: bytes = b"") -> bytes:
        return build_t1_block(self.nad, pcb, inf, self.crc)

    def send(self, pcb: int, inf: bytes = b"") -> tuple[int, int, bytes]:
        answer = self.card.t1_block(self.block(pcb, inf))
        assert answer is not None
        return check_t1_block(answer, self.crc)

    def i(self, inf: bytes, more: bool = False) -> tuple[int, int, bytes]:
        pcb = (self.ns << 6) | (0x20 if more else 0)
        self.ns ^= 1
        return self.send(pcb, inf)


def t1_card(crc: bool = False, ifsc: int = 254, **kw: object) -> VirtualCard:
    card = VirtualCard(build_atr((1,), ifsc=ifsc, crc=crc), **kw)  # type: ignore[arg-type]
    card.power_on()
    return card


@pytest.mark.parametrize("crc", [False, True])
def test_t1_simple_exchanges(crc: bool) -> None:
    host = Host(t1_card(crc), crc)
    assert host.i(h("80 10 00 00 02 AA BB 00")) == (0, 0x00, h("AA BB 90 00"))
    assert host.i(h("80 10 00 00 01 CC 00")) == (0, 0x40, h("CC 90 00"))
    assert host.i(h("80 10 00 00 01 DD 00")) == (0, 0x00, h("DD 90 00"))


def test_t1_nad_swapped() -> None:
    host = Host(t1_card(), nad=0x12)
    assert host.i(h("80 10 00 00 01 CC 00"))[0] == 0x21


def test_t1_host_chaining_and_ifsc() -> None:
    card = t1_card(ifsc=16)
    host = Host(card)
    apdu = h("80 10 00 00 28") + bytes(range(40)) + h("00")  # 46 bytes: 16 + 16 + 14
    assert host.i(apdu[:16], more=True) == (0, 0x90, b"")  # R(N(R)=1)
    assert host.i(apdu[16:32], more=True) == (0, 0x80, b"")  # R(N(R)=0)
    response = bytes(range(40)) + h("90 00")  # 42 bytes, above IFSD 32: chained back
    assert host.i(apdu[32:]) == (0, 0x20, response[:32])
    assert host.send(0x90) == (0, 0x40, response[32:])
    assert host.send(0x40, bytes(17)) == (0, 0x92, b"")  # INF above IFSC: other error
    assert host.send(0x40, bytes(16)) == (0, 0x00, h("67 00"))


def test_t1_card_chaining_and_ifsd() -> None:
    card = t1_card()
    host = Host(card)
    data = bytes(range(100))
    _, pcb, inf = host.i(h("80 10 00 00 64") + data + h("00"))
    got = inf
    assert pcb == 0x20 and len(inf) == 32  # IFSD starts at 32
    expect_ns = 1
    while pcb & 0x20:
        _, pcb, inf = host.send(0x80 | (expect_ns << 4))  # R(N(R)): next please
        assert (pcb >> 6) & 1 == expect_ns
        expect_ns ^= 1
        got += inf
    assert got == data + h("90 00")
    assert host.send(0xC1, h("FE")) == (0, 0xE1, h("FE"))  # S(IFS request 254)
    _, pcb, inf = host.i(h("80 10 00 00 64") + data + h("00"))
    assert pcb & 0x20 == 0 and inf == data + h("90 00")
    assert host.send(0xC1, h("00"))[1] & 0xEF == 0x82  # IFS 0 is invalid


def test_t1_ifs_request_from_card() -> None:
    card = t1_card(ifsc=32)
    card.faults.t1_request_ifs(64)
    host = Host(card)
    assert host.i(h("80 10 00 00 01 11 00")) == (0, 0xC1, h("40"))  # S(IFS request 64)
    assert host.send(0xE1, h("40")) == (0, 0x00, h("11 90 00"))
    assert card.t1.ifsc == 64
    # 64 bytes now accepted (the 60-byte answer comes chained: IFSD is still 32)
    assert host.i(h("80 10 00 00 3A") + bytes(58) + h("00"))[1] == 0x60


def test_t1_wtx() -> None:
    card = t1_card()
    card.faults.wtx(2, 3)
    host = Host(card)
    assert host.i(h("80 10 00 00 01 11 00")) == (0, 0xC3, h("03"))
    assert host.send(0xE3, h("03")) == (0, 0xC3, h("03"))
    assert host.send(0xE3, h("03")) == (0, 0x00, h("11 90 00"))
    card.faults.wtx(1, 5)
    assert host.i(h("80 10 00 00 01 22 00")) == (0, 0xC3, h("05"))
    assert host.send(0xE3, h("04")) == (0, 0x82, b"")  # wrong multiplier echoed
    assert host.send(0x90) == (0, 0xC3, h("05"))  # R-block: repeat the request
    assert host.send(0xE3, h("05")) == (0, 0x40, h("22 90 00"))
    card.faults.wtx(1, 7)
    assert card.faults.take_wtx() == [7]
    assert host.i(h("80 10 00 00 01 33 00"))[1] == 0x00


def test_t1_edc_errors_from_host() -> None:
    card = t1_card(crc=True)
    host = Host(card, crc=True)
    good = host.block(0x00, h("80 10 00 00 01 11 00"))
    bad = good[:-1] + bytes((good[-1] ^ 0xFF,))
    assert check_t1_block(card.t1_block(bad) or b"", True) == (0, 0x81, b"")  # EDC error
    assert check_t1_block(card.t1_block(good[:-1]) or b"", True) == (0, 0x82, b"")  # length
    assert check_t1_block(card.t1_block(h("00 00 FF 00 00")) or b"", True) == (0, 0x82, b"")
    assert card.t1_block(b"") is None
    # the host repeats its block: accepted as if nothing happened
    assert check_t1_block(card.t1_block(good) or b"", True) == (0, 0x00, h("11 90 00"))


def test_t1_bad_edc_from_card_then_retransmission() -> None:
    card = t1_card()
    host = Host(card)
    card.faults.t1_bad_edc(1)
    answer = card.t1_block(host.block(0x00, h("80 10 00 00 01 11 00")))
    assert answer is not None
    with pytest.raises(T1BlockError) as err:
        check_t1_block(answer, False)
    assert err.value.status == T1Status.EDC
    assert host.send(0x81) == (0, 0x00, h("11 90 00"))  # R(N(R)=0, EDC error): again


def test_t1_lost_blocks() -> None:
    card = t1_card()
    host = Host(card)
    card.faults.t1_lose(1)
    assert card.t1_block(host.block(0x00, h("80 10 00 00 01 11 00"))) is None
    host.ns = 1
    assert host.send(0x80) == (0, 0x00, h("11 90 00"))  # BWT over: R(N(R)=0)
    # lost in the middle of the card's chain
    data = bytes(range(60))
    assert host.i(h("80 10 00 00 3C") + data + h("00")) == (0, 0x60, data[:32])
    card.faults.t1_lose(1)
    assert card.t1_block(host.block(0x80)) is None  # R(0) acks; the next piece is lost
    assert host.send(0x80) == (0, 0x00, data[32:] + h("90 00"))  # asked again


def test_t1_lost_ack_during_host_chain() -> None:
    card = t1_card(ifsc=16)
    host = Host(card)
    apdu = h("80 10 00 00 14") + bytes(range(20)) + h("00")  # 26 bytes: 16 + 10
    card.faults.t1_lose(1)
    assert card.t1_block(host.block(0x20, apdu[:16])) is None
    host.ns = 1
    assert host.send(0x80) == (0, 0x90, b"")  # our R-block was lost: the card repeats it
    assert host.i(apdu[16:]) == (0, 0x00, bytes(range(20)) + h("90 00"))


def test_t1_wrong_sequence_resynch_abort() -> None:
    card = t1_card()
    host = Host(card)
    host.i(h("80 10 00 00 01 11 00"))
    assert host.send(0x00, h("80 10 00 00 01 11 00")) == (0, 0x92, b"")  # N(S) 0 again
    assert host.send(0xC0) == (0, 0xE0, b"")  # RESYNCH
    assert (card.t1.ns, card.t1.nr, card.t1.ifsd) == (0, 0, 32)
    host.ns = 0
    assert host.i(h("80 10 00 00 01 22 00")) == (0, 0x00, h("22 90 00"))
    assert host.i(bytes(10), more=True) == (0, 0x80, b"")
    assert host.send(0xC2) == (0, 0xE2, b"")  # ABORT the chain
    assert host.i(h("80 10 00 00 01 33 00")) == (0, 0x40, h("33 90 00"))
    assert host.send(0xE0) == (0, 0x92, b"")  # a RESYNCH response nobody asked for
    assert host.send(0xC3, h("01")) == (0, 0x92, b"")  # WTX request from the host


def test_t1_r_block_before_anything() -> None:
    host = Host(t1_card())
    assert host.send(0x80) == (0, 0x80, b"")  # nothing sent yet: "I expect N(S) 0"
    assert host.send(0xA0) == (0, 0x82, b"")  # malformed R-block PCB


def test_t1_host_block_lost() -> None:
    card = t1_card()
    host = Host(card)
    assert host.i(h("80 10 00 00 01 11 00")) == (0, 0x00, h("11 90 00"))
    # I(1) never reached the card; after BWT the host sends R(N(R)=1)
    assert host.send(0x90) == (0, 0x90, b"")  # the card expects N(S) 1: not a repeat
    host.ns = 1
    assert host.i(h("80 10 00 00 01 22 00")) == (0, 0x40, h("22 90 00"))


def test_t1_extended_apdu_through_chaining() -> None:
    card = t1_card()
    host = Host(card)
    assert host.send(0xC1, h("FE")) == (0, 0xE1, h("FE"))
    data = os.urandom(1000)
    apdu = h("80 10 00 00 00 03 E8") + data + h("00 00")
    pieces = [apdu[i : i + 254] for i in range(0, len(apdu), 254)]
    for piece in pieces[:-1]:
        assert host.i(piece, more=True)[1] & 0xEF == 0x80
    _, pcb, got = host.i(pieces[-1])
    n = 1
    while pcb & 0x20:
        _, pcb, inf = host.send(0x80 | (n << 4))
        n ^= 1
        got += inf
    assert got == data + h("90 00")


# --- the card never crashes ----------------------------------------------------------------


def _valid_block(crc: bool) -> st.SearchStrategy[bytes]:
    pcbs = st.sampled_from([0x00, 0x20, 0x40, 0x60, 0x80, 0x81, 0x90, 0x92, 0xC0, 0xC1,
                            0xC2, 0xC3, 0xE0, 0xE1, 0xE2, 0xE3]) | st.integers(0, 255)
    apdus = st.sampled_from([h("80 10 00 00 02 AA BB 00"), h("00 20 00 80"), h("FE"), h("03")])
    return st.builds(lambda nad, pcb, inf: build_t1_block(nad, pcb, inf, crc),
                     st.integers(0, 255), pcbs, apdus | st.binary(max_size=40))


@cap(300)
@given(st.booleans(), st.data())
def test_t1_block_never_raises(crc: bool, data: st.DataObject) -> None:
    card = t1_card(crc, ifsc=24)
    if data.draw(st.booleans()):
        card.faults.wtx(data.draw(st.integers(0, 2)), 2)
    if data.draw(st.booleans()):
        card.faults.t1_request_ifs(data.draw(st.integers(1, 254)))
    blocks = data.draw(st.lists(_valid_block(crc) | st.binary(max_size=40), max_size=12))
    for block in blocks:
        answer = card.t1_block(block)
        if answer is not None:
            _, pcb, inf = check_t1_block(answer, crc)
            assert len(inf) <= 254
            assert pcb & 0xC0 != 0xC0 or pcb & 0x1F <= 3  # a defined S-block


@cap(500)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_t0_command_never_raises(tpdus: list[bytes]) -> None:
    card = VirtualCard(seed=0)
    card.power_on()
    for tpdu in tpdus:
        answer = card.t0_command(tpdu)
        assert answer == b"" or len(answer) >= 2


t0_headers = st.builds(lambda ins, p3, data: bytes((0x00, ins, 0, 0, p3)) + data,
                       st.sampled_from([0xA4, 0xB0, 0xC0, 0x20, 0x84, 0xD6, 0x10, 0x12]),
                       st.integers(0, 255), st.binary(max_size=8))


@cap(300)
@given(st.lists(t0_headers, max_size=8))
def test_t0_structured_never_raises(tpdus: list[bytes]) -> None:
    card = VirtualCard(seed=0, t0_always_61=True)
    card.power_on()
    for tpdu in tpdus:
        answer = card.t0_command(tpdu)
        assert len(answer) >= 2


@cap(1000)
@given(st.binary(max_size=600))
def test_process_apdu_never_raises(apdu: bytes) -> None:
    card = VirtualCard(seed=0)
    card.power_on()
    assert len(card.process_apdu(apdu)) >= 2


@cap(500)
@given(st.binary(max_size=12))
def test_pps_never_raises(request: bytes) -> None:
    card = VirtualCard(ATR_T0_T1)
    card.power_on()
    answer = card.supports_pps(request)
    if answer is not None:
        check = 0
        for b in answer:
            check ^= b
        assert answer[0] == 0xFF and check == 0
