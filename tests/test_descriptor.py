"""ccid.descriptor against libccid's 773 interface dumps, plus locate/array rules and fuzz."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccid.constants import ExchangeLevel, Features, PINSupport, Protocols, Voltage
from ccid.descriptor import (
    DESCRIPTOR_FIELDS,
    CCIDDescriptor,
    locate_ccid_descriptor,
    parse_ccid_descriptor,
    parse_clock_frequencies,
    parse_data_rates,
)
from ccid.errors import CCIDError, DescriptorError

# (offset, size) of every field in CCID 1.1 table 5.1-1, written out independently of the
# module's struct format.
SPEC_OFFSETS: dict[str, tuple[int, int]] = {
    "bLength": (0, 1), "bDescriptorType": (1, 1), "bcdCCID": (2, 2), "bMaxSlotIndex": (4, 1),
    "bVoltageSupport": (5, 1), "dwProtocols": (6, 4), "dwDefaultClock": (10, 4),
    "dwMaximumClock": (14, 4), "bNumClockSupported": (18, 1), "dwDataRate": (19, 4),
    "dwMaxDataRate": (23, 4), "bNumDataRatesSupported": (27, 1), "dwMaxIFSD": (28, 4),
    "dwSynchProtocols": (32, 4), "dwMechanical": (36, 4), "dwFeatures": (40, 4),
    "dwMaxCCIDMessageLength": (44, 4), "bClassGetResponse": (48, 1),
    "bClassEnvelope": (49, 1), "wLcdLayout": (50, 2), "bPINSupport": (52, 1),
    "bMaxCCIDBusySlots": (53, 1),
}

LEVELS = {
    "character": ExchangeLevel.CHARACTER,
    "tpdu": ExchangeLevel.TPDU,
    "short_apdu": ExchangeLevel.SHORT_APDU,
    "extended_apdu": ExchangeLevel.EXTENDED_APDU,
}
FLAGS = {
    "auto_conf_atr": Features.AUTO_CONF_ATR,
    "auto_activation": Features.AUTO_ACTIVATION,
    "auto_voltage": Features.AUTO_VOLTAGE,
    "auto_clock": Features.AUTO_CLOCK,
    "auto_baud": Features.AUTO_BAUD,
    "auto_pps_negotiation_proprietary": Features.AUTO_PPS_PROPRIETARY,
    "auto_pps_current": Features.AUTO_PPS_CURRENT,
    "clock_stop": Features.CLOCK_STOP,
    "nad_not_zero_accepted": Features.NAD_NOT_ZERO,
    "auto_ifsd": Features.AUTO_IFSD,
    "iccd_token": Features.ICCD_TOKEN,
    "usb_wake_up": Features.USB_WAKE_UP,
}
PROTOCOLS = {"T=0": Protocols.T0, "T=1": Protocols.T1}
VOLTAGES = {"5.0V": Voltage.V5_0, "3.0V": Voltage.V3_0, "1.8V": Voltage.V1_8}


def interfaces(corpus: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for reader in corpus["readers"]:
        for n, iface in enumerate(reader["interfaces"]):
            yield f"{reader['file']}#{n}", iface


def _dwords(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(4, "little") for v in values)


# --- the corpus ---------------------------------------------------------------------------


def test_corpus_round_trip_and_derived_values(descriptor_corpus: dict[str, Any]) -> None:
    count = 0
    for where, iface in interfaces(descriptor_corpus):
        count += 1
        desc = CCIDDescriptor.from_fields(iface)
        raw = desc.to_bytes()
        assert len(raw) == 54, where
        for name, (offset, size) in SPEC_OFFSETS.items():
            assert int.from_bytes(raw[offset:offset + size], "little") == iface[name], (
                where, name)
        parsed = parse_ccid_descriptor(raw)
        assert parsed == desc, where
        assert parsed.as_dict() == {name: iface[name] for name in DESCRIPTOR_FIELDS}, where

        derived = iface["derived"]
        assert parsed.exchange_level is LEVELS[derived["exchange_level"]], where
        expected_flags = {FLAGS[name] for name in derived["feature_flags"]}
        assert {flag for flag in FLAGS.values() if parsed.features & flag} == expected_flags, (
            where)
        assert parsed.is_iccd == (Features.ICCD_TOKEN in expected_flags), where
        assert {p for p in PROTOCOLS.values() if parsed.protocols & p} == {
            PROTOCOLS[p] for p in derived["protocols"]}, where
        assert {v for v in VOLTAGES.values() if parsed.voltages & v} == {
            VOLTAGES[v] for v in derived["voltages"]}, where
        assert bool(parsed.pin_support & PINSupport.VERIFY) is derived["pin_verify"], where
        assert bool(parsed.pin_support & PINSupport.MODIFY) is derived["pin_modify"], where
        assert parsed.slot_count == derived["slots"], where
        assert parsed.version == iface["bcdCCID_text"], where
        if parsed.wLcdLayout:
            lines, chars = parsed.lcd_layout  # type: ignore[misc]
            assert (lines << 8) | chars == parsed.wLcdLayout, where
        else:
            assert parsed.lcd_layout is None, where
    assert count == descriptor_corpus["interface_dumps_total"] == 773


def test_corpus_descriptor_types(descriptor_corpus: dict[str, Any]) -> None:
    """Class-0xFF readers with type 0xFF are found and parsed like the others."""
    seen = set()
    for where, iface in interfaces(descriptor_corpus):
        raw = CCIDDescriptor.from_fields(iface).to_bytes()
        klass = iface["interface"]["bInterfaceClass"]
        seen.add((klass, raw[1]))
        other = bytes((9, 0x24, 1, 2, 3, 4, 5, 6, 7))  # e.g. a vendor descriptor before it
        found = locate_ccid_descriptor(other + raw, interface_class=klass)
        assert found == raw, where
        assert parse_ccid_descriptor(found).bDescriptorType == iface["bDescriptorType"], where
    assert {(0x0B, 0x21), (0xFF, 0x21), (0xFF, 0xFF)} <= seen


# --- data-rate and clock lists ------------------------------------------------------------

KINDS = [
    ("data_rates_bps", "bNumDataRatesSupported", parse_data_rates),
    ("clock_frequencies_khz", "bNumClockSupported", parse_clock_frequencies),
]


def _dumped_lists(corpus: dict[str, Any]) -> Iterator[tuple[str, list[int], int, Any]]:
    for where, iface in interfaces(corpus):
        for key, declared_key, parse in KINDS:
            values = iface.get("unsigned_" + key, iface[key])
            if values:
                yield f"{where} {key}", values, iface[declared_key], parse


def test_corpus_lists_round_trip(descriptor_corpus: dict[str, Any]) -> None:
    clean = dirty = 0
    for where, values, declared, parse in _dumped_lists(descriptor_corpus):
        assert all(0 <= v < 1 << 32 for v in values), where  # unsigned views are used
        result = parse(_dwords(values), declared)
        # order kept, nothing invented: the result is a prefix of what the reader sent
        assert list(result) == values[: len(result)], where
        assert 0 not in result, where
        if declared:
            assert len(result) <= declared, where
        window = values[:declared] if declared else values
        if 0 not in window:
            clean += 1
            assert list(result) == window, where  # a genuine table comes back whole
        else:
            dirty += 1
            assert len(result) == window.index(0), where  # a zero ends the table
        # a ragged tail makes the whole answer untrusted
        assert parse(_dwords(values) + b"\x01", declared) == (), where
    assert clean > 300 and dirty > 10


def test_corpus_lists_longer_than_declared(descriptor_corpus: dict[str, Any]) -> None:
    """'Got 256 data rates but was expecting 106': the dump kept the declared entries;
    rebuilding the reader's longer answer must give exactly those back."""
    pattern = re.compile(r"Got (\d+) (data rates|clock frequencies) but was expecting (\d+)")
    checked = 0
    for where, iface in interfaces(descriptor_corpus):
        for note in iface["notes"]:
            match = pattern.fullmatch(note)
            if not match:
                continue
            got, what, expected = int(match[1]), match[2], int(match[3])
            key, declared_key, parse = KINDS[0] if what == "data rates" else KINDS[1]
            values = iface.get("unsigned_" + key, iface[key])
            if not values or got <= expected or iface[declared_key] != expected:
                continue
            assert len(values) == expected, where
            sent = values + [0xDEADBEEF] * (got - expected)  # what the reader really sent
            result = parse(_dwords(sent), expected)
            assert list(result) == values[: len(result)], where
            if 0 not in values:
                assert list(result) == values, where
            checked += 1
    assert checked >= 20


def test_corpus_wrong_size_answers(descriptor_corpus: dict[str, Any]) -> None:
    """'wrong size for GET_DATA_RATES: 1': a 1- or 2-byte answer is no list."""
    pattern = re.compile(r"wrong size for (GET_DATA_RATES|GET CLOCK FREQUENCIES): (\d+)")
    checked = 0
    for where, iface in interfaces(descriptor_corpus):
        for note in iface["notes"]:
            match = pattern.fullmatch(note)
            if match:
                size = int(match[2])
                parse = parse_data_rates if "DATA" in match[1] else parse_clock_frequencies
                assert parse(b"\x96" * size, 0) == (), where
                checked += 1
    assert checked >= 40


def test_ct700_data_rates(descriptor_corpus: dict[str, Any],
                          ct700_vectors: dict[str, Any]) -> None:
    vector = ct700_vectors["get_data_rates_response"]
    expect = vector["expect"]["rates_bps"]
    payload = bytes.fromhex(vector["hex"])
    ct700 = [iface for _, iface in interfaces(descriptor_corpus)
             if (iface["idVendor"], iface["idProduct"]) == (0x08E6, 0x3478)]
    assert ct700
    for iface in ct700:
        rates = parse_data_rates(payload, iface["bNumDataRatesSupported"])
        assert list(rates) == expect == iface["data_rates_bps"]
    assert len(parse_data_rates(payload)) == vector["expect"]["count"] == 41
    assert parse_data_rates(payload, 10) == tuple(expect[:10])


@pytest.mark.parametrize(("values", "declared", "expected"), [
    ([9600, 19200], None, (9600, 19200)),
    ([9600, 19200], 0, (9600, 19200)),
    ([9600, 19200, 38400], 2, (9600, 19200)),
    ([9600], 53, (9600,)),  # fewer than declared: keep what came
    ([9600, 0, 19200], 0, (9600,)),  # a zero ends the table
    ([0, 0, 123456], 0, ()),  # zero-filled or garbage buffer
    ([10752, 10752], 0, (10752, 10752)),  # duplicates kept as given
    ([], 0, ()),
])
def test_array_rules(values: list[int], declared: int | None,
                     expected: tuple[int, ...]) -> None:
    assert parse_data_rates(_dwords(values), declared) == expected
    assert parse_clock_frequencies(_dwords(values), declared) == expected


# --- locate_ccid_descriptor ---------------------------------------------------------------


def _descriptor(kind: int = 0x21, **fields: int) -> bytes:
    base = {name: 0 for name in DESCRIPTOR_FIELDS}
    base.update(bLength=54, bDescriptorType=kind, bcdCCID=0x0110, dwProtocols=3,
                dwFeatures=0x000404BA, dwMaxCCIDMessageLength=271)
    base.update(fields)
    return CCIDDescriptor.from_fields(base).to_bytes()


def test_locate_after_other_descriptors() -> None:
    ccid = _descriptor()
    hid_like = bytes((9, 0x21, 0x11, 0x01, 0x00, 0x01, 0x22, 0x20, 0x00))  # 9-byte type 0x21
    vendor = bytes((4, 0x41, 0xAA, 0xBB))
    assert locate_ccid_descriptor(hid_like + vendor + ccid) == ccid
    assert locate_ccid_descriptor(ccid + vendor) == ccid


def test_locate_class_ff_type_ff() -> None:
    ccid = _descriptor(kind=0xFF)
    found = locate_ccid_descriptor(ccid, interface_class=0xFF)
    assert found == ccid
    assert parse_ccid_descriptor(found).bDescriptorType == 0xFF


def test_locate_after_last_endpoint() -> None:
    """O2Micro OZ776: nothing on the interface, the descriptor follows the last endpoint."""
    ccid = _descriptor()
    assert locate_ccid_descriptor(b"", endpoint_extras=[b"", b"", ccid]) == ccid


@pytest.mark.parametrize(("extra", "words"), [
    (b"", ["no class descriptor"]),
    (_descriptor()[:52], ["truncated", "0x21"]),  # cut short
    (bytes((52, 0x21)) + _descriptor()[2:52], ["length 52", "0x21"]),  # wrong length
    (bytes((54, 0x24)) + _descriptor()[2:], ["0x24", "length 54"]),  # wrong type
    (bytes((0, 0x21, 0, 0)), ["bLength 0"]),
    (b"\x05", ["stray"]),
])
def test_locate_errors_name_what_was_found(extra: bytes, words: list[str]) -> None:
    with pytest.raises(DescriptorError) as info:
        locate_ccid_descriptor(extra, interface_class=0x0B)
    for word in words:
        assert word in str(info.value)
    assert "0x0B" in str(info.value)


@pytest.mark.parametrize(("raw", "word"), [
    (b"", "too short"),
    (b"\x36", "too short"),
    (bytes((53, 0x21)) + bytes(51), "bLength 53"),
    (bytes((54, 0x22)) + bytes(52), "0x22"),
    (_descriptor()[:-1], "53 bytes"),
    (_descriptor() + b"\x00", "55 bytes"),
])
def test_parse_errors_name_what_was_found(raw: bytes, word: str) -> None:
    with pytest.raises(DescriptorError, match=word):
        parse_ccid_descriptor(raw)


def test_from_fields_and_to_bytes_errors() -> None:
    with pytest.raises(DescriptorError, match="missing"):
        CCIDDescriptor.from_fields({"bcdCCID": 0x110})
    fields = parse_ccid_descriptor(_descriptor()).as_dict()
    fields["bMaxSlotIndex"] = 256
    with pytest.raises(DescriptorError, match="out of range"):
        CCIDDescriptor.from_fields(fields).to_bytes()


def test_derived_views() -> None:
    desc = parse_ccid_descriptor(_descriptor(
        bMaxSlotIndex=3, bVoltageSupport=0x0F, dwProtocols=0x20003, bPINSupport=0x07,
        wLcdLayout=0x0210, dwFeatures=0x00070800))
    assert desc.slot_count == 4
    assert desc.voltages == Voltage.V5_0 | Voltage.V3_0 | Voltage.V1_8
    assert desc.protocols == Protocols.T0 | Protocols.T1
    assert desc.pin_support == PINSupport.VERIFY | PINSupport.MODIFY
    assert desc.lcd_layout == (2, 16)
    assert desc.is_iccd
    assert desc.exchange_level is ExchangeLevel.EXTENDED_APDU  # several bits: the highest
    assert desc.version == "1.10"


# --- fuzz ---------------------------------------------------------------------------------


@given(st.binary(max_size=70) | st.binary(min_size=52, max_size=52).map(
    lambda tail: bytes((54, 0x21)) + tail))
def test_fuzz_parse_descriptor(raw: bytes) -> None:
    try:
        desc = parse_ccid_descriptor(raw)
    except DescriptorError:
        assert not (len(raw) == 54 and raw[0] == 54 and raw[1] in (0x21, 0xFF))
        return
    assert desc.to_bytes() == raw
    assert desc.exchange_level in ExchangeLevel
    assert 1 <= desc.slot_count <= 256


@given(st.binary(max_size=120), st.lists(st.binary(max_size=60), max_size=3),
       st.integers(0, 255))
def test_fuzz_locate(extra: bytes, endpoints: list[bytes], klass: int) -> None:
    try:
        found = locate_ccid_descriptor(extra, interface_class=klass, endpoint_extras=endpoints)
    except DescriptorError:
        return
    assert len(found) == 54 and found[0] == 54 and found[1] in (0x21, 0xFF)
    assert found in extra or (endpoints and found in endpoints[-1])
    parse_ccid_descriptor(found)


@given(st.binary(max_size=80), st.none() | st.integers(0, 255))
def test_fuzz_arrays(payload: bytes, declared: int | None) -> None:
    for parse in (parse_data_rates, parse_clock_frequencies):
        try:
            values = parse(payload, declared)
        except CCIDError:  # pragma: no cover - the parsers never raise today
            continue
        assert all(0 < v < 1 << 32 for v in values)
        assert len(values) <= len(payload) // 4
        if declared:
            assert len(values) <= declared
        assert _dwords(list(values)) == payload[: 4 * len(values)]
