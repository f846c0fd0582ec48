"""T=0 APDU cases and the TPDU exchange against a small scripted card."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccid.errors import ProtocolError, UsageError
from ccid.protocol.t0 import ApduCase, T0Error, T0Exchange, classify_apdu, parse_apdu


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- classification -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("apdu", "case"),
    [
        ("00 A4 04 00", ApduCase.CASE_1),
        ("00 B0 00 00 10", ApduCase.CASE_2S),
        ("00 B0 00 00 00", ApduCase.CASE_2S),
        ("00 D6 00 00 02 AA BB", ApduCase.CASE_3S),
        ("00 A4 04 00 02 3F 00 00", ApduCase.CASE_4S),
        ("00 B0 00 00 00 01 00", ApduCase.CASE_2E),
        ("00 D6 00 00 00 00 02 AA BB", ApduCase.CASE_3E),
        ("00 2A 9E 9A 00 00 02 AA BB 00 00", ApduCase.CASE_4E),
    ],
)
def test_classify(apdu: str, case: ApduCase) -> None:
    assert classify_apdu(h(apdu)) is case


def test_parse_apdu_fields() -> None:
    a = parse_apdu(h("00 A4 04 00 02 3F 00 00"))
    assert (a.header, a.data, a.ne) == (h("00 A4 04 00"), h("3F 00"), 256)
    e = parse_apdu(h("00 2A 9E 9A 00 00 02 AA BB 00 00"))
    assert (e.data, e.ne, e.case.extended) == (h("AA BB"), 65536, True)
    assert parse_apdu(h("00 B0 00 00 00 01 00")).ne == 256


@pytest.mark.parametrize(
    ("apdu", "match"),
    [
        ("", "shorter than the 4-byte header"),
        ("00 A4 04", "shorter"),
        ("00 D6 00 00 03 AA BB", "Lc=3"),
        ("00 D6 00 00 01 AA BB CC", "Lc=1"),
        ("00 B0 00 00 00 01", "neither short nor extended"),
        ("00 D6 00 00 00 00 00 AA", "Lc = 0"),
        ("00 D6 00 00 00 00 03 AA BB", "Lc=3"),
    ],
)
def test_classify_malformed(apdu: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        classify_apdu(h(apdu))


@given(st.binary(max_size=300))
def test_classify_fuzz(apdu: bytes) -> None:
    try:
        parsed = parse_apdu(apdu)
    except UsageError:
        return
    assert parsed.header == apdu[:4]
    assert parsed.data in apdu


# --- exchanges against a scripted card -----------------------------------------------


Card = Callable[[bytes], bytes]


def run(exchange: T0Exchange, card: Card) -> tuple[bytes, list[bytes]]:
    sent: list[bytes] = []
    while (tpdu := exchange.next_tpdu()) is not None:
        sent.append(tpdu)
        exchange.receive(card(tpdu))
    return exchange.response, sent


def file_card(content: bytes, *, chunk: int = 256, strict_le: bool = False) -> Card:
    """A card holding ``content``: READ BINARY (B0) answers with it; case 4 commands
    (INS A4 with data) answer 61xx and hand the content out in GET RESPONSE pieces."""
    state = {"pending": b""}

    def card(tpdu: bytes) -> bytes:
        ins, p3 = tpdu[1], tpdu[4]
        ne = p3 or 256
        if ins == 0xB0:
            if strict_le and ne != len(content):
                return bytes([0x6C, len(content) & 0xFF])
            return content[:ne] + h("90 00")
        if ins == 0xA4:
            assert len(tpdu) == 5 + p3, "case 4 TPDU must drop Le"
            state["pending"] = content
            return bytes([0x61, min(len(content), chunk) & 0xFF])
        if ins == 0xC0:
            pending = state["pending"]
            if not pending:
                return h("6F 00")
            if strict_le and ne != min(len(pending), chunk):
                return bytes([0x6C, min(len(pending), chunk) & 0xFF])
            part, state["pending"] = pending[:ne], pending[ne:]
            rest = state["pending"]
            if rest:
                return part + bytes([0x61, min(len(rest), chunk) & 0xFF])
            return part + h("90 00")
        if ins == 0xD6:
            return h("90 00")
        return h("6D 00")

    return card


def test_case1() -> None:
    resp, sent = run(T0Exchange(h("00 D6 00 00")), file_card(b""))
    assert sent == [h("00 D6 00 00 00")]
    assert resp == h("90 00")


def test_case2_plain() -> None:
    resp, sent = run(T0Exchange(h("00 B0 00 00 04")), file_card(h("01 02 03 04")))
    assert sent == [h("00 B0 00 00 04")]
    assert resp == h("01 02 03 04 90 00")


def test_case2_6c_reissues_with_right_p3() -> None:
    resp, sent = run(T0Exchange(h("00 B0 00 00 00")), file_card(bytes(range(9)), strict_le=True))
    assert sent == [h("00 B0 00 00 00"), h("00 B0 00 00 09")]
    assert resp == bytes(range(9)) + h("90 00")


def test_case3() -> None:
    resp, sent = run(T0Exchange(h("00 D6 00 00 02 AA BB")), file_card(b""))
    assert sent == [h("00 D6 00 00 02 AA BB")]
    assert resp == h("90 00")


def test_case4_get_response_chain() -> None:
    content = bytes(i & 0xFF for i in range(600))
    ex = T0Exchange(h("80 A4 04 00 02 3F 00 00"))
    resp, sent = run(ex, file_card(content))
    assert sent[0] == h("80 A4 04 00 02 3F 00")  # Le dropped
    # GET RESPONSE keeps the command's CLA; 61 00 means 256
    assert sent[1:] == [h("80 C0 00 00 00"), h("80 C0 00 00 00"), h("80 C0 00 00 58")]
    assert resp == content + h("90 00")
    assert ex.rounds == 4


def test_case4_get_response_6c() -> None:
    # The card announces 61 20 but wants P3 = 0x10 chunks (and says so with 6C10).
    content = bytes(range(0x20))
    state = {"left": content, "asked": 0}

    def card(tpdu: bytes) -> bytes:
        if tpdu[1] == 0xA4:
            return h("61 20")
        state["asked"] += 1
        if tpdu[4] != 0x10:
            return h("6C 10")
        part, state["left"] = state["left"][:0x10], state["left"][0x10:]
        return part + (h("61 10") if state["left"] else h("90 00"))

    resp, sent = run(T0Exchange(h("00 A4 04 00 01 AA 00")), card)
    assert resp == content + h("90 00")
    assert sent[1:] == [h("00 C0 00 00 20"), h("00 C0 00 00 10"), h("00 C0 00 00 10")]


def test_6c_after_data_tpdu_is_final() -> None:
    resp, sent = run(T0Exchange(h("00 D6 00 00 01 AA")), lambda _t: h("6C 05"))
    assert resp == h("6C 05") and len(sent) == 1


def test_case4_card_answers_9000_directly() -> None:
    resp, _ = run(T0Exchange(h("00 A4 04 00 01 AA 00")), lambda _t: h("90 00"))
    assert resp == h("90 00")


def test_no_auto_get_response() -> None:
    resp, sent = run(T0Exchange(h("00 A4 04 00 02 3F 00 00"), auto_get_response=False),
                     file_card(b"abc"))
    assert resp == h("61 03") and len(sent) == 1


def test_extended_that_fits_short() -> None:
    resp, sent = run(T0Exchange(h("00 D6 00 00 00 00 02 AA BB")), file_card(b""))
    assert sent == [h("00 D6 00 00 02 AA BB")]
    resp, sent = run(T0Exchange(h("00 B0 00 00 00 00 04")), file_card(h("01 02 03 04 05")))
    assert sent == [h("00 B0 00 00 04")]
    assert resp == h("01 02 03 04 90 00")
    # Ne > 256 asks 256 and relies on 61xx
    content = bytes(300)
    resp, sent = run(T0Exchange(h("00 A4 04 00 00 00 01 AA 01 2C")), file_card(content))
    assert resp == content + h("90 00")


def test_extended_too_long_refused() -> None:
    apdu = h("00 D6 00 00 00 01 00") + bytes(256)
    with pytest.raises(UsageError, match="ENVELOPE"):
        T0Exchange(apdu)


def test_endless_61_is_bounded() -> None:
    ex = T0Exchange(h("00 A4 04 00 01 AA 00"), max_rounds=10)
    with pytest.raises(T0Error, match="10 TPDUs"):
        run(ex, lambda _t: h("00 61 01"))
    assert issubclass(T0Error, ProtocolError)


def test_endless_6c_is_bounded() -> None:
    with pytest.raises(T0Error):
        run(T0Exchange(h("00 B0 00 00 05")), lambda _t: h("6C 05"))


def test_short_reply() -> None:
    ex = T0Exchange(h("00 B0 00 00 05"))
    ex.next_tpdu()
    with pytest.raises(T0Error, match="no status word"):
        ex.receive(h("90"))


def test_api_misuse() -> None:
    ex = T0Exchange(h("00 B0 00 00 05"))
    with pytest.raises(UsageError):
        ex.receive(h("90 00"))  # nothing sent yet
    with pytest.raises(UsageError):
        _ = ex.response
    ex.next_tpdu()
    with pytest.raises(UsageError):
        ex.next_tpdu()  # reply to the last one pending
    ex.receive(h("90 00"))
    assert ex.done and ex.next_tpdu() is None
    with pytest.raises(UsageError):
        T0Exchange(h("00 B0 00 00 05"), max_rounds=0)


@given(st.binary(min_size=1, max_size=600), st.integers(1, 256))
def test_get_response_chain_property(content: bytes, chunk: int) -> None:
    resp, sent = run(T0Exchange(h("00 A4 04 00 01 AA 00")), file_card(content, chunk=chunk))
    assert resp == content + h("90 00")
    assert len(sent) == 1 + -(-len(content) // chunk)
