"""Quirks in isolation: the data naming them, and each hook on real corpus descriptors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccid import database
from ccid.constants import ExchangeLevel, Features
from ccid.descriptor import CCIDDescriptor
from ccid.errors import ProtocolError, ReaderTimeoutError, SlotError, UsageError
from ccid.quirks import QUIRKS, Quirk, format_bcd, gemalto, get_quirk
from ccid.quirks.generic import MinimumFirmware


@dataclass
class FakeReader:
    """The reader layer's side of QuirkContext: scripted escape answers, recorded calls."""

    answers: list[bytes | Exception] = field(default_factory=list)
    reader_name: str = "Test Reader 00 00"
    vid: int = 0x08E6
    pid: int = 0x3478
    bcd_device: int = 0x0100
    interface: int = 0
    state: dict[str, object] = field(default_factory=dict)
    sent: list[tuple[bytes, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def escape(self, data: bytes, timeout: float) -> bytes:
        self.sent.append((bytes(data), timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def corpus_descriptor(corpus: Any, vid: int, pid: int) -> CCIDDescriptor:
    for dump in corpus["readers"]:
        if (dump["idVendor"], dump["idProduct"]) == (vid, pid):
            return CCIDDescriptor.from_fields(dump["interfaces"][0])
    raise AssertionError(f"{vid:04X}:{pid:04X} not in the corpus")


def apply(quirks: list[Quirk], desc: CCIDDescriptor) -> CCIDDescriptor:
    for quirk in quirks:
        desc = quirk.adjust_descriptor(desc)
    return desc


def ids(vid: int, pid: int, **kw: Any) -> list[str]:
    return [q.id for q in database.quirks_for(vid, pid, **kw)]


# --- registry and data -------------------------------------------------------------------


def test_registry() -> None:
    assert QUIRKS
    for quirk_id, quirk in QUIRKS.items():
        assert quirk.id == quirk_id and quirk.description
        assert get_quirk(quirk_id) is quirk
    with pytest.raises(UsageError):
        get_quirk("no-such-quirk")


def test_every_registered_quirk_is_used_by_a_rule() -> None:
    with open(database.YAML_PATH, encoding="utf-8") as fh:
        text = fh.read()
    data = database.parse_yaml(text)
    used = {q for rule in data["rules"] for q in rule["quirks"]}
    assert used == set(QUIRKS)


# (vid, pid, bcdDevice or None, quirk id): the readers issue 6 and libccid name
EXPECTED = [
    (0x08E6, 0x3478, None, "gemalto-pinpad-strings"),
    (0x0982, 0x0008, None, "gemalto-pinpad-strings"),
    (0x08E6, 0x3478, None, "gemalto-firmware-features"),
    (0x08E6, 0x3437, None, "gemalto-firmware-features"),
    (0x0D46, 0x3010, None, "force-short-apdu"),
    (0x2F7C, 0x6007, None, "force-extended-apdu"),
    (0x046A, 0x00A1, 0x0100, "short-apdu-chaining"),
    (0x076B, 0x3A21, None, "force-extended-apdu"),
    (0x076B, 0x3031, None, "force-extended-apdu"),
    (0x076B, 0x6632, None, "force-extended-apdu"),
    (0x046A, 0x00A7, None, "force-extended-apdu"),
    (0x0BF8, 0x1024, None, "force-extended-apdu"),
    (0x03F0, 0x1024, None, "no-pinpad"),
    (0x03F0, 0x0036, None, "no-pinpad"),
    (0x04F2, 0x1469, None, "no-pinpad"),
    (0x0BF8, 0x1017, None, "no-pinpad"),
    (0x0783, 0x0006, None, "no-pinpad"),
    (0x25DD, 0x3111, None, "no-pinpad"),
    (0x076B, 0x3A21, None, "no-pinpad"),
    (0x09BE, 0x0002, None, "mysmartpad-ifsd-254"),
    (0x0529, 0x0620, 0x0012, "etoken-no-ifsd"),
    (0x0B97, 0x7762, None, "oz776-9600-no-pps"),
    (0x0B97, 0x7772, None, "oz776-9600-no-pps"),
    (0x058F, 0x9540, None, "au9540-rates"),
    (0x04E6, 0x5111, None, "scm-max-message-263"),
    (0x08E6, 0x3479, None, "gemcore-secondary-slot-rates"),
    (0x08E6, 0x3480, 0x0100, "gemcore-secondary-slot-rates"),
    (0x072F, 0x2200, None, "slow-open-x10"),
    (0x09D8, 0x0427, None, "slow-open-x10"),
    (0x09D8, 0x0428, None, "slow-open-x10"),
    (0x04E6, 0x5293, None, "slow-open-x4"),
    (0x04E6, 0x5790, None, "slow-open-x4"),
    (0x04E6, 0x5791, None, "slow-open-x4"),
    (0x04E6, 0x5724, None, "slow-open-x4"),
    (0x0B81, 0x0200, None, "slow-open-x20"),
    (0x08E6, 0x4433, None, "gemalto-emv-to-iso-mode"),
    (0x046A, 0x0005, None, "gemalto-emv-to-iso-mode"),
    (0x08E6, 0x34D2, None, "thales-fusion-obkg-time"),
]


@pytest.mark.parametrize(("vid", "pid", "bcd", "quirk_id"), EXPECTED)
def test_database_names_the_quirk(vid: int, pid: int, bcd: int | None, quirk_id: str) -> None:
    assert quirk_id in ids(vid, pid, bcd_device=bcd)


def test_firmware_conditions_exclude_other_versions() -> None:
    assert "gemcore-secondary-slot-rates" not in ids(0x08E6, 0x3480, bcd_device=0x0200)
    assert "short-apdu-chaining" not in ids(0x046A, 0x00A1, bcd_device=0x0102)
    assert "etoken-no-ifsd" not in ids(0x0529, 0x0620, bcd_device=0x0100)


# --- descriptor hooks on the real descriptors ----------------------------------------------


def test_forced_exchange_levels(descriptor_corpus: Any) -> None:
    cases = [
        (0x0D46, 0x3010, None, ExchangeLevel.SHORT_APDU),
        (0x2F7C, 0x6007, None, ExchangeLevel.EXTENDED_APDU),
        (0x076B, 0x3031, None, ExchangeLevel.EXTENDED_APDU),
        (0x076B, 0x6632, None, ExchangeLevel.EXTENDED_APDU),
        (0x046A, 0x00A7, None, ExchangeLevel.EXTENDED_APDU),
        (0x0BF8, 0x1024, None, ExchangeLevel.EXTENDED_APDU),
    ]
    for vid, pid, bcd, level in cases:
        before = corpus_descriptor(descriptor_corpus, vid, pid)
        after = apply(database.quirks_for(vid, pid, bcd_device=bcd), before)
        assert after.exchange_level is level, f"{vid:04X}:{pid:04X}"
        # only the level bits change
        mask = ~0x00070000 & 0xFFFFFFFF
        assert after.dwFeatures & mask == before.dwFeatures & mask
        assert after.to_bytes()[:40] == before.to_bytes()[:40]


def test_short_apdu_chaining_only_touches_short_apdu(descriptor_corpus: Any) -> None:
    quirk = get_quirk("short-apdu-chaining")
    base = corpus_descriptor(descriptor_corpus, 0x046A, 0x00A1)
    from ccid.quirks.generic import with_exchange_level

    short = with_exchange_level(base, ExchangeLevel.SHORT_APDU)
    assert quirk.adjust_descriptor(short).exchange_level is ExchangeLevel.EXTENDED_APDU
    tpdu = with_exchange_level(base, ExchangeLevel.TPDU)
    assert quirk.adjust_descriptor(tpdu) == tpdu


def test_iccd_b_tokens_become_extended(descriptor_corpus: Any) -> None:
    seen = 0
    for dump in descriptor_corpus["readers"]:
        for iface in dump["interfaces"]:
            if iface["interface"]["bInterfaceProtocol"] != 2:
                continue
            desc = CCIDDescriptor.from_fields(iface)
            quirks = database.quirks_for(dump["idVendor"], dump["idProduct"],
                                         interface_protocol=2)
            after = apply(quirks, desc)
            if desc.exchange_level is ExchangeLevel.SHORT_APDU:
                assert after.exchange_level is ExchangeLevel.EXTENDED_APDU
                seen += 1
            else:
                assert after.exchange_level is desc.exchange_level
    assert seen > 0


def test_fake_pinpads_lose_pin_support(descriptor_corpus: Any) -> None:
    pinpads = 0
    for vid, pid in [(0x03F0, 0x1024), (0x03F0, 0x0036), (0x04F2, 0x1469), (0x0BF8, 0x1017),
                     (0x0783, 0x0006), (0x25DD, 0x3111), (0x076B, 0x3A21), (0x076B, 0x3031),
                     (0x076B, 0x6632), (0x046A, 0x00A7), (0x0BF8, 0x1024)]:
        before = corpus_descriptor(descriptor_corpus, vid, pid)
        pinpads += before.bPINSupport != 0
        assert apply(database.quirks_for(vid, pid), before).bPINSupport == 0
    assert pinpads >= 5  # the descriptors really claim a pinpad


def test_mysmartpad_ifsd(descriptor_corpus: Any) -> None:
    before = corpus_descriptor(descriptor_corpus, 0x09BE, 0x0002)
    assert before.dwMaxIFSD != 254
    assert apply(database.quirks_for(0x09BE, 0x0002), before).dwMaxIFSD == 254


def test_etoken_no_ifsd(descriptor_corpus: Any) -> None:
    before = corpus_descriptor(descriptor_corpus, 0x0529, 0x0620)
    quirks = database.quirks_for(0x0529, 0x0620, bcd_device=0x0013)
    after = apply(quirks, before)
    assert after.dwFeatures & Features.AUTO_IFSD
    assert not any(q.negotiate_ifsd(True) for q in quirks if q.id == "etoken-no-ifsd")


def test_oz776(descriptor_corpus: Any) -> None:
    for pid in (0x7762, 0x7772):
        (quirk,) = [q for q in database.quirks_for(0x0B97, pid) if q.id == "oz776-9600-no-pps"]
        before = corpus_descriptor(descriptor_corpus, 0x0B97, pid)
        assert quirk.adjust_descriptor(before).dwMaxDataRate <= 9600
        assert quirk.max_data_rate(before.dwMaxDataRate) <= 9600
        assert quirk.skip_pps(False) is True
        assert quirk.adjust_data_rates((9600, 19200, 38400)) == (9600,)


def test_au9540(descriptor_corpus: Any) -> None:
    entry = database.lookup(0x058F, 0x9540)
    assert entry is not None
    rates = tuple(r for r in entry.data_rates if r)
    (quirk,) = [q for q in database.quirks_for(0x058F, 0x9540) if q.id == "au9540-rates"]
    kept = quirk.adjust_data_rates(rates)
    assert kept == tuple(r for r in rates if r <= 200000)
    assert quirk.max_data_rate(entry.max_data_rate or 0) <= 200000
    assert quirk.adjust_descriptor(corpus_descriptor(descriptor_corpus, 0x058F, 0x9540)
                                   ).dwMaxDataRate <= 200000
    assert quirk.tolerate_set_parameters_failure()


def test_scm_263(descriptor_corpus: Any) -> None:
    fixed = 0
    for dump in descriptor_corpus["readers"]:
        vid, pid = dump["idVendor"], dump["idProduct"]
        for iface in dump["interfaces"]:
            desc = CCIDDescriptor.from_fields(iface)
            quirks = [q for q in database.quirks_for(vid, pid) if q.id == "scm-max-message-263"]
            if desc.dwMaxCCIDMessageLength == 263:
                assert quirks, f"{vid:04X}:{pid:04X} declares 263 without the quirk"
                assert quirks[0].adjust_descriptor(desc).dwMaxCCIDMessageLength == 271
                fixed += 1
            elif quirks:
                assert quirks[0].adjust_descriptor(desc) == desc
    assert fixed >= 6


def test_gemcore_secondary_slots() -> None:
    quirk = get_quirk("gemcore-secondary-slot-rates")
    rates = (9600, 10753, 115200, 250000)
    assert quirk.adjust_data_rates(rates, slot=0) == rates
    assert quirk.adjust_data_rates(rates, slot=1) == (10753, 21505, 43011, 125000)
    assert quirk.max_data_rate(250000, slot=0) == 250000
    assert quirk.max_data_rate(250000, slot=2) == 125000


def test_slow_open_timeouts() -> None:
    for quirk_id, factor in [("slow-open-x4", 4), ("slow-open-x10", 10), ("slow-open-x20", 20)]:
        assert get_quirk(quirk_id).open_timeout(0.5) == pytest.approx(0.5 * factor)
    assert get_quirk("no-pinpad").open_timeout(0.5) == 0.5


def test_long_card_operations() -> None:
    fusion = get_quirk("thales-fusion-obkg-time")
    assert fusion.extra_card_time(b"\x3b\x00") >= 300
    openpgp_atr = bytes.fromhex("3BFA1300FF813180450031C173C00100009000B1")
    (quirk,) = database.quirks_for(0x1234, 0x5678, atr=openpgp_atr)
    assert quirk.adjust_bwi(4, openpgp_atr) == 7
    assert quirk.adjust_bwi(9, openpgp_atr) == 9


# --- firmware refusal --------------------------------------------------------------------


def test_firmware_refusal_text() -> None:
    quirk = MinimumFirmware(0x0516, "SCM SCR 331")
    text = quirk.check_firmware(0x0510)
    assert text is not None
    assert "SCM SCR 331" in text and "5.10" in text and "5.16" in text and "upgrade" in text
    assert quirk.check_firmware(0x0516) is None and quirk.check_firmware(0x0600) is None
    assert format_bcd(0x0102) == "1.02" and format_bcd(0x5000) == "50.00"
    (first, *_) = database.quirks_for(0x04E6, 0xE001)
    assert first == quirk and first.check_firmware(0x0515) is not None


# --- Gemalto escapes ---------------------------------------------------------------------


def _abdata(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"])[10:]


def test_display_strings_escape_is_the_ct700_bytes(ct700_vectors: Any) -> None:
    assert gemalto.build_display_strings_escape() == _abdata(ct700_vectors["escape_l10n_strings"])
    assert _abdata(
        ct700_vectors["escape_get_firmware_features"]
    ) == gemalto.GET_FIRMWARE_FEATURES
    with pytest.raises(ValueError):
        gemalto.build_display_strings_escape(("x",) * 9)
    with pytest.raises(ValueError):
        gemalto.build_display_strings_escape(("x" * 17,) * 10)


def features_bytes(**kw: int) -> bytes:
    raw = bytearray(21)
    for index, value in kw.items():
        raw[int(index[1:])] = value
    return bytes(raw)


def test_firmware_features_parsing() -> None:
    raw = features_bytes(b0=2, b1=16, b2=1, b3=0x02, b4=0b1010_0101, b5=0b011, b8=0b10110,
                         b12=0x11, b13=4, b14=8, b15=1, b16=0x6A, b17=0x88)
    ff = gemalto.parse_firmware_features(raw)
    assert (ff.lcd_lines, ff.lcd_chars, ff.lcd_layout) == (2, 16, (2, 16))
    assert ff.lcd_scrolling and ff.entry_validation_condition == 2
    assert ff.verify_pin_start and not ff.verify_pin_finish and ff.modify_pin_start
    assert ff.verify_pin_direct and ff.abort and not ff.modify_pin_direct
    assert ff.get_key and ff.write_display and not ff.set_spe_message
    assert not ff.timeout2 and ff.list_supported_languages and ff.number_message_fix
    assert not ff.ppdu_over_xfr_block and ff.ppdu_over_escape
    assert (ff.version, ff.min_pin_size, ff.max_pin_size) == (0x11, 4, 8)
    assert ff.firewall and ff.firewalled_sw == (0x6A, 0x88) and ff.raw == raw
    assert gemalto.parse_firmware_features(features_bytes(b16=0x6A)).firewalled_sw is None
    assert gemalto.parse_firmware_features(bytes(21)).lcd_layout is None


@given(st.binary(min_size=0, max_size=40))
def test_firmware_features_length_and_fields(data: bytes) -> None:
    if len(data) != 21:
        with pytest.raises(ProtocolError):
            gemalto.parse_firmware_features(data)
        return
    ff = gemalto.parse_firmware_features(data)
    assert ff.raw == data
    assert (ff.min_pin_size, ff.max_pin_size, ff.version) == (data[13], data[14], data[12])
    assert ff.abort == bool(data[4] & 0x80) and ff.get_key == bool(data[5] & 1)
    assert ff.ppdu_over_escape == bool(data[8] & 0x10) and ff.firewall == bool(data[15] & 1)


def test_ct700_that_never_answers_opens_with_warnings_and_no_state() -> None:
    ctx = FakeReader(answers=[ReaderTimeoutError("no answer"), ReaderTimeoutError("no answer")])
    for quirk in database.quirks_for(0x08E6, 0x3478):
        quirk.after_open(ctx)
    assert [data[:1] for data, _ in ctx.sent] == [b"\xb2", b"\x6a"]
    assert all(0 < timeout <= gemalto.ESCAPE_TIMEOUT for _, timeout in ctx.sent)
    assert len(ctx.warnings) == 2 and all(ctx.reader_name in w for w in ctx.warnings)
    assert ctx.state == {}


def test_gemalto_features_stored_when_answered() -> None:
    raw = features_bytes(b13=4, b14=12)
    ctx = FakeReader(answers=[raw])
    get_quirk("gemalto-firmware-features").after_open(ctx)
    features = ctx.state["gemalto.firmware_features"]
    assert isinstance(features, gemalto.FirmwareFeatures) and features.max_pin_size == 12
    assert ctx.warnings == []


@pytest.mark.parametrize("answer", [b"\x00" * 20, SlotError("not supported", bError=0)])
def test_gemalto_features_wrong_or_refused_leave_no_state(answer: bytes | Exception) -> None:
    ctx = FakeReader(answers=[answer])
    get_quirk("gemalto-firmware-features").after_open(ctx)
    assert ctx.state == {}


def test_emv_to_iso_retry() -> None:
    quirk = get_quirk("gemalto-emv-to-iso-mode")
    ctx = FakeReader(answers=[b""])
    assert quirk.retry_power_on(ctx, 0xBB) is True
    assert ctx.sent == [(gemalto.SET_ISO_MODE, gemalto.ESCAPE_TIMEOUT)]
    other = FakeReader()
    assert quirk.retry_power_on(other, 0xFE) is False and other.sent == []
    failing = FakeReader(answers=[ReaderTimeoutError("x")])
    assert quirk.retry_power_on(failing, 0xBB) is False and failing.warnings


def test_default_hooks_change_nothing(descriptor_corpus: Any) -> None:
    base = Quirk()
    desc = corpus_descriptor(descriptor_corpus, 0x08E6, 0x3478)
    ctx = FakeReader()
    assert base.adjust_descriptor(desc) is desc
    assert base.adjust_data_rates((1, 2), slot=1) == (1, 2)
    assert base.open_timeout(1.5) == 1.5 and base.max_data_rate(9600) == 9600
    assert base.negotiate_ifsd(True) and not base.skip_pps(False)
    assert base.adjust_pin_structure(b"\x01") == b"\x01"
    assert base.extra_card_time(b"") == 0.0 and base.adjust_bwi(4, b"") == 4
    assert base.check_firmware(0) is None and not base.tolerate_set_parameters_failure()
    base.after_open(ctx)
    base.before_power_on(ctx)
    assert base.retry_power_on(ctx, 0xBB) is False and ctx.sent == []
