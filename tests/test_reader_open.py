"""Listing and opening readers end to end: pyusb on virtual readers from real descriptors."""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings

import pytest

import ccid
from ccid.errors import (
    ReaderTimeoutError,
    SharingViolationError,
    TransportError,
    UnsupportedReaderError,
    UsageError,
)
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice, VirtualReader
from ccid.testing.faults import ClaimedElsewhere, NoAnswer
from ccid.testing.presets import CT700_ESCAPE_L10N, preset_dump, preset_reader

SELECT_MF = bytes.fromhex("00A4000C023F00")
GET_STATUS = frozenset({0x65})


def reader_like(name: str, **overrides: object) -> VirtualReader:
    """A preset's descriptor under other USB facts (vid, pid, serial, class, ...)."""
    return VirtualReader.from_descriptor_dump(preset_dump(name), **overrides)


def open_quiet(backend: VirtualBackend, selector: object = None, **options: object
               ) -> ccid.Reader:
    options.setdefault("events", False)
    return ccid.open_reader(selector, backend=backend, **options)


# --- listing -----------------------------------------------------------------------------


def test_names_and_stable_ids() -> None:
    backend = VirtualBackend(
        preset_reader("gemalto-pc-twin", serial="SN123"),
        preset_reader("two-slot"),
    )
    infos = ccid.list_readers(backend=backend)
    assert len(infos) == 2
    twin, hybrid = infos
    assert twin.name.endswith("(SN123) 00 00")
    assert twin.serial == "SN123" and twin.vid_pid == "08E6:3437"
    assert re.fullmatch(r"\d+-[\d.]+:\d+\.\d+", twin.usb_path)
    assert twin.usb_path != hybrid.usb_path
    assert hybrid.slots == 2
    assert hybrid.slot_names[1].endswith(" 01 01") and hybrid.name.endswith(" 01 00")
    assert twin.has_interrupt


def test_composite_device_exposes_each_ccid_interface() -> None:
    first = reader_like("short-apdu", interface_number=0, interface_name="Contact")
    second = reader_like("extended-apdu", interface_number=1, interface_name="Contactless")
    first.insert(VirtualCard())
    second.insert(VirtualCard())
    backend = VirtualBackend(VirtualDevice([first, second], vid=0x1234, pid=0x5678))
    infos = ccid.list_readers(backend=backend)
    assert [i.interface for i in infos] == [0, 1]
    assert "[Contact]" in infos[0].name and "[Contactless]" in infos[1].name
    assert infos[0].usb_path.endswith(":1.0") and infos[1].usb_path.endswith(":1.1")
    with open_quiet(backend, 0) as r0, open_quiet(backend, 1) as r1:
        assert r0.exchange_level != r1.exchange_level
        with r0.connect() as c0, r1.connect() as c1:
            assert c0.transmit(SELECT_MF)[-2:] == b"\x90\x00"
            assert c1.transmit(SELECT_MF)[-2:] == b"\x90\x00"


@pytest.mark.parametrize("where", ["interface", "after-endpoints"])
def test_vendor_class_interface_with_ccid_descriptor(where: str) -> None:
    vr = reader_like("gemalto-pc-twin", interface_class=0xFF,
                     descriptor_after_endpoints=where == "after-endpoints")
    vr.insert(VirtualCard())
    backend = VirtualBackend(vr)
    infos = ccid.list_readers(backend=backend)
    assert len(infos) == 1
    with open_quiet(backend) as reader, reader.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"


def test_selectors() -> None:
    backend = VirtualBackend(
        preset_reader("gemalto-pc-twin", serial="TWIN-1"),
        preset_reader("short-apdu", serial="ACS-2"),
    )
    infos = ccid.list_readers(backend=backend)
    by = {}
    for selector in (1, "072F:B000", "072f:b000", "ACS-2", infos[1].usb_path, infos[1],
                     infos[1].name, "acs-2"):
        with open_quiet(backend, selector) as reader:
            by[repr(selector)] = reader.info.usb_path
    assert set(by.values()) == {infos[1].usb_path}
    with open_quiet(backend) as reader:
        assert reader.info.usb_path == infos[0].usb_path
    for missing in (5, "FFFF:0001", "no such reader"):
        with pytest.raises(TransportError, match="no reader"):
            open_quiet(backend, missing)
    with pytest.raises(UsageError):
        open_quiet(backend, 1.5)
    with pytest.raises(TransportError, match="no CCID reader found"):
        ccid.open_reader(backend=VirtualBackend())
    with pytest.raises(UsageError, match="unknown open_reader option"):
        open_quiet(backend, 0, timeuot=3)


# --- what open does ----------------------------------------------------------------------


def test_rates_asked_only_when_declared_and_stalls_tolerated() -> None:
    twin = preset_dump("gemalto-pc-twin")
    declared = twin["bNumDataRatesSupported"]
    with open_quiet(VirtualBackend(preset_reader("gemalto-pc-twin"))) as reader:
        if declared:
            assert reader.data_rates == tuple(twin["data_rates_bps"])[:declared]
        else:
            assert reader.data_rates == ()
    # A reader that declares rates but stalls the request still opens.
    dump = {**preset_dump("ct700"), "bNumDataRatesSupported": 41}
    stalling = VirtualReader.from_descriptor_dump(dump, data_rates_answer="stall")
    with open_quiet(VirtualBackend(stalling), quirks=False) as reader:
        assert reader.data_rates == ()
    # The CT700's real table once declared: its 41 rates.
    answering = VirtualReader.from_descriptor_dump(dump)
    with open_quiet(VirtualBackend(answering), quirks=False) as reader:
        assert reader.data_rates == tuple(dump["data_rates_bps"])
        assert len(reader.data_rates) == 41


def test_claimed_by_another_process_is_a_sharing_violation() -> None:
    vr = preset_reader("gemalto-pc-twin")
    backend = VirtualBackend(vr)
    vr.inject(ClaimedElsewhere())
    with pytest.raises(SharingViolationError) as info:
        open_quiet(backend)
    text = str(info.value)
    assert "pcscd" in text and "systemctl stop pcscd.socket pcscd" in text
    assert info.value.pcsc_code == "SCARD_E_SHARING_VIOLATION"
    vr.clear_faults()
    with open_quiet(backend) as reader, reader.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"


def test_open_twice_in_one_process() -> None:
    backend = VirtualBackend(preset_reader("gemalto-pc-twin"))
    with open_quiet(backend), \
            pytest.raises(SharingViolationError, match="already open in this process"):
        open_quiet(backend)
    with open_quiet(backend) as again:
        assert not again.closed


def test_failed_open_leaves_nothing_behind() -> None:
    vr = preset_reader("gemalto-pc-twin")
    backend = VirtualBackend(vr)
    device = backend.devices[0]
    threads = threading.active_count()
    vr.inject(NoAnswer(commands=GET_STATUS, count=None))
    with pytest.raises(ReaderTimeoutError):
        ccid.open_reader(backend=backend, timeout=0.3)  # monitor on: must not leak either
    assert not device.claims
    assert threading.active_count() == threads
    vr.clear_faults()
    with ccid.open_reader(backend=backend) as reader, reader.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"
    assert not device.claims


def test_ct700_opens_with_a_warning_then_a_second_reader_opens(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ccid")
    ct700 = preset_reader("ct700")
    twin = preset_reader("gemalto-pc-twin")
    backend = VirtualBackend(ct700, twin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = ccid.open_reader(0, backend=backend, events=False)
    try:
        # quirks are on by default and the database names the CT700's escape quirks
        assert {"gemalto-pinpad-strings", "gemalto-firmware-features"} <= {
            q.id for q in reader.quirks}
        assert reader.warnings
        assert any("escape" in w or "answer" in w for w in reader.warnings)
        assert any("resetting" in w for w in reader.warnings)  # the wedge was undone
        # device facts go to logging once each, never also through the warnings module
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert all(sum(w in t for t in logged) == 1 for w in reader.warnings)
        with reader.connect() as card:
            assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"
    finally:
        reader.close()
    assert not backend.devices[0].claims
    with open_quiet(backend, 1) as second, second.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_quiet(backend, 0) as again:  # and the CT700 itself opens again
            assert not again.closed


def test_failed_ct700_open_then_another_reader_then_the_ct700_after_replug() -> None:
    """The seed article: a CT700 left wedged by an escape it does not know fails to open;
    that failure must not break the next reader, and the CT700 works after a replug."""
    ct700 = preset_reader("ct700")
    twin = preset_reader("gemalto-pc-twin")
    backend = VirtualBackend(ct700, twin)
    ct700_device = backend.devices[0]
    # A program sends the CT700 an escape it never answers: the firmware hangs.
    with open_quiet(backend, "08E6:3478", quirks=False) as first, \
            pytest.raises(ReaderTimeoutError):
        first.escape(CT700_ESCAPE_L10N, timeout=0.3)
    assert ct700.wedged
    threads = threading.active_count()
    with pytest.raises(ReaderTimeoutError):
        # events on: a failed open must not leave the monitor thread behind either
        ccid.open_reader("08E6:3478", backend=backend, quirks=False, open_timeout=0.2)
    assert not ct700_device.claims
    assert threading.active_count() == threads
    # A different reader on the same bus opens and works normally.
    with ccid.open_reader("08E6:3437", backend=backend, quirks=False) as second, \
            second.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"
        assert card.transmit(bytes.fromhex("8010000003010203")) == bytes.fromhex(
            "0102039000")
    assert not backend.devices[1].claims
    # The CT700 stays wedged until it is unplugged and plugged again; then it works.
    with pytest.raises(ReaderTimeoutError):
        open_quiet(backend, "08E6:3478", quirks=False, open_timeout=0.2)
    assert not ct700_device.claims
    backend.unplug(ct700)
    backend.plug(ct700)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ccid.open_reader("08E6:3478", backend=backend) as again, \
                again.connect() as card:
            assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"
    with open_quiet(backend, "08E6:3437") as second, second.connect() as card:
        assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"


def test_known_bad_firmware_is_refused_unless_allowed() -> None:
    from ccid import database

    quirks = database.quirks_for(0x072F, 0x2200, bcd_device=0x0001, interface=0)
    if not any(q.check_firmware(0x0001) for q in quirks):
        pytest.skip("database has no minimum firmware for the ACR122U")
    vr = reader_like("short-apdu", vid=0x072F, pid=0x2200, bcd_device=0x0001)
    backend = VirtualBackend(vr)
    with pytest.raises(UnsupportedReaderError, match="upgrade") as info:
        open_quiet(backend)
    assert "allow_bad_firmware=True" in str(info.value)
    assert not backend.devices[0].claims
    with open_quiet(backend, allow_bad_firmware=True) as reader:
        assert not reader.closed
        assert any("allow_bad_firmware" in w for w in reader.warnings)


def test_close_is_idempotent_and_closed_reader_refuses() -> None:
    backend = VirtualBackend(preset_reader("gemalto-pc-twin"))
    reader = ccid.open_reader(backend=backend)
    card = reader.connect()
    reader.close()
    reader.close()
    with pytest.raises(UsageError, match="closed"):
        reader.escape(b"\x00")
    with pytest.raises(UsageError, match="closed"):
        card.transmit(SELECT_MF)
    with pytest.raises(UsageError, match="closed"):
        reader.connect()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_refuses_the_parents_reader() -> None:
    backend = VirtualBackend(preset_reader("gemalto-pc-twin"))
    reader = open_quiet(backend)
    card = reader.connect()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what happened through the pipe, never run pytest code
        code = b"?"
        try:
            card.transmit(SELECT_MF)
            code = b"transmitted"
        except UsageError as exc:
            code = b"usage" if "before fork()" in str(exc) else b"other usage"
        except BaseException:
            code = b"crash"
        try:
            reader.close()  # must not touch the parent's handle
            del card, reader
        except BaseException:
            code += b"+close-crash"
        os.write(write_end, code)
        os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_end, 100)
    os.close(read_end)
    assert status == 0
    assert answer == b"usage"
    assert card.transmit(SELECT_MF)[-2:] == b"\x90\x00"  # the parent goes on
    reader.close()
