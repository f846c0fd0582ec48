"""The virtual reader's CCID behaviour, through plain pyusb with CCID bytes only."""

from __future__ import annotations

import dataclasses
import errno
import threading
from typing import Any

import pytest
import usb.core
import usb.util

from ccid.constants import MessageType as M
from ccid.framing import T1BlockError, build_frame, build_t1_block, check_t1_block, split_extended
from ccid.testing import faults as F
from ccid.testing.backend import VirtualBackend
from ccid.testing.card import VirtualCard
from ccid.testing.presets import PRESETS, preset, preset_reader
from ccid.testing.reader import PinEntry, VirtualReader

pytestmark = pytest.mark.timeout(60)


class Link:
    """Plain pyusb access to one CCID interface (test scaffolding, no library code)."""

    def __init__(self, backend: VirtualBackend) -> None:
        self.dev: Any = usb.core.find(backend=backend)
        self.dev.set_configuration()
        intf = self.dev.get_active_configuration()[(0, 0)]
        usb.util.claim_interface(self.dev, intf.bInterfaceNumber)
        eps = {(usb.util.endpoint_direction(e.bEndpointAddress),
                usb.util.endpoint_type(e.bmAttributes)): e for e in intf}
        self.out = eps[(usb.util.ENDPOINT_OUT, usb.util.ENDPOINT_TYPE_BULK)]
        self.inp = eps[(usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_BULK)]
        self.intr = eps.get((usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_INTR))
        self.seq = 0

    def send(self, msg_type: int, slot: int = 0, p1: int = 0, p2: int = 0, p3: int = 0,
             payload: bytes = b"", timeout: int = 1000) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) & 0xFF
        self.out.write(build_frame(msg_type, slot, seq, p1, p2, p3, payload), timeout)
        return seq

    def recv(self, timeout: int = 1000) -> bytes:
        return bytes(self.inp.read(70000, timeout))

    def cmd(self, msg_type: int, slot: int = 0, p1: int = 0, p2: int = 0, p3: int = 0,
            payload: bytes = b"") -> bytes:
        seq = self.send(msg_type, slot, p1, p2, p3, payload)
        reply = self.recv()
        assert reply[6] == seq
        return reply

    def power_on(self, slot: int = 0, select: int = 1) -> bytes:
        return self.cmd(M.PC_to_RDR_IccPowerOn, slot, select)

    def xfr(self, data: bytes, slot: int = 0, level: int = 0) -> bytes:
        return self.cmd(M.PC_to_RDR_XfrBlock, slot, 0, level & 0xFF, level >> 8, data)


def status(reply: bytes) -> tuple[int, int, int]:
    """(bmCommandStatus, bmICCStatus, bError)."""
    return reply[7] >> 6, reply[7] & 0x03, reply[8]


ECHO3 = bytes.fromhex("80100000030102030000")[:-1]  # echo 01 02 03, Le 00


# --- slot status, power ----------------------------------------------------------------------


def test_ct700_opening_trace(ct700_vectors: dict[str, Any]) -> None:
    vb = preset("ct700", card=None)
    link = Link(vb)
    hexb = bytes.fromhex
    assert link.intr is not None
    assert bytes(link.intr.read(8, 100)) == hexb(ct700_vectors["notify_slot_change"]["hex"])
    for n in (0, 1):
        link.out.write(hexb(ct700_vectors[f"get_slot_status_seq{n}"]["hex"]))
        assert link.recv() == hexb(ct700_vectors[f"slot_status_seq{n}"]["hex"])
    rates = bytes(link.dev.ctrl_transfer(0xA1, 0x03, 0, 0, 1024))
    assert rates == hexb(ct700_vectors["get_data_rates_response"]["hex"])
    link.out.write(hexb(ct700_vectors["escape_l10n_strings"]["hex"]))
    with pytest.raises(usb.core.USBTimeoutError):
        link.recv(timeout=50)
    with pytest.raises(usb.core.USBTimeoutError):
        link.out.write(hexb(ct700_vectors["escape_get_firmware_features"]["hex"]), 50)


def test_power_on_warm_reset_power_off() -> None:
    card = VirtualCard()
    link = Link(preset("gemalto-pc-twin", card=card))
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus)) == (0, 1, 0)
    atr = link.power_on()
    assert atr[0] == 0x80 and status(atr) == (0, 0, 0) and atr[10:] == card.atr
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus)) == (0, 0, 0)
    resets = card.resets
    warm = link.power_on()
    assert status(warm) == (0, 0, 0) and card.resets == resets + 1
    off = link.cmd(M.PC_to_RDR_IccPowerOff)
    assert off[0] == 0x81 and status(off) == (0, 1, 0) and not card.powered


def test_no_card_and_mute_card() -> None:
    vb = preset("gemalto-pc-twin", card=None)
    link = Link(vb)
    assert status(link.power_on()) == (1, 2, 0xFE)
    card = VirtualCard()
    card.faults.mute()
    vb.readers[0].insert(card)
    assert status(link.power_on()) == (1, 1, 0xFE)


def test_voltage_selection() -> None:
    card = VirtualCard(voltages=VirtualCard().voltages & 0x04)  # 1.8 V only
    link = Link(preset("gemalto-pc-twin", card=card))
    assert status(link.power_on(select=1)) == (1, 1, 0xFE)  # 5 V: the card stays mute
    assert status(link.power_on(select=3)) == (0, 0, 0)
    assert status(link.power_on(select=4)) == (1, 0, 7)
    # 3 V-only reader: 5 V is refused by the reader itself
    two = Link(preset("two-slot"))
    assert status(two.power_on(select=1)) == (1, 1, 7)
    assert status(two.power_on(select=2)) == (0, 0, 0)


def test_auto_voltage() -> None:
    reader = preset_reader("short-apdu", card=VirtualCard())
    assert reader.descriptor.dwFeatures & 0x08
    link = Link(VirtualBackend(reader))
    assert status(link.power_on(select=0)) == (0, 0, 0)
    twin = Link(preset("gemalto-pc-twin"))
    assert status(twin.power_on(select=0)) == (1, 1, 7)  # no automatic voltage: refused


# --- errors every command gets -------------------------------------------------------------


def test_unknown_command_and_bad_slot() -> None:
    link = Link(preset("gemalto-pc-twin"))
    reply = link.cmd(0x60)
    assert reply[0] == 0x81 and status(reply) == (1, 1, 0x00)
    bad = link.cmd(M.PC_to_RDR_IccPowerOn, slot=1, p1=1)
    assert bad[0] == 0x80 and bad[5] == 1 and status(bad)[0] == 1 and bad[8] == 0x05


def test_message_too_long() -> None:
    link = Link(preset("gemalto-pc-twin"))
    link.power_on()
    reply = link.xfr(bytes(300))  # 310 > dwMaxCCIDMessageLength 271
    assert status(reply)[0] == 1 and reply[8] == 1
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus)) == (0, 0, 0)


# --- parameters and speed ---------------------------------------------------------------------


T0_PARAMS = bytes((0x11, 0x00, 0x00, 0x0A, 0x00))


def test_get_set_reset_parameters() -> None:
    link = Link(preset("gemalto-pc-twin"))
    link.power_on()
    got = link.cmd(M.PC_to_RDR_GetParameters)
    assert got[0] == 0x82 and got[9] == 0 and got[10:] == T0_PARAMS
    t1 = bytes((0x11, 0x10, 0x00, 0x45, 0x00, 0xFE, 0x00))
    reply = link.cmd(M.PC_to_RDR_SetParameters, p1=1, payload=t1)
    assert status(reply)[0] == 0 and reply[9] == 1 and reply[10:] == t1
    reset = link.cmd(M.PC_to_RDR_ResetParameters)
    assert reset[9] == 0 and reset[10:] == T0_PARAMS


@pytest.mark.parametrize(("proto", "data", "offset"), [
    (2, T0_PARAMS, 7),  # bProtocolNum
    (0, T0_PARAMS + b"\x00", 1),  # dwLength
    (0, bytes((0x71, 0, 0, 0x0A, 0)), 10),  # Fi index 7 is RFU
    (0, bytes((0x97, 0, 0, 0x0A, 0)), 10),  # 500 kbps: not in the reader's list
    (0, bytes((0x11, 0x05, 0, 0x0A, 0)), 11),  # bmTCCKST0
    (1, bytes((0x11, 0x10, 0, 0xA5, 0, 0xFE, 0)), 13),  # BWI 10
    (1, bytes((0x11, 0x10, 0, 0x45, 0, 0x00, 0)), 15),  # IFSC 0
])
def test_set_parameters_offset_of_bad_byte(proto: int, data: bytes, offset: int) -> None:
    link = Link(preset("gemalto-pc-twin"))
    link.power_on()
    reply = link.cmd(M.PC_to_RDR_SetParameters, p1=proto, payload=data)
    assert reply[0] == 0x82 and status(reply)[0] == 1 and reply[8] == offset


def test_host_must_do_pps_when_reader_does_not() -> None:
    card = VirtualCard(fi_di=0x95)
    link = Link(preset("gemalto-pc-twin", card=card))
    link.power_on()
    # SetParameters alone: the reader now talks at 125 kbps, the card still at 10.7 kbps
    fast = bytes((0x95, 0x00, 0x00, 0x0A, 0x00))
    assert status(link.cmd(M.PC_to_RDR_SetParameters, p1=0, payload=fast))[0] == 0
    assert status(link.xfr(bytes.fromhex("00A4040000")))[2] == 0xFD
    # a PPS is only possible right after the ATR
    link.power_on()
    pps = bytes((0xFF, 0x10, 0x95, 0xFF ^ 0x10 ^ 0x95))
    reply = link.xfr(pps)
    assert status(reply) == (0, 0, 0) and reply[10:] == pps
    assert status(link.cmd(M.PC_to_RDR_SetParameters, p1=0, payload=fast))[0] == 0
    answer = link.xfr(bytes.fromhex("00A4040000"))
    assert status(answer)[0] == 0 and len(answer) > 10
    late = link.xfr(pps)
    assert status(late)[2] == 0xFE


def test_reader_with_automatic_pps() -> None:
    twin = preset_reader("gemalto-pc-twin", card=None)
    descriptor = dataclasses.replace(twin.descriptor, dwFeatures=0x000100B0)
    reader = VirtualReader(descriptor, data_rates=twin.data_rates)
    reader.insert(VirtualCard(fi_di=0x95))
    link = Link(VirtualBackend(reader))
    link.power_on()
    fast = bytes((0x95, 0x00, 0x00, 0x0A, 0x00))
    assert status(link.cmd(M.PC_to_RDR_SetParameters, p1=0, payload=fast))[0] == 0
    assert status(link.xfr(bytes.fromhex("00A4040000")))[0] == 0


def test_set_data_rate_and_clock_answers_what_it_applied() -> None:
    link = Link(preset("extended-apdu"))
    want = (5000).to_bytes(4, "little") + (130000).to_bytes(4, "little")
    reply = link.cmd(M.PC_to_RDR_SetDataRateAndClockFrequency, payload=want)
    assert reply[0] == 0x84 and status(reply)[0] == 0
    assert int.from_bytes(reply[10:14], "little") == 4800
    assert int.from_bytes(reply[14:18], "little") == 129032
    bad = link.cmd(M.PC_to_RDR_SetDataRateAndClockFrequency, payload=want[:4])
    assert bad[8] == 1


# --- exchange levels --------------------------------------------------------------------------


def test_tpdu_t0_exchange() -> None:
    link = Link(preset("gemalto-pc-twin"))
    link.power_on()
    reply = link.xfr(bytes.fromhex("8010000003010203"))  # case 3 TPDU: 61xx follows
    assert reply[-2] == 0x61
    data = link.xfr(bytes((0x80, 0xC0, 0, 0, reply[-1])))
    assert data[10:] == b"\x01\x02\x03\x90\x00"


def test_tpdu_t1_blocks_and_card_faults() -> None:
    card = VirtualCard()
    link = Link(preset("gemalto-pc-twin", card=card))
    link.power_on()
    t1 = bytes((0x11, 0x10, 0x00, 0x45, 0x00, 0xFE, 0x00))
    link.cmd(M.PC_to_RDR_SetParameters, p1=1, payload=t1)
    reply = link.xfr(build_t1_block(0, 0x00, ECHO3, crc=False))
    _nad, pcb, inf = check_t1_block(reply[10:], crc=False)
    assert pcb & 0x80 == 0 and inf == b"\x01\x02\x03\x90\x00"
    card.faults.t1_bad_edc(1)
    bad = link.xfr(build_t1_block(0, 0x40, ECHO3, crc=False))
    with pytest.raises(T1BlockError):
        check_t1_block(bad[10:], crc=False)
    card.faults.t1_lose(1)
    assert status(link.xfr(build_t1_block(0, 0x40, ECHO3, crc=False)))[2] == 0xFE


def test_short_apdu_level() -> None:
    link = Link(preset("short-apdu"))
    link.power_on(select=0)
    assert link.xfr(ECHO3)[10:] == b"\x01\x02\x03\x90\x00"
    extended = bytes.fromhex("80100000000003010203") + b"\x00\x00"
    assert status(link.xfr(extended))[2] == 1


def test_character_level_not_supported() -> None:
    twin = preset_reader("gemalto-pc-twin", card=None)
    reader = VirtualReader(dataclasses.replace(twin.descriptor, dwFeatures=0x00000230))
    reader.insert(VirtualCard())
    link = Link(VirtualBackend(reader))
    link.power_on()
    assert status(link.xfr(bytes.fromhex("00A4040000"))) == (1, 0, 0x00)


def test_extended_apdu_chaining_both_ways() -> None:
    link = Link(preset("extended-apdu"))
    link.power_on(select=0)
    data = bytes(i & 0xFF for i in range(600))
    apdu = bytes.fromhex("8010000000") + len(data).to_bytes(2, "big") + data + b"\x00\x00"
    piece = 272 - 10
    parts = split_extended(apdu, piece)
    assert [p[0] for p in parts] == [1, 3, 2]
    for level, part in parts[:-1]:
        reply = link.xfr(part, level=level)
        assert status(reply)[0] == 0 and reply[9] == 0x10 and reply[10:] == b""
    level, part = parts[-1]
    reply = link.xfr(part, level=level)
    pieces = [(reply[9], reply[10:])]
    while pieces[-1][0] in (0x01, 0x03):
        reply = link.xfr(b"", level=0x10)
        pieces.append((reply[9], reply[10:]))
    assert [c for c, _ in pieces] == [0x01, 0x03, 0x02]
    assert b"".join(p for _, p in pieces) == data + b"\x90\x00"
    assert status(link.xfr(b"", level=0x10))[2] == 8  # nothing left to continue
    assert status(link.xfr(part, level=0x02))[2] == 8  # end of a chain never begun


def test_card_time_extension_relayed_at_apdu_level() -> None:
    card = VirtualCard()
    link = Link(preset("short-apdu", card=card))
    link.power_on(select=0)
    card.faults.wtx(2, multiplier=5)
    link.send(M.PC_to_RDR_XfrBlock, payload=ECHO3)
    frames = [link.recv() for _ in range(3)]
    assert [status(f)[0] for f in frames] == [2, 2, 0]
    assert frames[0][8] == 5 and frames[2][10:] == b"\x01\x02\x03\x90\x00"


# --- other commands ---------------------------------------------------------------------------


def test_clock_t0apdu_mechanical_escape() -> None:
    link = Link(preset("gemalto-pc-twin"))
    assert status(link.cmd(M.PC_to_RDR_IccClock, p1=1))[2] == 0xFE  # not powered
    link.power_on()
    stopped = link.cmd(M.PC_to_RDR_IccClock, p1=1)
    assert status(stopped)[0] == 0 and stopped[9] == 1
    assert link.cmd(M.PC_to_RDR_IccClock, p1=0)[9] == 0
    assert status(link.cmd(M.PC_to_RDR_T0APDU, p1=1, p2=0xC0))[0:3:2] == (1, 0x00)
    assert status(link.cmd(M.PC_to_RDR_Mechanical, p1=2))[0:3:2] == (1, 0x00)
    escape = link.cmd(M.PC_to_RDR_Escape, payload=b"\x01")
    assert escape[0] == 0x83 and status(escape)[0:3:2] == (1, 0x00)
    apdu_level = Link(preset("short-apdu"))
    assert status(apdu_level.cmd(M.PC_to_RDR_T0APDU, p1=3, p2=0xC0, p3=0xC2))[0] == 0


def test_secure_pin_verify() -> None:
    seen: list[bytes] = []

    def app(apdu: bytes) -> bytes:
        seen.append(apdu)
        return b"\x90\x00"

    reader = preset_reader("ct700", card=VirtualCard(app=app), pin_entry=PinEntry("1234"))
    link = Link(VirtualBackend(reader))
    link.power_on()
    structure = bytes((0x00, 0x00, 0x82, 0x08, 0x00, 0x08, 0x04, 0x02, 0x01, 0x09, 0x04,
                       0x00, 0, 0, 0))
    apdu = bytes.fromhex("0020008008") + b"\xff" * 8
    reply = link.cmd(M.PC_to_RDR_Secure, payload=structure + apdu)
    assert status(reply)[0] == 0 and reply[10:] == b"\x90\x00"
    assert seen[-1] == bytes.fromhex("0020008008") + b"1234" + b"\xff" * 4
    reader.inject(F.PinCancelled())
    assert status(link.cmd(M.PC_to_RDR_Secure, payload=structure + apdu))[2] == 0xEF
    reader.inject(F.PinTimeout())
    assert status(link.cmd(M.PC_to_RDR_Secure, payload=structure + apdu))[2] == 0xF0
    plain = Link(preset("gemalto-pc-twin"))
    plain.power_on()
    assert status(plain.cmd(M.PC_to_RDR_Secure, payload=structure + apdu))[2] == 0x00


# --- slots, busy, interrupt -------------------------------------------------------------------


def test_busy_slots() -> None:
    vb = preset("two-slot")
    reader = vb.readers[0]
    reader.insert(VirtualCard(), 1)
    reader.inject(F.NoAnswer(slot=0))
    link = Link(vb)
    link.send(M.PC_to_RDR_IccPowerOn, 0, 2)
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus, 0))[2] == 0xE0  # same slot
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus, 1))[2] == 0xE0  # 1 busy slot max
    concurrent = preset("two-slot-concurrent")
    concurrent.readers[0].inject(F.NoAnswer(slot=0))
    other = Link(concurrent)
    other.send(M.PC_to_RDR_IccPowerOn, 0, 0)
    assert status(other.cmd(M.PC_to_RDR_GetSlotStatus, 1)) == (0, 2, 0)


def test_slots_have_their_own_state() -> None:
    vb = preset("two-slot-concurrent")
    vb.readers[0].insert(VirtualCard(), 1)
    link = Link(vb)
    assert status(link.power_on(1, 0)) == (0, 0, 0)
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus, 0)) == (0, 1, 0)
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus, 1)) == (0, 0, 0)


def test_notify_slot_change_bits_for_two_slots() -> None:
    vb = preset("two-slot")
    link = Link(vb)
    assert link.intr is not None
    assert bytes(link.intr.read(8, 100)) == b"\x50\x0b"  # slot 0 present, both changed
    vb.readers[0].insert(VirtualCard(), 1)
    assert bytes(link.intr.read(8, 100)) == b"\x50\x0d"
    vb.readers[0].remove(0)
    assert bytes(link.intr.read(8, 100)) == b"\x50\x06"


def test_removal_and_reinsertion_between_polls() -> None:
    vb = preset("gemalto-pc-twin")
    reader = vb.readers[0]
    link = Link(vb)
    link.intr.read(8, 100)
    link.power_on()
    card = reader.remove(0)
    reader.insert(card, 0)
    assert bytes(link.intr.read(8, 100)) == b"\x50\x03"  # one message, changed + present
    with pytest.raises(usb.core.USBTimeoutError):
        link.intr.read(8, 20)
    assert status(link.cmd(M.PC_to_RDR_GetSlotStatus)) == (0, 1, 0)  # present, inactive


def test_hardware_error_on_interrupt() -> None:
    vb = preset("gemalto-pc-twin")
    link = Link(vb)
    link.intr.read(8, 100)
    vb.readers[0].hardware_error(0, 5, 0x01)
    assert bytes(link.intr.read(8, 100)) == b"\x51\x00\x05\x01"


def test_card_removed_in_the_middle_of_an_exchange() -> None:
    vb = preset("gemalto-pc-twin")
    reader = vb.readers[0]
    link = Link(vb)
    link.power_on()
    reader.inject(F.SlowCard(delay=30.0))
    seq = link.send(M.PC_to_RDR_XfrBlock, payload=bytes.fromhex("00A4040000"))
    with pytest.raises(usb.core.USBTimeoutError):
        link.recv(timeout=20)
    reader.remove(0)
    reply = link.recv()
    assert reply[6] == seq and status(reply) == (1, 2, 0xFE)
    reader.insert(VirtualCard())
    link.power_on()
    reader.inject(F.CardRemoved())
    assert status(link.xfr(bytes.fromhex("00A4040000"))) == (1, 2, 0xFE)


# --- reply faults -------------------------------------------------------------------------


def test_time_extensions_before_the_answer() -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(F.TimeExtension(times=2, multiplier=3,
                                         commands=frozenset({M.PC_to_RDR_IccPowerOn})))
    link = Link(vb)
    seq = link.send(M.PC_to_RDR_IccPowerOn, p1=1)
    frames = [link.recv() for _ in range(3)]
    assert all(f[6] == seq for f in frames)
    assert [(status(f)[0], f[8]) for f in frames] == [(2, 3), (2, 3), (0, 0)]


@pytest.mark.parametrize(("fault", "check"), [
    (F.WrongSeq(delta=1), lambda r, seq: r[6] == (seq + 1) & 0xFF),
    (F.WrongSlot(delta=2), lambda r, seq: r[5] == 2),
    (F.WrongType(msg_type=0x80), lambda r, seq: r[0] == 0x80),
    (F.BadLength(delta=7), lambda r, seq: int.from_bytes(r[1:5], "little") == 7),
    (F.Truncate(keep=4), lambda r, seq: r == bytes((0x81, 0, 0, 0))),
    (F.Garbage(data=b"\x01\x02"), lambda r, seq: r == b"\x01\x02"),
])
def test_reply_faults(fault: F.Fault, check: Any) -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(fault)
    link = Link(vb)
    seq = link.send(M.PC_to_RDR_GetSlotStatus)
    assert check(link.recv(), seq)
    assert link.cmd(M.PC_to_RDR_GetSlotStatus)[0] == 0x81  # only once


def test_stale_frame_precedes_the_answer() -> None:
    vb = preset("gemalto-pc-twin")
    link = Link(vb)
    first = link.cmd(M.PC_to_RDR_GetSlotStatus)
    vb.readers[0].inject(F.StaleFrame())
    seq = link.send(M.PC_to_RDR_GetSlotStatus)
    assert link.recv() == first
    assert link.recv()[6] == seq


def test_faults_for_n_commands_and_by_type() -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(F.WrongSeq(count=2, commands=frozenset({M.PC_to_RDR_GetSlotStatus})))
    link = Link(vb)
    for _ in range(2):
        seq = link.send(M.PC_to_RDR_GetSlotStatus)
        assert link.recv()[6] != seq
    assert link.cmd(M.PC_to_RDR_GetParameters)[0] == 0x82
    link.cmd(M.PC_to_RDR_GetSlotStatus)


# --- presets and hot-plug ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_powers_a_card_and_exchanges(name: str) -> None:
    vb = preset(name)
    reader = vb.readers[0]
    link = Link(vb)
    if reader.descriptor.dwFeatures & 0x08:
        select = 0
    else:
        select = next(v for v, bit in ((1, 1), (2, 2), (3, 4))
                      if reader.descriptor.bVoltageSupport & bit)
    atr = link.power_on(select=select)
    assert status(atr) == (0, 0, 0) and atr[10:] == reader.card(0).atr
    if reader.level == 0x00010000:  # TPDU, T=0: case 2 then GET RESPONSE rules
        reply = link.xfr(bytes.fromhex("8012000004"))
        assert reply[10:] == bytes.fromhex("000102039000")
    else:
        assert link.xfr(ECHO3)[10:] == b"\x01\x02\x03\x90\x00"


def test_hot_plug_while_a_program_waits() -> None:
    vb = preset("gemalto-pc-twin")
    first = Link(vb)
    first.intr.read(8, 100)
    errors: list[int] = []

    def waiter() -> None:
        try:
            first.intr.read(8, 0)
        except usb.core.USBError as exc:
            errors.append(exc.errno)

    thread = threading.Thread(target=waiter)
    thread.start()
    second = preset("short-apdu", backend=vb).devices[1]
    assert len(list(usb.core.find(find_all=True, backend=vb))) == 2
    assert (second.vid, second.pid) == (0x072F, 0xB000)
    vb.unplug(vb.devices[0])
    thread.join(10)
    assert errors == [errno.ENODEV]
    assert [d.idProduct for d in usb.core.find(find_all=True, backend=vb)] == [0xB000]


def test_automatic_ifsd_is_sent_by_the_reader() -> None:
    twin = preset_reader("gemalto-pc-twin", card=None)
    reader = VirtualReader(dataclasses.replace(twin.descriptor, dwFeatures=0x00010630),
                           data_rates=twin.data_rates)
    card = VirtualCard()
    reader.insert(card)
    link = Link(VirtualBackend(reader))
    link.power_on()
    t1 = bytes((0x11, 0x10, 0x00, 0x45, 0x00, 0xFE, 0x00))
    assert status(link.cmd(M.PC_to_RDR_SetParameters, p1=1, payload=t1))[0] == 0
    # the card has already seen S(IFS request): our first I-block gets a 100-byte answer
    data = bytes(range(100))
    reply = link.xfr(build_t1_block(0, 0x00, bytes.fromhex("8010000064") + data + b"\x00",
                                    crc=False))
    _nad, pcb, inf = check_t1_block(reply[10:], crc=False)
    assert pcb & 0x20 == 0 and inf == data + b"\x90\x00"
