"""Power, ATR, protocol, PPS and APDU exchange end to end through pyusb on virtual readers.

Every exchange level (TPDU with host PPS, TPDU with automatic PPS, short APDU, extended
APDU) x T=0/T=1 x short/extended APDUs x a card that needs PPS or not.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import ccid
from ccid.constants import Voltage
from ccid.errors import (
    CardError,
    CardRemovedError,
    CardResetError,
    ProtocolError,
    SharingViolationError,
    UsageError,
)
from ccid.testing import VirtualBackend, VirtualCard, VirtualReader
from ccid.testing.atrbuild import build_atr
from ccid.testing.presets import preset_reader

# (name, how to build it): host PPS, automatic PPS, short APDU, extended APDU.
READERS = ["gemalto-pc-twin", "acr39u-auto-pps", "short-apdu", "extended-apdu"]


@pytest.fixture(scope="module")
def acr39u_dump(descriptor_corpus: dict[str, Any]) -> dict[str, Any]:
    for entry in descriptor_corpus["readers"]:
        if entry["file"] == "ACS_ACR39U_ICC_Reader.txt":
            return entry  # type: ignore[no-any-return]
    pytest.fail("ACR39U dump missing from the test data")


def make_reader(name: str, card: VirtualCard | None, acr39u: dict[str, Any]) -> VirtualReader:
    if name == "acr39u-auto-pps":
        vr = VirtualReader.from_descriptor_dump(acr39u)
        if card is not None:
            vr.insert(card)
        return vr
    return preset_reader(name, card=card)


def echo(n: int, extended: bool = False) -> tuple[bytes, bytes]:
    """An ECHO command of n data bytes and the response it must give."""
    data = bytes((i * 7 + n) & 0xFF for i in range(n))
    if extended or n > 255:
        apdu = bytes([0x80, 0x10, 0, 0, 0]) + n.to_bytes(2, "big") + data + b"\x00\x00"
    else:
        apdu = bytes([0x80, 0x10, 0, 0, n]) + data + b"\x00"
    return apdu, data + b"\x90\x00"


def opened(vr: VirtualReader, **options: Any) -> ccid.Reader:
    options.setdefault("events", False)
    return ccid.open_reader(backend=VirtualBackend(vr), **options)


@pytest.mark.parametrize("fi_di", [0x11, 0x96], ids=["no-pps", "pps"])
@pytest.mark.parametrize("protocol", [0, 1], ids=["T0", "T1"])
@pytest.mark.parametrize("kind", READERS)
def test_exchange_matrix(kind: str, protocol: int, fi_di: int,
                         acr39u_dump: dict[str, Any]) -> None:
    vcard = VirtualCard(fi_di=fi_di)
    vr = make_reader(kind, vcard, acr39u_dump)
    with opened(vr) as reader, reader.connect(protocol=protocol) as card:
        assert card.protocol == f"T={protocol}"
        assert bytes(card.atr) == vcard.atr  # type: ignore[arg-type]
        if kind == "gemalto-pc-twin" and fi_di != 0x11:
            assert vcard.current_fi_di == fi_di  # the host negotiated the card's speed
        short, expected = echo(200)
        assert card.transmit(short) == expected
        assert card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"  # case 3
        long_apdu, long_expected = echo(3000, extended=True)
        level = reader.exchange_level.name
        if level == "EXTENDED_APDU" or (level == "TPDU" and protocol == 1):
            assert card.transmit(long_apdu) == long_expected
        else:
            with pytest.raises(UsageError):
                card.transmit(long_apdu)
        assert card.transmit(short) == expected  # still in step afterwards


@pytest.mark.parametrize("kind", ["gemalto-pc-twin", "extended-apdu"])
def test_64k_echo(kind: str) -> None:
    vr = preset_reader(kind, card=VirtualCard(protocols=(1,)))
    apdu, expected = echo(65535, extended=True)
    with opened(vr) as reader, reader.connect() as card:
        assert card.transmit(apdu) == expected


def test_t0_get_response_automatic_and_raw() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(0,), t0_always_61=True))
    with opened(vr) as reader, reader.connect() as card:
        answer = card.transmit(bytes.fromhex("8012000010"))
        assert answer == bytes(range(16)) + b"\x90\x00"
        raw = card.transmit(bytes.fromhex("8012000010"), raw=True)
        assert raw[0] == 0x61 and len(raw) == 2
    with opened(vr, auto_get_response=False) as reader, reader.connect() as card:
        assert card.transmit(bytes.fromhex("8012000010"))[0] == 0x61


def test_t1_recovers_from_card_errors_and_honours_wtx_and_ifs() -> None:
    vcard = VirtualCard(protocols=(1,))
    vr = preset_reader("gemalto-pc-twin", card=vcard)
    apdu, expected = echo(600, extended=True)
    with opened(vr) as reader, reader.connect() as card:
        assert vcard.t1.ifsd == 254  # IFSD negotiated at connect
        vcard.faults.t1_bad_edc(2)
        assert card.transmit(apdu) == expected
        vcard.faults.t1_lose(1)
        assert card.transmit(apdu) == expected
        vcard.faults.wtx(2, multiplier=3)
        assert card.transmit(apdu) == expected
        vcard.faults.t1_request_ifs(100)
        assert card.transmit(apdu) == expected


def test_ifsd_option_and_reader_limit() -> None:
    vcard = VirtualCard(protocols=(1,))
    vr = preset_reader("gemalto-pc-twin", card=vcard)
    with opened(vr, ifsd=64) as reader, reader.connect() as card:
        assert vcard.t1.ifsd == 64
        apdu, expected = echo(500, extended=True)
        assert card.transmit(apdu) == expected


def test_specific_mode_card_gets_no_pps() -> None:
    atr = build_atr((1,), ta1=0x96, specific=1, ifsc=0xFE, bwi=4, cwi=5)
    vcard = VirtualCard(atr=atr)
    vr = preset_reader("gemalto-pc-twin", card=vcard)
    with opened(vr) as reader:
        with reader.connect() as card:
            assert card.protocol == "T=1"
            apdu, expected = echo(10)
            assert card.transmit(apdu) == expected
        with pytest.raises(CardError, match="specific mode"):
            reader.connect(protocol=0).disconnect()


def test_protocol_not_offered() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(0,)))
    with opened(vr) as reader:
        with pytest.raises(CardError, match="does not offer T=1") as info:
            reader.connect(protocol="T=1")
        assert info.value.pcsc_code == "SCARD_E_PROTO_MISMATCH"
        with pytest.raises(UsageError):
            reader.connect(protocol="T=2")


def test_bad_tck_is_reported_and_usable_on_request() -> None:
    good = build_atr((1,), ifsc=0xFE, bwi=4, cwi=5)
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(atr=bad, protocols=(1,)))
    with opened(vr) as reader, pytest.raises(ProtocolError, match="TCK"):
        reader.connect()
    with opened(vr, check_tck=False) as reader, reader.connect() as card:
        assert card.atr is not None and not card.atr.tck_ok
        apdu, expected = echo(20)
        assert card.transmit(apdu) == expected


@pytest.mark.parametrize("classes", [Voltage.V5_0, Voltage.V3_0, Voltage.V1_8])
def test_voltage_fallback(classes: Voltage) -> None:
    vcard = VirtualCard(voltages=classes)
    vr = preset_reader("gemalto-pc-twin", card=vcard)
    with opened(vr, quirks=False) as reader, reader.connect() as card:
        assert card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"


def test_sharing_and_exclusive_both_orders() -> None:
    vr = preset_reader("gemalto-pc-twin")
    with opened(vr) as reader:
        a = reader.connect()
        b = reader.connect()
        with pytest.raises(SharingViolationError):
            reader.connect(mode="exclusive")
        a.disconnect()
        b.disconnect()
        ex = reader.connect(mode="exclusive")
        with pytest.raises(SharingViolationError):
            reader.connect()
        with pytest.raises(SharingViolationError):
            reader.connect(mode="exclusive")
        ex.disconnect()
        with reader.connect() as again:
            assert again.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"


def test_reset_by_another_handle_is_seen_before_anything_is_sent() -> None:
    vr = preset_reader("gemalto-pc-twin")
    select = bytes.fromhex("00A4040006A000000018FF")
    with opened(vr) as reader:
        looper = reader.connect()
        other = reader.connect()
        assert looper.transmit(select) == b"\x90\x00"
        assert looper.transmit(bytes.fromhex("8034000404")) == bytes(range(4)) + b"\x90\x00"
        other.reset()
        seen = vr.commands_seen
        with pytest.raises(CardResetError) as info:
            looper.transmit(bytes.fromhex("8034000404"))
        assert info.value.pcsc_code == "SCARD_W_RESET_CARD"
        assert vr.commands_seen == seen  # nothing reached the reader
        looper.reconnect()
        assert looper.transmit(bytes.fromhex("8034000404")) == b"\x69\x85"  # deselected
        assert looper.transmit(select) == b"\x90\x00"
        other.disconnect("unpower")
        with pytest.raises(CardResetError):
            looper.transmit(select)
        looper.reconnect()
        assert looper.transmit(select) == b"\x90\x00"


def test_removal_seen_by_the_monitor_refuses_old_handles() -> None:
    vr = preset_reader("gemalto-pc-twin")
    with opened(vr, events=True) as reader:
        card = reader.connect()
        # the card present at open is reported first
        assert type(reader.wait_for_event(5)).__name__ == "CardInserted"
        vr.remove()
        event = reader.wait_for_event(5)
        assert type(event).__name__ == "CardRemoved"
        seen = vr.commands_seen
        with pytest.raises(CardRemovedError):
            card.transmit(bytes.fromhex("00A4000C023F00"))
        assert vr.commands_seen == seen


def test_transaction_and_threads_never_mix_responses() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(1,)))
    errors: list[str] = []
    with opened(vr) as reader:
        handles = [reader.connect() for _ in range(4)]

        def worker(index: int) -> None:
            card = handles[index % len(handles)]
            for i in range(25):
                apdu, expected = echo(1 + (index * 31 + i) % 200)
                got = card.transmit(apdu)
                if got != expected:
                    errors.append(f"thread {index} APDU {i}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        with handles[0].transaction():
            for t in threads:
                t.start()
            threads[0].join(0.2)
            assert threads[0].is_alive()  # held back by the transaction
            apdu, expected = echo(5)
            assert handles[0].transmit(apdu) == expected
        for t in threads:
            t.join(60)
        assert not errors


def test_two_slots_concurrently() -> None:
    vr = preset_reader("two-slot-concurrent", card=None)
    vr.insert(VirtualCard(), 0)
    vr.insert(VirtualCard(protocols=(1,)), 1)
    errors: list[str] = []
    with opened(vr) as reader:
        cards = [reader.connect(0), reader.connect(1)]

        def worker(slot: int) -> None:
            for i in range(30):
                apdu, expected = echo(10 + i + slot)
                if cards[slot].transmit(apdu) != expected:
                    errors.append(f"slot {slot} APDU {i}")

        threads = [threading.Thread(target=worker, args=(s,)) for s in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors


def test_escape_and_direct_mode() -> None:
    vr = preset_reader("gemalto-pc-twin", card=None,
                       escape_handler=lambda data: b"echo:" + bytes(data))
    with opened(vr) as reader:
        assert reader.escape(b"\x01\x02") == b"echo:\x01\x02"
        with reader.connect(mode="direct") as direct:
            assert direct.atr is None
            assert direct.escape(b"x") == b"echo:x"
            with pytest.raises(UsageError):
                direct.transmit(bytes.fromhex("00A4000C023F00"))


def test_no_card_and_slot_info() -> None:
    vr = preset_reader("two-slot", card=None)
    vr.insert(VirtualCard(), 1)
    with opened(vr) as reader:
        slots = reader.slots
        assert [s.card_present for s in slots] == [False, True]
        with pytest.raises(ccid.errors.NoCardError):
            reader.connect(0)
        with reader.connect(1) as card:
            assert reader.slots[1].powered and reader.slots[1].atr == bytes(card.atr)  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            reader.connect(2)


def test_disconnect_dispositions() -> None:
    vr = preset_reader("gemalto-pc-twin")
    with opened(vr) as reader:
        for disposition in ("leave", "reset", "unpower", "eject"):
            card = reader.connect()
            assert card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"
            card.disconnect(disposition)  # type: ignore[arg-type]
            assert reader.slots[0].powered == (disposition in ("leave", "reset"))
        card = reader.connect()
        card.reset(cold=True)
        assert card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"
        with pytest.raises(UsageError):
            card.disconnect("explode")  # type: ignore[arg-type]
