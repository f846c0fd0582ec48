"""One VID:PID parser everywhere: open_reader, the database lookups, the CLI; ATR(bytes)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ccid
from ccid import database, errors
from ccid.testing import presets

SPELLINGS = ["08E6:3437", "08e6:3437", "0x08E6:0x3437", "0x08e6:0x3437", "8e6:3437",
             "08E6/3437", "08E6 3437", " 08E6 : 3437 ", "VID_08E6&PID_3437", "vid_08e6&pid_3437"]


@pytest.mark.parametrize("text", SPELLINGS)
def test_parse_vid_pid_spellings(text: str) -> None:
    assert database.parse_vid_pid(text) == (0x08E6, 0x3437)
    assert ccid.parse_vid_pid is database.parse_vid_pid


@pytest.mark.parametrize("text", ["", "08E6", "08E6:", ":3437", "12345:1", "08E6:3437:1",
                                  "xyz:3437", "0x:0x", "08E6-3437"])
def test_parse_vid_pid_refuses(text: str) -> None:
    with pytest.raises(errors.UsageError):
        database.parse_vid_pid(text)


def test_parse_vid_pid_refuses_non_str() -> None:
    with pytest.raises(errors.UsageError):
        database.parse_vid_pid(0x08E6)  # type: ignore[arg-type]


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans(), st.sampled_from(":/ "))
def test_parse_vid_pid_round_trip(vid: int, pid: int, prefix: bool, sep: str) -> None:
    p = "0x" if prefix else ""
    assert database.parse_vid_pid(f"{p}{vid:04x}{sep}{p}{pid:X}") == (vid, pid)


@pytest.mark.parametrize("text", SPELLINGS)
def test_open_reader_takes_every_spelling(text: str) -> None:
    with ccid.open_reader(text, backend=presets.preset("gemalto-pc-twin")) as reader:
        assert (reader.info.vid, reader.info.pid) == (0x08E6, 0x3437)


def test_open_reader_vid_pid_not_connected_names_the_selector() -> None:
    with pytest.raises(errors.TransportError, match="0x08E6:0x3478"):
        ccid.open_reader("0x08E6:0x3478", backend=presets.preset("gemalto-pc-twin"))


@pytest.mark.parametrize("text", SPELLINGS)
def test_every_lookup_takes_one_string(text: str) -> None:
    ints = (0x08E6, 0x3437)
    assert database.lookup(text) == database.lookup(*ints) is not None
    assert ccid.lookup(text) == ccid.lookup(*ints)
    assert database.is_supported(text) is database.is_supported(*ints) is True
    assert ccid.is_supported(text) is True
    assert database.support_status(text) == database.support_status(*ints)
    assert ccid.support_status(text).status is database.SupportStatus.SUPPORTED
    assert database.quirks_for(text) == database.quirks_for(*ints)
    assert database.descriptor_bytes(text) == database.descriptor_bytes(*ints)
    assert database.min_firmware(text) == database.min_firmware(*ints)
    db = database.default_database()
    assert db.variants(text) == db.variants(*ints)
    assert db.firmware_problem(text, bcd_device=0x100) == db.firmware_problem(*ints, 0x100)


def test_firmware_checks_take_one_string() -> None:
    # a reader with known-bad old firmware: the same answer from either form
    db = database.default_database()
    key = next(k for k in db.ids() if db.min_firmware(k) is not None)
    vid, pid = database.parse_vid_pid(key)
    assert db.firmware_problem(key, bcd_device=0) == db.firmware_problem(vid, pid, 0) is not None
    with pytest.raises(errors.UnsupportedReaderError):
        database.check_firmware(key, bcd_device=0)
    with pytest.raises(errors.UsageError, match="bcd_device"):
        database.check_firmware(key)


@pytest.mark.parametrize("call", [
    lambda: database.lookup(0x08E6),
    lambda: database.lookup("08E6:3437", 0x3437),
    lambda: database.lookup("nope"),
    lambda: database.support_status(None),  # type: ignore[arg-type]
    lambda: database.is_supported(0x08E6, "3437"),  # type: ignore[arg-type]
    lambda: database.lookup(0x10000, 1),
])
def test_lookup_misuse_is_a_usage_error(call: object) -> None:
    with pytest.raises(errors.UsageError):
        call()  # type: ignore[operator]


ATR_BYTES = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")


def test_atr_constructor_decodes_bytes() -> None:
    atr = ccid.ATR(ATR_BYTES)
    assert atr == ccid.parse_atr(ATR_BYTES) and hash(atr) == hash(ccid.parse_atr(ATR_BYTES))
    assert bytes(atr) == ATR_BYTES and atr.protocols == (0, 1)
    assert pickle.loads(pickle.dumps(atr)) == atr
    bad_tck = ATR_BYTES[:-1] + b"\x00"
    with pytest.raises(ccid.protocol.atr.ATRError):
        ccid.ATR(bad_tck)
    assert not ccid.ATR(bad_tck, check_tck=False).tck_ok
    with pytest.raises(errors.UsageError):
        ccid.ATR("3B 00")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        atr.raw = b""  # type: ignore[misc]


@pytest.mark.parametrize(("platform", "words"), [("darwin", "macOS"), ("win32", "usbccid.sys")])
@pytest.mark.parametrize("code", [13, 16, 38])  # EACCES, EBUSY, ENOSYS (libusb NOT_SUPPORTED)
def test_claim_refused_by_the_os_driver_says_so(platform: str, words: str, code: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import usb.core

    from ccid.transport import usb as transport

    monkeypatch.setattr("sys.platform", platform)
    exc = transport.usb_error(usb.core.USBError("refused", errno=code), "claiming interface 0",
                              reader="r")
    assert isinstance(exc, errors.SharingViolationError)
    assert words in str(exc) and "udev" not in str(exc) and "pcscd" not in str(exc)
    monkeypatch.setattr("sys.platform", "linux")
    assert "pcscd" in str(transport.usb_error(usb.core.USBError("busy", errno=16), "claim"))
