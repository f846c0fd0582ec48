"""ccid.sw: status word meanings, the opt-in check, and the hex helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ccid
from ccid import errors, sw


def test_describe_accepts_int_bytes_and_responses() -> None:
    assert sw.describe(0x9000) == "success"
    assert sw.describe(b"\x6a\x82") == "file or application not found"
    assert sw.describe(bytes.fromhex("01026A82")) == "file or application not found"
    assert sw.describe((0x69, 0x82)) == "security status not satisfied"
    assert sw.describe(0x63C2) == "verification failed, 2 tries left"
    assert sw.describe(0x6110) == "success, 16 more byte(s) available (GET RESPONSE)"
    assert sw.describe(0x6C08) == "wrong Le: the exact length is 8"
    assert sw.describe(0x6A99) == "wrong parameters P1-P2"  # the class's meaning
    assert sw.describe(0x1234) == "unknown status"


@given(st.integers(0, 0xFFFF))
def test_every_status_word_has_a_text(word: int) -> None:
    text = sw.describe(word)
    assert text and text == sw.describe(word.to_bytes(2, "big"))


@pytest.mark.parametrize("bad", [-1, 0x10000, True, "9000", b"\x90", [], 1.5, None])
def test_describe_refuses_what_is_no_status_word(bad: object) -> None:
    with pytest.raises(errors.UsageError):
        sw.describe(bad)  # type: ignore[arg-type]


def test_check_returns_data_or_raises_a_card_error_with_sw() -> None:
    assert sw.check(bytes.fromhex("01029000")) == b"\x01\x02"
    assert sw.check(bytes.fromhex("6110")) == b""
    with pytest.raises(errors.StatusWordError) as info:
        sw.check(bytes.fromhex("AABB6982"))
    exc = info.value
    assert isinstance(exc, errors.CardError) and isinstance(exc, errors.CCIDError)
    assert (exc.sw1, exc.sw2, exc.sw, exc.data) == (0x69, 0x82, 0x6982, b"\xaa\xbb")
    assert "69 82" in str(exc) and "security status not satisfied" in str(exc)
    with pytest.raises(errors.UsageError):
        sw.check(b"\x90")
    assert errors.StatusWordError in (getattr(errors, n) for n in errors.__all__)


def test_check_on_a_card_through_the_virtual_reader() -> None:
    from ccid.testing import presets

    with ccid.open_reader(backend=presets.preset("gemalto-pc-twin")) as reader, \
            reader.connect() as card:
        assert len(sw.check(card.transmit(bytes.fromhex("0084000008")))) == 8
        with pytest.raises(errors.StatusWordError) as info:
            sw.check(card.transmit(bytes.fromhex("00A4040005F000000000")))
        assert info.value.sw1 == 0x6A


@pytest.mark.parametrize("text", ["3B 65 00", "3b6500", "3B:65:00", "3B,65,00", "0x3B 0x65 0x00",
                                  "3B 65\n00", " 3b  65 00 ", "0x3B,0x65,0x0"])
def test_from_hex_accepts_the_usual_spellings(text: str) -> None:
    assert sw.from_hex(text) == b"\x3b\x65\x00"


@pytest.mark.parametrize("text", ["3B 6", "zz", "3B-65", "0x", "0xGG"])
def test_from_hex_refuses_with_usage_error(text: str) -> None:
    with pytest.raises(errors.UsageError):
        sw.from_hex(text)


def test_from_hex_refuses_non_str() -> None:
    with pytest.raises(errors.UsageError):
        sw.from_hex(b"3B")  # type: ignore[arg-type]


@given(st.binary(max_size=64))
def test_hex_round_trip(data: bytes) -> None:
    assert sw.to_hex(data) == data.hex(" ").upper()
    assert sw.from_hex(sw.to_hex(data)) == data
    assert sw.from_hex(sw.to_hex(data, sep="")) == data
    assert sw.from_hex(sw.to_hex(list(data), sep=", ")) == data


def test_to_hex_refuses_str_and_bad_values() -> None:
    for bad in ("3B", [256], None):
        with pytest.raises(errors.UsageError):
            sw.to_hex(bad)  # type: ignore[arg-type]


def test_reachable_from_the_package() -> None:
    assert ccid.sw.describe(0x9000) == "success"
    assert "sw" in dir(ccid)
