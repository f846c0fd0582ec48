"""Every CCID interface of the descriptor corpus, opened through the public API.

For each of libccid's dumps the virtual device carries every interface of the real one; each
interface gets a T=1 card and a T=0 card (those its dwProtocols allows), is opened with
``ccid.open_reader``, connected and sent a SELECT and an ECHO. This is what a user with that
reader and a plain card does first: it must work, or fail for a reason the library gives on
purpose (listed below with why).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ccid
from ccid import trace
from ccid.constants import Voltage
from ccid.errors import CCIDError, UnsupportedReaderError
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice

pytestmark = pytest.mark.timeout(300)

SELECT_MF = bytes.fromhex("00A4000C023F00")
ECHO = bytes.fromhex("8010000003010203")

#: (dump file, interface index) -> (exception class, words of its message). Readers the
#: library refuses on purpose, whatever the card:
#: * ActivCard USB Reader V2 firmware 2.02 and SCM SCL010 firmware 1.02: firmware that
#:   libccid's supported-readers list marks broken (open raises; allow_bad_firmware opens).
REFUSED: dict[tuple[str, int], tuple[type[CCIDError], str]] = {
    ("ActivCardV2.txt", 0): (UnsupportedReaderError, "firmware 2.02 is known to be broken"),
    ("SCL010.txt", 0): (UnsupportedReaderError, "firmware 1.02 is known to be broken"),
}

#: Character-level readers (the host would time each character; libccid does it for T=0):
#: the library does not drive them. The session is to refuse them with
#: UnsupportedReaderError; until then T=0 gives UsageError at the first APDU and T=1 the
#: reader's XfrBlock refusal (SlotError, bError 0).
CHARACTER_LEVEL = [("Oz776_7772.txt", 0), ("Oz776S.txt", 0), ("Winbond.txt", 0)]


def _interfaces(corpus: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int, int]]:
    """(dump entry, interface index, protocol) for every interface and protocol it allows."""
    for entry in corpus["readers"]:
        for index, dump in enumerate(entry["interfaces"]):
            declared = dump["dwProtocols"] & 0x03 or 0x03  # 0: nothing said, try both
            for protocol in (1, 0):
                if declared & (1 << protocol):
                    yield entry, index, protocol


def _open_and_exchange(backend: VirtualBackend, selector: Any) -> list[bytes]:
    # open_timeout: a few dumps record GET_DATA_RATES timing out; 5 s each is test time.
    with ccid.open_reader(selector, backend=backend, events=False, open_timeout=0.2) as reader, \
            reader.connect() as card:
        return [card.transmit(SELECT_MF), card.transmit(ECHO)]


def _run(entry: dict[str, Any], index: int, protocol: int
         ) -> tuple[str, list[bytes] | CCIDError]:
    device = VirtualDevice.from_descriptor_dump(entry)
    reader = device.readers[index]
    for slot in range(reader.slot_count):
        reader.insert(VirtualCard(protocols=(protocol,)), slot)
    backend = VirtualBackend(device)
    info = next(i for i in ccid.list_readers(backend=backend)
                if i.interface == reader.interface_number)
    try:
        return info.name, _open_and_exchange(backend, info)
    except CCIDError as exc:
        return info.name, exc


def test_every_corpus_interface_opens_connects_and_exchanges(
        descriptor_corpus: dict[str, Any]) -> None:
    failures: list[str] = []
    refused: set[tuple[str, int]] = set()
    opened = 0
    for entry, index, protocol in _interfaces(descriptor_corpus):
        key = (entry["file"], index)
        if key in CHARACTER_LEVEL:
            continue  # test_character_level_reader_is_unsupported
        name, outcome = _run(entry, index, protocol)
        where = f"{entry['file']} interface {index} T={protocol} ({name})"
        if key in REFUSED:
            kind, words = REFUSED[key]
            if type(outcome) is kind and words in str(outcome):
                refused.add(key)
            else:
                failures.append(f"{where}: expected {kind.__name__} ({words}), got {outcome!r}")
            continue
        if isinstance(outcome, CCIDError):
            failures.append(f"{where}: {type(outcome).__name__}: {outcome}")
        elif outcome != [b"\x90\x00", ECHO[5:] + b"\x90\x00"]:
            failures.append(f"{where}: answers {[r.hex() for r in outcome]}")
        else:
            opened += 1
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
    assert refused == set(REFUSED)
    # 773 interfaces: 1382 (interface, protocol) pairs, less 6 character-level, 4 refused.
    assert opened == 1372


@pytest.mark.parametrize("key", CHARACTER_LEVEL, ids=lambda key: key[0])
@pytest.mark.parametrize("protocol", [1, 0])
def test_character_level_reader_is_unsupported(descriptor_corpus: dict[str, Any],
                                               key: tuple[str, int], protocol: int) -> None:
    entry = next(e for e in descriptor_corpus["readers"] if e["file"] == key[0])
    _name, outcome = _run(entry, key[1], protocol)
    assert type(outcome) is UnsupportedReaderError, repr(outcome)
    assert "character" in str(outcome)


def test_no_voltage_class_declared_powers_at_5_v_first(descriptor_corpus: dict[str, Any]
                                                       ) -> None:
    # MySmartPad: bVoltageSupport 0 and no AUTO_VOLTAGE feature. bPowerSelect 0 (automatic)
    # is refused by a reader without that feature; libccid sends 5 V, then tries lower.
    entry = next(e for e in descriptor_corpus["readers"] if e["file"] == "MySmartPad.txt")
    dump = entry["interfaces"][0]
    assert dump["bVoltageSupport"] == 0 and not dump["dwFeatures"] & 0x08
    device = VirtualDevice.from_descriptor_dump(entry)
    device.readers[0].insert(VirtualCard(protocols=(0,), voltages=Voltage.V3_0))
    backend = VirtualBackend(device)
    with trace.capture() as records:
        assert _open_and_exchange(backend, 0)[0] == b"\x90\x00"
    powers = [r.data[7] for r in records if r.direction == "->" and r.data[0] == 0x62]
    assert powers == [1, 2]  # 5 V refused by the 3 V card, then 3 V


def test_reader_own_pps_at_power_on_uses_the_card_protocol(descriptor_corpus: dict[str, Any]
                                                            ) -> None:
    # miniLector AIR: TPDU, T=1 only, its own parameter negotiation (dwFeatures 0x40) but no
    # automatic configuration from the ATR: its PPS at power-on must ask for T=1, the card's
    # only protocol, and leave the card at TA1. The session, as libccid, sends that reader
    # neither a PPS nor SetParameters.
    entry = next(e for e in descriptor_corpus["readers"]
                 if e["file"] == "bit4id_minilector-AIR.txt")
    device = VirtualDevice.from_descriptor_dump(entry)
    device.readers[0].insert(VirtualCard(protocols=(1,), fi_di=0x96))
    with trace.capture() as records:
        assert _open_and_exchange(VirtualBackend(device), 0) == [b"\x90\x00",
                                                                 ECHO[5:] + b"\x90\x00"]
    sent = [r.data for r in records if r.direction == "->"]
    assert not [f for f in sent if f[0] == 0x61], "SetParameters sent"
    assert not [f for f in sent if f[0] == 0x6F and f[10:11] == b"\xff"], "PPS sent"


def test_every_reader_that_negotiates_itself_gets_no_parameters(
        descriptor_corpus: dict[str, Any]) -> None:
    # Every corpus interface with dwFeatures 0x40 (AUTO_PPS_PROPRIETARY), with a card asking
    # for a fast TA1: opened, connected, exchanging, and never sent SetParameters or a PPS.
    seen = 0
    failures: list[str] = []
    for entry, index, protocol in _interfaces(descriptor_corpus):
        dump = entry["interfaces"][index]
        if not dump["dwFeatures"] & 0x40 or (entry["file"], index) in CHARACTER_LEVEL \
                or (entry["file"], index) in REFUSED:
            continue
        device = VirtualDevice.from_descriptor_dump(entry)
        reader = device.readers[index]
        for slot in range(reader.slot_count):
            reader.insert(VirtualCard(protocols=(protocol,), fi_di=0x96), slot)
        backend = VirtualBackend(device)
        info = next(i for i in ccid.list_readers(backend=backend)
                    if i.interface == reader.interface_number)
        where = f"{entry['file']} interface {index} T={protocol}"
        with trace.capture() as records:
            try:
                answers = _open_and_exchange(backend, info)
            except CCIDError as exc:
                failures.append(f"{where}: {exc!r}")
                continue
        sent = [r.data for r in records if r.direction == "->"]
        if answers != [b"\x90\x00", ECHO[5:] + b"\x90\x00"]:
            failures.append(f"{where}: answers {answers}")
        if [f for f in sent if f[0] == 0x61]:
            failures.append(f"{where}: SetParameters sent")
        if [f for f in sent if f[0] == 0x6F and f[10:11] == b"\xff"]:
            failures.append(f"{where}: PPS sent")
        seen += 1
    assert not failures, "\n".join(failures)
    assert seen == 269  # (interface, protocol) pairs of the 0x40 interfaces that open
