"""ICCD version A and B tokens end to end through pyusb: the control-pipe transport under the
public API, against the virtual ICCD token models (and every ICCD dump of the corpus)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import usb.core
import usb.util

import ccid
from ccid import trace
from ccid.constants import ExchangeLevel
from ccid.errors import (
    CardResetError,
    CCIDError,
    ProtocolError,
    ReaderError,
    ReaderRemovedError,
    ReaderTimeoutError,
    SlotError,
    UsageError,
)
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing.backend import VirtualDevice
from ccid.testing.iccd import IccdFault, IccdReader, is_iccd_dump
from ccid.testing.presets import ICCD_PRESETS, preset_dump, preset_reader

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

XFR_BLOCK, DATA_BLOCK, GET_ICC_STATUS = 0x65, 0x6F, 0xA0

#: (preset, card protocol): version A character level (T=0), version A at TPDU level with
#: bulk endpoints (T=0, T=1), version B (T=1 token, T=0 token with an interrupt endpoint).
MATRIX = [("iccd-a", 0), ("iccd-a-tpdu", 0), ("iccd-a-tpdu", 1), ("iccd-b", 1),
          ("iccd-b-t0", 0)]


def echo(n: int, extended: bool = False) -> tuple[bytes, bytes]:
    """An ECHO command of n data bytes and the response it must give."""
    data = bytes((i * 7 + n) & 0xFF for i in range(n))
    if extended:
        apdu = bytes([0x80, 0x10, 0, 0, 0]) + n.to_bytes(2, "big") + data + b"\x00\x00"
    else:
        apdu = bytes([0x80, 0x10, 0, 0, n]) + data + b"\x00"
    return apdu, data + b"\x90\x00"


def opened(vr: IccdReader | Any, **options: Any) -> ccid.Reader:
    options.setdefault("events", False)
    options.setdefault("allow_bad_firmware", True)  # the ActivCard V2 dump's firmware
    options.setdefault("timeout", 10)
    return ccid.open_reader(backend=VirtualBackend(vr), **options)


def token(name: str, protocol: int) -> IccdReader:
    vr = preset_reader(name, card=VirtualCard(protocols=(protocol,)))
    assert isinstance(vr, IccdReader)
    return vr


@pytest.mark.parametrize("size", [20, 300], ids=["short", "extended"])
@pytest.mark.parametrize(("name", "protocol"), MATRIX, ids=[f"{n}-T{p}" for n, p in MATRIX])
def test_exchange_matrix(name: str, protocol: int, size: int) -> None:
    vr = token(name, protocol)
    with opened(vr) as reader, reader.connect() as card:
        assert card.protocol == f"T={protocol}"
        expected_level = (ExchangeLevel.TPDU if vr.iccd_version == 1
                          else ExchangeLevel.EXTENDED_APDU)
        assert reader.exchange_level == expected_level
        apdu, want = echo(size, extended=size > 255)
        if size > 255 and vr.iccd_version == 1 and protocol == 0:
            # T=0 carries no extended APDU without ENVELOPE, which this card lacks.
            with pytest.raises(CCIDError):
                card.transmit(apdu)
        else:
            assert card.transmit(apdu) == want
        short, short_want = echo(7)
        assert card.transmit(short) == short_want  # and the token goes on
    # Everything went over the control pipe.
    assert any(req == XFR_BLOCK for _, req, _, _ in vr.requests_seen)
    assert vr.commands_seen > 0


def test_version_a_t0_runs_header_then_data_then_status_word() -> None:
    vr = token("iccd-a", 0)
    with opened(vr) as reader, reader.connect() as card:
        vr.requests_seen.clear()
        apdu, want = echo(5)
        assert card.transmit(apdu) == want
    seen = [(rtype, req, length) for rtype, req, _, length in vr.requests_seen]
    xfrs = [i for i, (rtype, req, _) in enumerate(seen) if req == XFR_BLOCK]
    # The 5-byte header, the command data, then GET RESPONSE's header (the card said 61xx).
    assert len(xfrs) == 3
    assert (0xA1, GET_ICC_STATUS, 1) in seen
    assert (0xA1, DATA_BLOCK, 2) in seen  # SW1 SW2 on their own, after status 0x20


def test_version_b_response_chaining_over_data_block() -> None:
    vr = token("iccd-b", 1)
    with opened(vr) as reader, reader.connect() as card:
        vr.requests_seen.clear()
        apdu = bytes([0x80, 0x12, 0, 0, 0, 0x03, 0x00])  # 768 bytes: several pieces
        resp = card.transmit(apdu)
        assert resp == bytes(i & 0xFF for i in range(768)) + b"\x90\x00"
    continued = [v for _, req, v, _ in vr.requests_seen if req == XFR_BLOCK and v == 0x1000]
    assert continued  # "send me the next piece" (level parameter 0x10 in wValue)


def test_trace_shows_the_control_requests() -> None:
    vr = token("iccd-b", 1)
    with trace.capture() as records, opened(vr) as reader, reader.connect() as card:
        card.transmit(echo(3)[0])
    directions = {r.direction for r in records}
    assert {"ctrl->", "ctrl<-", "->", "<-"} <= directions
    assert any(r.direction == "ctrl->" and r.data[1] == XFR_BLOCK for r in records)


def test_slot_status_and_polled_presence() -> None:
    vr = token("iccd-b", 1)
    with opened(vr) as reader:
        assert reader.slot_status(0).name == "INACTIVE"
        with reader.connect() as card:
            card.transmit(echo(1)[0])
            assert reader.slot_status(0).name == "ACTIVE"
        vr.remove(0)
        assert reader.slot_status(0).name == "ABSENT"


def test_version_a_no_card_is_reported_absent() -> None:
    vr = preset_reader("iccd-a", card=None)
    with opened(vr) as reader:
        assert reader.slot_status(0).name == "ABSENT"
        with pytest.raises(CCIDError):
            reader.connect()


# --- faults -----------------------------------------------------------------------------


def _usable(card: Any) -> None:
    """After a fault: the next APDU works (after a reconnect when the card was reset)."""
    apdu, want = echo(4)
    try:
        assert card.transmit(apdu) == want
    except CardResetError:
        card.reconnect()
        assert card.transmit(apdu) == want


B_FAULTS = [
    ("poll-storm", IccdFault("poll", count=None, delay=2), ReaderTimeoutError),
    ("short", IccdFault("short"), ProtocolError),
    ("short-poll", IccdFault("garbage", data=b"\x80\x01"), ProtocolError),
    ("garbage", IccdFault("garbage", data=b"\x55\x01\x02\x03"), ProtocolError),
    ("endless-more", IccdFault("more", count=None, data=bytes(250)), ReaderError),
    ("wrong-status", IccdFault("wrong-status"), SlotError),
    ("stall-always", IccdFault("stall", count=None), ReaderError),
    ("no-answer", IccdFault("timeout", count=None), ReaderTimeoutError),
]


@pytest.mark.parametrize(("fault", "error"), [(f, e) for _, f, e in B_FAULTS],
                         ids=[i for i, _, _ in B_FAULTS])
def test_version_b_faults_end_in_a_typed_error(fault: IccdFault, error: type[Exception]
                                               ) -> None:
    vr = token("iccd-b", 1)
    with opened(vr, timeout=2) as reader, reader.connect() as card:
        _usable(card)
        vr.inject_iccd(fault)
        with pytest.raises(error) as caught:
            card.transmit(echo(8)[0], timeout=1.5)
        assert isinstance(caught.value, CCIDError)
        vr.iccd_faults.clear()
        _usable(card)


def test_version_b_time_extensions_within_the_ceiling_are_waited_for() -> None:
    vr = token("iccd-b", 1)
    with opened(vr) as reader, reader.connect() as card:
        vr.inject_iccd(IccdFault("poll", count=5, delay=1))
        apdu, want = echo(9)
        assert card.transmit(apdu) == want
        assert not vr.iccd_faults


def test_version_b_single_stall_is_recovered() -> None:
    vr = token("iccd-b", 1)
    with opened(vr) as reader, reader.connect() as card:
        vr.inject_iccd(IccdFault("stall", count=1))
        apdu, want = echo(6)
        assert card.transmit(apdu) == want


A_FAULTS = [
    ("busy-storm", IccdFault("busy", count=None), ReaderTimeoutError),
    # A token answering garbage half-way through a command is reset (card powered off):
    # the error says so and names the cause.
    ("short-status", IccdFault("short"), (ProtocolError, CardResetError)),
    ("garbage-status", IccdFault("garbage", data=b"\x37"),
     (ProtocolError, CardResetError)),
    ("short-data", IccdFault("short", request=DATA_BLOCK, count=None),
     (ProtocolError, CardResetError)),
    ("stall-xfr", IccdFault("stall", request=XFR_BLOCK, count=None), ReaderError),
]


@pytest.mark.parametrize(("fault", "error"), [(f, e) for _, f, e in A_FAULTS],
                         ids=[i for i, _, _ in A_FAULTS])
def test_version_a_faults_end_in_a_typed_error(
        fault: IccdFault, error: type[Exception] | tuple[type[Exception], ...]) -> None:
    vr = token("iccd-a", 0)
    with opened(vr, timeout=2) as reader, reader.connect() as card:
        _usable(card)
        vr.inject_iccd(fault)
        with pytest.raises(error) as caught:
            card.transmit(echo(8)[0], timeout=1.5)
        assert reader.name in str(caught.value) or caught.value.reader == reader.name
        vr.iccd_faults.clear()
        _usable(card)


def test_version_a_wrong_status_never_loops() -> None:
    vr = token("iccd-a", 0)
    with opened(vr, timeout=2) as reader, reader.connect() as card:
        vr.inject_iccd(IccdFault("wrong-status", count=None))
        with pytest.raises(CCIDError):
            card.transmit(echo(8)[0], timeout=1.5)
        vr.iccd_faults.clear()
        _usable(card)


def test_version_a_busy_for_a_while_is_waited_for() -> None:
    vr = token("iccd-a", 0)
    with opened(vr) as reader, reader.connect() as card:
        vr.inject_iccd(IccdFault("busy", count=30))
        apdu, want = echo(3)
        assert card.transmit(apdu) == want


@pytest.mark.parametrize("name", ["iccd-a", "iccd-b"])
def test_unplug_mid_exchange_closes_cleanly(name: str) -> None:
    vr = token(name, 0 if name == "iccd-a" else 1)
    reader = opened(vr)
    card = reader.connect()
    vr.inject_iccd(IccdFault("unplug", request=XFR_BLOCK))
    with pytest.raises(ReaderRemovedError):
        card.transmit(echo(5)[0])
    with pytest.raises(ReaderRemovedError):
        card.transmit(echo(5)[0])
    reader.close()
    assert reader.closed
    with pytest.raises(UsageError):
        reader.connect()


def test_events_come_from_the_interrupt_endpoint() -> None:
    vr = token("iccd-b-t0", 0)
    assert vr.has_interrupt
    backend = VirtualBackend(vr)
    with ccid.open_reader(backend=backend, timeout=5) as reader:
        assert reader.has_interrupt
        vr.remove(0)
        seen = [type(e).__name__ for e in reader.events(timeout=2)]
        assert "CardRemoved" in seen


# --- the corpus -------------------------------------------------------------------------


def _iccd_entries(corpus: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in corpus["readers"]:
        if any(is_iccd_dump(d) for d in entry["interfaces"]):
            yield entry


def test_corpus_has_twelve_iccd_interfaces(descriptor_corpus: dict[str, Any]) -> None:
    files = [e["file"] for e in _iccd_entries(descriptor_corpus)]
    assert len(files) == 12
    assert "ActivCardV2.txt" in files and "Aktiv_Rutoken_Magistra.txt" in files


def test_every_corpus_iccd_interface_opens_and_exchanges(descriptor_corpus: dict[str, Any]
                                                         ) -> None:
    done = []
    for entry in _iccd_entries(descriptor_corpus):
        device = VirtualDevice.from_descriptor_dump(entry)
        (vr,) = device.readers
        assert isinstance(vr, IccdReader)
        protocols = vr.descriptor.dwProtocols & 0x03 or 0x01
        for protocol in (0, 1):
            if not protocols & (1 << protocol):
                continue
            vr.insert(VirtualCard(protocols=(protocol,)))
            with opened(device) as reader, reader.connect() as card:
                assert card.protocol == f"T={protocol}"
                apdu, want = echo(10)
                assert card.transmit(apdu) == want, entry["file"]
                assert card.transmit(bytes.fromhex("00A4040000"))[-2:] == b"\x6a\x82"
            vr.remove(0)
            done.append((entry["file"], protocol))
    assert len({f for f, _ in done}) == 12


def test_every_corpus_interface_boots_and_answers_over_its_pipe(
        descriptor_corpus: dict[str, Any]) -> None:
    """All 773 interfaces: bulk readers answer a raw GetSlotStatus on bulk, ICCD tokens
    power their card and answer a status request on the control pipe (through pyusb)."""
    checked = 0
    for entry in descriptor_corpus["readers"]:
        device = VirtualDevice.from_descriptor_dump(entry)
        backend = VirtualBackend(device)
        dev = usb.core.find(backend=backend)
        for vr in device.readers:
            vr.insert(VirtualCard())
            number = vr.interface_number
            if isinstance(vr, IccdReader):
                if vr.iccd_version == 1:
                    dev.ctrl_transfer(0x21, 0x63, 0, number, None, 1000)
                    atr = bytes(dev.ctrl_transfer(0xA1, 0x62, 0, number, 64, 1000))
                    status = bytes(dev.ctrl_transfer(0xA1, GET_ICC_STATUS, 0, number, 1, 1000))
                    assert atr == VirtualCard().atr and status == b"\x00", entry["file"]
                else:
                    dev.ctrl_transfer(0x21, 0x62, 1, number, None, 1000)
                    got = bytes(dev.ctrl_transfer(0xA1, DATA_BLOCK, 0, number, 64, 1000))
                    assert got == b"\x00" + VirtualCard().atr, entry["file"]
                    status = bytes(dev.ctrl_transfer(0xA1, 0x81, 0, number, 3, 1000))
                    assert status == b"\x40\x00\x00", entry["file"]
            else:
                ep_out = next(a for a, (r, k) in device.endpoints.items()
                              if r is vr and k == "out")
                ep_in = next(a for a, (r, k) in device.endpoints.items()
                             if r is vr and k == "in")
                dev.write(ep_out, bytes.fromhex("65000000000000000000"), 1000)
                reply = bytes(dev.read(ep_in, 64, 1000))
                assert reply[0] == 0x81 and reply[7] & 0x03 == 0x01, entry["file"]
            checked += 1
        usb.util.dispose_resources(dev)
    assert checked == descriptor_corpus["interface_dumps_total"] == 773


def test_class_ff_iccd_tokens_are_driven_over_control(descriptor_corpus: dict[str, Any]
                                                      ) -> None:
    for file in ("e-gate.txt", "Oberthur-CosmoCard.txt"):
        entry = next(e for e in descriptor_corpus["readers"] if e["file"] == file)
        device = VirtualDevice.from_descriptor_dump(entry)
        (vr,) = device.readers
        assert vr.interface_class == 0xFF
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (info,) = ccid.list_readers(VirtualBackend(device))
        assert info.slots == 1


@pytest.mark.parametrize("name", sorted(ICCD_PRESETS))
def test_embedded_iccd_preset_equals_its_corpus_dump(name: str,
                                                     descriptor_corpus: dict[str, Any]) -> None:
    embedded = preset_dump(name)
    entry = next(e for e in descriptor_corpus["readers"] if e["file"] == embedded["file"])
    dump = entry["interfaces"][0]
    for key, value in embedded.items():
        if key != "file":
            assert dump[key] == value, (name, key)
    assert is_iccd_dump(embedded)
