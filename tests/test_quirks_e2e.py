"""Every quirk end to end: a virtual copy of the real reader reproduces the firmware bug;
``ccid.open_reader(..., quirks=True)`` works around it and ``quirks=False`` fails the way
the bug makes it fail.

One scenario per quirk id, registered in ``SCENARIOS``; ``test_every_quirk_has_a_scenario``
fails when a quirk lands in ``ccid.quirks.QUIRKS`` without one. The Gemalto CT700 whose
firmware never answers the display-prompt escape (it opens with a warning, leaves nothing
behind, and a second reader opens after it) is covered by
``tests/test_reader_open.py::test_ct700_opens_with_a_warning_then_a_second_reader_opens``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest

import ccid
from ccid.constants import ExchangeLevel, MessageType, SlotErrorCode
from ccid.errors import (
    CardError,
    ProtocolError,
    ReaderError,
    ReaderTimeoutError,
    SlotError,
    UnsupportedReaderError,
    UsageError,
)
from ccid.quirks import QUIRKS, gemalto
from ccid.quirks.generic import OPENPGP_BWI, with_exchange_level
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing.apps import PIN, FileSystem
from ccid.testing.faults import (
    ChainByte,
    NoAnswer,
    Refuse,
    RefuseUntilEscape,
    SlowCard,
    WrongSlot,
)
from ccid.testing.reader import PinEntry, VirtualReader

M = MessageType
#: Quirks the database builds from its own data (not in the QUIRKS registry).
PARAMETERISED = ("minimum-firmware",)

SELECT_MF = bytes.fromhex("00A4000C023F00")
SELECT_EF_0001 = bytes.fromhex("00A4020C020001")
READ_256 = bytes.fromhex("00B0000000")
SELECT_DF_5000 = bytes.fromhex("00A4000C025000")
#: READ BINARY of 1,024 bytes by SFI 1 (EF 5001), extended Le.
READ_1K_EXTENDED = bytes.fromhex("00B0810000" "0400")
VERIFY_HEADER = bytes.fromhex("00200080")
#: A PIV-style PIN: ASCII digits padded with FF to the 8-byte block a pinpad fills.
PADDED_PIN = b"1234" + b"\xff" * 4
FILE_0001 = bytes(range(256))


def padded_pin_card(**kw: Any) -> VirtualCard:
    return VirtualCard(app=FileSystem(pins={0x80: PIN(PADDED_PIN)}), **kw)


@contextmanager
def opened(vr: VirtualReader | VirtualBackend, quirks: bool, selector: int = 0,
           **options: Any) -> Iterator[ccid.Reader]:
    """The virtual reader (or a backend's reader ``selector``) opened through pyusb, quirks
    on or off."""
    options.setdefault("events", False)
    backend = vr if isinstance(vr, VirtualBackend) else VirtualBackend(vr)
    with warnings.catch_warnings():
        # Workarounds warn (reader.warnings keeps the text for the assertions).
        warnings.simplefilter("ignore", RuntimeWarning)
        reader = ccid.open_reader(selector, backend=backend, quirks=quirks, **options)
        try:
            yield reader
        finally:
            reader.close()


def quirk_ids(reader: ccid.Reader) -> list[str]:
    return [q.id for q in reader.quirks]


def in_parallel(make: Callable[[], VirtualReader],
                scenario: Callable[[ccid.Reader, VirtualReader, bool], None]) -> None:
    """Run a scenario that has to wait (real time) with and without quirks at once, on two
    copies of the reader plugged in side by side."""
    copies = {True: make(), False: make()}
    backend = VirtualBackend(copies[True], copies[False])

    def run(quirks: bool) -> None:
        with opened(backend, quirks, 0 if quirks else 1) as reader:
            scenario(reader, copies[quirks], quirks)

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(run, on) for on in (True, False)]:
            future.result()


SCENARIOS: dict[str, Callable[[], None]] = {}


def scenario(*ids: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(func: Callable[[], None]) -> Callable[[], None]:
        for quirk_id in ids:
            assert quirk_id not in SCENARIOS, quirk_id
            SCENARIOS[quirk_id] = func
        return func
    return register


# --- Gemalto ---------------------------------------------------------------------------


def gemalto_firmware(vr: VirtualReader, features: bytes | None) -> Callable[[bytes], bytes | int]:
    """Escape handler of a Gemalto pinpad firmware: loads display prompts into RAM and,
    when ``features`` is given, answers GET_FIRMWARE_FEATURES."""

    def handle(payload: bytes) -> bytes | int:
        if payload.startswith(bytes.fromhex("B2A0004D4C")):
            body = payload[5:]
            vr.prompts = [body[i : i + 16].decode("ascii").rstrip()
                          for i in range(0, len(body), 16)]
            return b""
        if payload == gemalto.GET_FIRMWARE_FEATURES and features is not None:
            return features
        return SlotErrorCode.CMD_NOT_SUPPORTED

    return handle


def features_answer(*, min_pin: int, max_pin: int) -> bytes:
    data = bytearray(gemalto.FIRMWARE_FEATURES_LENGTH)
    data[3] = 0x02  # validation key
    data[4] = 0x60  # verify / modify PIN direct
    data[12], data[13], data[14] = 1, min_pin, max_pin
    return bytes(data)


def ct700(features: bytes | None = None, **kw: Any) -> VirtualReader:
    vr = VirtualReader.from_database("08E6:3478", pin_entry=PinEntry("1234"), **kw)
    vr.escape_handler = gemalto_firmware(vr, features)
    vr.insert(padded_pin_card(protocols=(0,)))
    return vr


@scenario("gemalto-pinpad-strings")
def pinpad_prompts_live_in_ram() -> None:
    # Bug: the pinpad's prompts are in RAM, empty after plug-in; the host must load them.
    vr = ct700()
    with opened(vr, True) as reader, reader.connect() as card:
        assert "gemalto-pinpad-strings" in quirk_ids(reader)
        assert card.verify_pin(VERIFY_HEADER) == b"\x90\x00"
    assert vr.displayed == [["Enter PIN"]]
    assert vr.prompts is not None and vr.prompts[4] == "Incorrect PIN!"

    vr = ct700()
    with opened(vr, False) as reader, reader.connect() as card:
        assert card.verify_pin(VERIFY_HEADER) == b"\x90\x00"
    assert vr.escapes_seen == []
    assert vr.displayed == [[""]]  # the user is asked for the PIN by a blank display


@scenario("gemalto-firmware-features")
def pinpad_sizes_come_from_the_firmware() -> None:
    # Bug: the descriptor cannot say which PIN sizes the pinpad takes; this firmware takes
    # 4 to 6 digits and refuses a structure asking for more (bError: wPINMaxExtraDigit).
    answer = features_answer(min_pin=4, max_pin=6)
    vr = ct700(answer, pin_sizes=(4, 6))
    with opened(vr, True) as reader, reader.connect() as card:
        features = reader.firmware_features
        assert isinstance(features, gemalto.FirmwareFeatures)
        assert (features.min_pin_size, features.max_pin_size) == (4, 6)
        assert card.verify_pin(VERIFY_HEADER) == b"\x90\x00"

    vr = ct700(answer, pin_sizes=(4, 6))
    with opened(vr, False) as reader, reader.connect() as card:
        assert reader.firmware_features is None
        with pytest.raises(SlotError) as caught:
            card.verify_pin(VERIFY_HEADER)
    assert caught.value.bError == 15  # offset of wPINMaxExtraDigit in PC_to_RDR_Secure
    assert vr.displayed == []  # refused before the user was asked anything


@scenario("gemalto-emv-to-iso-mode")
def emv_mode_refuses_power_on() -> None:
    # Bug: in EMV mode the GemPC433-Swap refuses some cards' power-on with bError 0xBB
    # until the ISO-mode escape 1F 01 arrives.
    def reader() -> VirtualReader:
        vr = VirtualReader.from_database("08E6:4433")
        vr.insert(VirtualCard())
        vr.inject(RefuseUntilEscape(commands=frozenset({M.PC_to_RDR_IccPowerOn})))
        return vr

    vr = reader()
    with opened(vr, True) as r, r.connect() as card:
        assert "gemalto-emv-to-iso-mode" in quirk_ids(r)
        assert card.transmit(SELECT_MF) == b"\x90\x00"
    assert gemalto.SET_ISO_MODE in vr.escapes_seen

    with opened(reader(), False) as r, pytest.raises(SlotError) as caught:
        r.connect()
    assert caught.value.bError == 0xBB


@scenario("gemcore-secondary-slot-rates")
def gemcore_secondary_slots_are_slower() -> None:
    # Bug: slots 1..4 of the GemCore POS Pro run only 4 rates; the descriptor (dwMaxDataRate
    # 500000) says nothing of it, so a 250 kbps card gets a Fi/Di those slots cannot do.
    def reader() -> VirtualReader:
        slow = dict.fromkeys(range(1, 5), gemalto.GEMCORE_SECONDARY_RATES)
        vr = VirtualReader.from_database("08E6:3479", slot_data_rates=slow)
        vr.insert(VirtualCard(protocols=(0,), fi_di=0x96), slot=0)  # 250,000 bps
        vr.insert(VirtualCard(protocols=(0,), fi_di=0x96), slot=1)
        return vr

    for quirks in (True, False):
        with opened(reader(), quirks) as r, r.connect(0) as card:
            assert card.transmit(SELECT_MF) == b"\x90\x00"  # the primary slot is fine

    with opened(reader(), True) as r, r.connect(1) as card:
        assert r.slot_data_rates[1] == gemalto.GEMCORE_SECONDARY_RATES
        assert card.transmit(SELECT_MF) == b"\x90\x00"  # at 125,000 bps (Fi/Di 0x95)

    with opened(reader(), False) as r, pytest.raises(SlotError) as caught:
        r.connect(1)
    assert caught.value.bError == 0x0A  # SetParameters: bmFindexDindex refused


@scenario("thales-fusion-obkg-time")
def fusion_key_generation_outlasts_bwt() -> None:
    # Bug: on-board key generation on the eToken Fusion takes longer than the card's T=1
    # waiting time says, without time extensions.
    def make() -> VirtualReader:
        vr = VirtualReader.from_database("08E6:34D2")
        vr.insert(VirtualCard(protocols=(1,)))
        return vr

    def run(reader: ccid.Reader, vr: VirtualReader, quirks: bool) -> None:
        with reader.connect() as card:
            vr.inject(SlowCard(commands=frozenset({M.PC_to_RDR_XfrBlock}), delay=3.5))
            if quirks:
                assert "thales-fusion-obkg-time" in quirk_ids(reader)
                assert card.transmit(SELECT_MF) == b"\x90\x00"
            else:
                with pytest.raises(ReaderTimeoutError):
                    card.transmit(SELECT_MF)

    in_parallel(make, run)


# --- exchange level --------------------------------------------------------------------


@scenario("force-extended-apdu")
def declared_short_but_chains() -> None:
    # Bug: the PN7362au declares short APDU level but runs extended APDUs and chains long
    # answers: taken at its word, the host keeps the first part of a 1 KB answer only.
    def reader() -> VirtualReader:
        # Its dumped GET_DATA_RATES answer is 256 junk values, which the model would hold
        # every Fi/Di against: leave the list out (the reader then stalls the request).
        vr = VirtualReader.from_database(
            "2F7C:6007", firmware_level=ExchangeLevel.EXTENDED_APDU, data_rates=())
        vr.insert(VirtualCard())
        return vr

    with opened(reader(), True) as r, r.connect() as card:
        assert r.exchange_level == ExchangeLevel.EXTENDED_APDU
        assert card.transmit(SELECT_DF_5000) == b"\x90\x00"
        answer = card.transmit(READ_1K_EXTENDED)
    assert len(answer) == 1026 and answer[-2:] == b"\x90\x00"
    assert answer[:-2] == bytes(i * 7 & 0xFF for i in range(256)) * 4

    with opened(reader(), False) as r, r.connect() as card:
        assert card.transmit(SELECT_DF_5000) == b"\x90\x00"
        cut = card.transmit(READ_1K_EXTENDED)
    assert len(cut) == 271 - 10 and cut[-2:] != b"\x90\x00"


@scenario("force-short-apdu")
def declared_extended_but_cannot_chain() -> None:
    # Bug: the KOBIL TriBank declares extended APDU level but its firmware does short APDUs
    # only: it fails any chained XfrBlock and leaves garbage in bChainParameter.
    def reader() -> VirtualReader:
        vr = VirtualReader.from_database("0D46:3010", firmware_level=ExchangeLevel.SHORT_APDU)
        vr.insert(VirtualCard())
        vr.inject(ChainByte(commands=frozenset({M.PC_to_RDR_XfrBlock}), count=None))
        return vr

    with opened(reader(), True) as r, r.connect() as card:
        assert r.exchange_level == ExchangeLevel.SHORT_APDU
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        assert card.transmit(READ_256) == FILE_0001 + b"\x90\x00"

    # The host follows the announced chain; the firmware refuses the continuation.
    with opened(reader(), False) as r, r.connect() as card, \
            pytest.raises(SlotError) as caught:
        card.transmit(SELECT_EF_0001)
    assert caught.value.bError == 8  # wLevelParameter


def chaining_token(reader_id: str, chunk: int, **kw: Any) -> VirtualReader:
    vr = VirtualReader.from_database(
        reader_id, firmware_level=ExchangeLevel.EXTENDED_APDU, response_chunk=chunk, **kw)
    vr.insert(VirtualCard(protocols=(1,)))
    return vr


@scenario("short-apdu-chaining")
def kc1000_chains_long_t1_answers() -> None:
    # Bug: the Cherry KC 1000 SC firmware 1.00 declares short APDU level but answers long
    # T=1 responses in chained 128-byte parts.
    def reader() -> VirtualReader:
        vr = chaining_token("046A:00A1", 128, bcd_device=0x0100)
        vr.descriptor = with_exchange_level(vr.descriptor, ExchangeLevel.SHORT_APDU)
        return vr

    with opened(reader(), True) as r, r.connect() as card:
        assert "short-apdu-chaining" in quirk_ids(r)
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        assert card.transmit(READ_256) == FILE_0001 + b"\x90\x00"

    with opened(reader(), False) as r, r.connect() as card:
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        assert card.transmit(READ_256) == FILE_0001[:128]  # first part, no status word


@scenario("iccd-b-extended-apdu")
def iccd_b_token_chains() -> None:
    # Bug: ICCD version B tokens declare short APDU level and chain their responses. The
    # transport drives bulk pipes only (ICCD-B's control pipe is not implemented), so the
    # real token's descriptor is served on a vendor-class interface with bulk endpoints;
    # bInterfaceProtocol 2 stays, and that is what the quirk matches on.
    def reader() -> VirtualReader:
        return chaining_token("1059:000C", 64, interface_class=0xFF)

    with opened(reader(), True) as r, r.connect() as card:
        assert r.interface_protocol == 2 and "iccd-b-extended-apdu" in quirk_ids(r)
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        assert card.transmit(READ_256) == FILE_0001 + b"\x90\x00"

    with opened(reader(), False) as r, r.connect() as card:
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        assert card.transmit(READ_256) == FILE_0001[:64]


# --- pinpads ---------------------------------------------------------------------------


@scenario("no-pinpad")
def pinpad_announced_but_absent() -> None:
    # Bug: the C3PO LTC31 v2 declares PIN verify/modify (bPINSupport 3) it does not do.
    def reader() -> VirtualReader:
        vr = VirtualReader.from_database("0783:0006", pin_entry=PinEntry("1234"))
        vr.insert(padded_pin_card(protocols=(0,)))
        vr.inject(Refuse(commands=frozenset({M.PC_to_RDR_Secure}), count=None,
                         error=SlotErrorCode.CMD_NOT_SUPPORTED))
        return vr

    with opened(reader(), True) as r, r.connect() as card:
        assert not r.pin_support
        with pytest.raises(UsageError, match="no-pinpad"):
            card.verify_pin(VERIFY_HEADER)
        # The application falls back to a PIN typed on the host.
        assert card.transmit(VERIFY_HEADER + b"\x08" + PADDED_PIN) == b"\x90\x00"

    with opened(reader(), False) as r, r.connect() as card:
        assert r.pin_support == 3
        with pytest.raises(SlotError) as caught:
            card.verify_pin(VERIFY_HEADER)
    assert caught.value.bError == SlotErrorCode.CMD_NOT_SUPPORTED


# --- T=1 parameters --------------------------------------------------------------------


@scenario("mysmartpad-ifsd-254")
def mysmartpad_declares_ifsd_0() -> None:
    # Bug: the MySmartPad declares dwMaxIFSD 0. Trusted, it leaves no room for an IFSD
    # request (IFSD 0 is invalid), so the link stays at IFSD 32: long answers arrive in
    # 32-byte blocks, one command each.
    counts: dict[bool, int] = {}
    for quirks in (True, False):
        vr = VirtualReader.from_database("09BE:0002")
        # The dump also declares no voltage class, dwProtocols 0x0300 and a 1,024 MHz
        # clock, which the model would hold against IccPowerOn and SetParameters: give it
        # usual values (the host copes with those fields on its own).
        vr.descriptor = replace(vr.descriptor, bVoltageSupport=0x01, dwProtocols=0x03,
                                dwDefaultClock=4000, dwMaximumClock=4000)
        vr.insert(VirtualCard(protocols=(1,)))
        with opened(vr, quirks) as r, r.connect() as card:
            assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
            before = vr.commands_seen
            assert card.transmit(READ_256) == FILE_0001 + b"\x90\x00"
            counts[quirks] = vr.commands_seen - before
            assert r.descriptor.dwMaxIFSD == (254 if quirks else 0)
    assert counts[True] <= 3 and counts[False] >= 9


@scenario("etoken-no-ifsd")
def etoken_hangs_on_ifs_request() -> None:
    # Bug: SafeNet eToken 5100 firmware 0.12/0.13 never answers a T=1 S(IFS request).
    def reader() -> VirtualReader:
        vr = VirtualReader.from_database("0529:0620", bcd_device=0x0013)
        vr.insert(VirtualCard(protocols=(1,)))
        vr.inject(NoAnswer(commands=frozenset({M.PC_to_RDR_XfrBlock}), prefix=b"\x00\xc1",
                           count=None))
        return vr

    with opened(reader(), True) as r, r.connect() as card:
        assert "etoken-no-ifsd" in quirk_ids(r)
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        assert card.transmit(READ_256) == FILE_0001 + b"\x90\x00"

    with opened(reader(), False) as r, pytest.raises(ReaderTimeoutError):
        r.connect(timeout=1.0)


@scenario("openpgp-card-bwi")
def openpgp_key_generation_outlasts_bwi_4() -> None:
    # Bug: the OpenPGP card's ATR asks for BWI 4 (about 1.4 s) but on-board key generation
    # takes longer; a reader enforcing the BWT declares the card mute. Matched on the ATR,
    # with any reader (here a GemPC Twin).
    atr = bytes.fromhex("3BFA1300FF813180450031C173C00100009000B1")

    def make() -> VirtualReader:
        vr = VirtualReader.from_database("08E6:3437", enforce_bwt=True)
        vr.insert(VirtualCard(atr=atr))
        return vr

    def run(reader: ccid.Reader, vr: VirtualReader, quirks: bool) -> None:
        with reader.connect() as handle:
            assert handle.protocol == "T=1"
            assert vr.slots[0].waiting >> 4 == (OPENPGP_BWI if quirks else 4)
            vr.card().faults.slow(2.0)  # every exchange takes 2 s while the key is made
            if quirks:
                assert handle.transmit(SELECT_MF) == b"\x90\x00"
            else:
                with pytest.raises((CardError, ProtocolError)):
                    handle.transmit(SELECT_MF)

    in_parallel(make, run)


# --- data rates and PPS ----------------------------------------------------------------


@scenario("oz776-9600-no-pps")
def oz776_goes_mute_on_pps() -> None:
    # Bug: the O2Micro OZ776 cannot do PPS: it stops answering when the host sends one
    # (here: to select T=1 on a card that starts in T=0).
    def reader(level: ExchangeLevel = ExchangeLevel.TPDU) -> VirtualReader:
        # Its dumped GET_DATA_RATES answer (9600 only) does not hold Fi/Di 0x11 at its
        # 4 MHz clock (10,752 bps), which the model would refuse: no list. The OZ776
        # declares character-level exchanges (dwFeatures 0x30), which connect refuses; the
        # PPS hook is shown on the same reader declaring TPDU exchanges.
        vr = VirtualReader.from_database("0B97:7762", data_rates=())
        vr.descriptor = with_exchange_level(vr.descriptor, level)
        vr.insert(VirtualCard(protocols=(0, 1)))
        vr.inject(NoAnswer(commands=frozenset({M.PC_to_RDR_XfrBlock}), prefix=b"\xff",
                           count=None))
        return vr

    with opened(reader(), True) as r:
        assert r.descriptor.dwMaxDataRate == 9600
        with pytest.raises(CardError, match="oz776-9600-no-pps") as refused:
            r.connect(protocol="T=1")
        assert refused.value.pcsc_code == "SCARD_E_PROTO_MISMATCH"
        with r.connect() as card:  # the card's own protocol needs no PPS
            assert card.protocol == "T=0" and card.atr is not None

    with opened(reader(), False) as r, pytest.raises(ReaderTimeoutError):
        r.connect(protocol="T=1", timeout=1.0)

    with opened(reader(ExchangeLevel.CHARACTER), True) as r:
        assert r.descriptor.dwMaxDataRate == 9600
        with pytest.raises(UnsupportedReaderError, match="character"):
            r.connect()


@scenario("au9540-rates")
def au9540_fast_rates_fail() -> None:
    # Bug: the Alcor AU9540 lists rates up to 318,280 bps, but exchanges above 200,000 fail;
    # and some firmware refuses SetParameters although the link works at its defaults.
    def reader() -> VirtualReader:
        vr = VirtualReader.from_database("058F:9540", max_working_rate=200000)
        vr.insert(VirtualCard(fi_di=0x16))  # 318,280 bps at the reader's 3.7 MHz
        return vr

    with opened(reader(), True) as r, r.connect() as card:
        assert max(r.data_rates) <= 200000
        assert card.transmit(SELECT_MF) == b"\x90\x00"
    with opened(reader(), False) as r, r.connect() as card, \
            pytest.raises(SlotError) as caught:
        card.transmit(SELECT_MF)
    assert caught.value.bError == SlotErrorCode.XFR_PARITY_ERROR

    refusing = [reader(), reader()]
    for vr in refusing:
        vr.inject(Refuse(commands=frozenset({M.PC_to_RDR_SetParameters}), error=0x0A))
    with opened(refusing[0], True) as r, r.connect() as card:
        assert any("SetParameters failed" in w for w in r.warnings)
        assert card.transmit(SELECT_MF) == b"\x90\x00"
    with opened(refusing[1], False) as r, pytest.raises(SlotError) as caught:
        r.connect()
    assert caught.value.bError == 0x0A


@scenario("scm-max-message-263")
def scm_declares_263() -> None:
    # Bug: the HP keyboard's SCM chip declares dwMaxCCIDMessageLength 263 but takes (and
    # sends) the 270-byte messages of full-length short APDUs.
    def reader() -> VirtualReader:
        vr = VirtualReader.from_database("03F0:1024", firmware_max_message=271)
        vr.insert(VirtualCard(protocols=(0,)))
        return vr

    update = bytes.fromhex("00D60000FF") + bytes(255)
    with opened(reader(), True) as r, r.connect() as card:
        assert r.descriptor.dwMaxCCIDMessageLength == 271
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        assert card.transmit(READ_256) == FILE_0001 + b"\x90\x00"
        assert card.transmit(update) == b"\x90\x00"

    with opened(reader(), False) as r, r.connect() as card:
        assert card.transmit(SELECT_EF_0001) == b"\x90\x00"
        with pytest.raises(ProtocolError, match="dwMaxCCIDMessageLength"):
            card.transmit(READ_256)
        with pytest.raises((UsageError, ReaderError), match="263"):
            card.transmit(update)


# --- opening ---------------------------------------------------------------------------

SLOW_READERS = {"slow-open-x4": ("04E6:5293", 4), "slow-open-x10": ("072F:2200", 10),
                "slow-open-x20": ("0B81:0200", 20)}
#: open_timeout used here: the quirk multiplies it for the open only.
OPEN_WAIT = 0.15


def slow_open(quirk_id: str) -> None:
    # Bug: right after plug-in the reader answers GetSlotStatus late: here twice the
    # normal wait, half of what the smallest factor (x4) allows.
    reader_id, factor = SLOW_READERS[quirk_id]

    def reader() -> VirtualReader:
        vr = VirtualReader.from_database(reader_id)
        vr.inject(SlowCard(commands=frozenset({M.PC_to_RDR_GetSlotStatus}),
                           delay=OPEN_WAIT * 2))
        return vr

    with opened(reader(), True, open_timeout=OPEN_WAIT) as r:
        assert quirk_id in quirk_ids(r)
        assert r.quirks[[q.id for q in r.quirks].index(quirk_id)].open_timeout(1.0) == factor
        assert r.slot_status() is not None  # later commands use the normal timeouts
    vr = reader()
    backend = VirtualBackend(vr)
    with pytest.raises(ReaderTimeoutError):
        ccid.open_reader(backend=backend, quirks=False, events=False,
                         open_timeout=OPEN_WAIT)
    assert not backend.devices[0].claims  # the failed open left nothing behind


def _slow_open_scenario(quirk_id: str) -> Callable[[], None]:
    return lambda: slow_open(quirk_id)


for _quirk_id in SLOW_READERS:
    scenario(_quirk_id)(_slow_open_scenario(_quirk_id))


@scenario("minimum-firmware")
def known_bad_firmware() -> None:
    # Bug: ACR122U firmware before 2.06 is broken; modelled as replies for a wrong slot.
    def reader() -> VirtualReader:
        vr = VirtualReader.from_database("072F:2200", bcd_device=0x0205)
        vr.insert(VirtualCard())
        vr.inject(WrongSlot(commands=frozenset({M.PC_to_RDR_XfrBlock}), count=None))
        return vr

    backend = VirtualBackend(reader())
    with pytest.raises(UnsupportedReaderError, match=r"2\.05.*upgrade.*2\.06"):
        ccid.open_reader(backend=backend, events=False)
    assert not backend.devices[0].claims
    with opened(reader(), True, allow_bad_firmware=True) as r:
        assert any("2.05" in w for w in r.warnings)

    with opened(reader(), False) as r, r.connect() as card, pytest.raises(ProtocolError):
        card.transmit(SELECT_MF)  # the user meets the firmware bug instead


# --- the registry ----------------------------------------------------------------------


def test_every_quirk_has_a_scenario() -> None:
    missing = sorted({*QUIRKS, *PARAMETERISED} - set(SCENARIOS))
    assert not missing, f"quirks without an end-to-end scenario in this file: {missing}"


@pytest.mark.parametrize("quirk_id", sorted({*QUIRKS, *PARAMETERISED}))
def test_quirk_end_to_end(quirk_id: str) -> None:
    run = SCENARIOS.get(quirk_id)
    assert run is not None, f"quirk {quirk_id!r} has no end-to-end scenario"
    run()


def test_no_scenario_for_an_unknown_quirk() -> None:
    assert set(SCENARIOS) <= {*QUIRKS, *PARAMETERISED}
