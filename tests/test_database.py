"""The reader database: generated from the corpus, validated, cached, and queried."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import REFERENCE, ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from ccid import database
from ccid.constants import ExchangeLevel
from ccid.database import Database, SupportStatus
from ccid.descriptor import CCIDDescriptor, parse_ccid_descriptor
from ccid.errors import DatabaseError, UnsupportedReaderError, UsageError
from ccid.quirks import format_bcd


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_readers", ROOT / "tools" / "gen_readers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> Any:
    return _load_generator()


@pytest.fixture(scope="module")
def yaml_text() -> str:
    return Path(database.YAML_PATH).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def yaml_data(yaml_text: str) -> dict[str, Any]:
    return database.parse_yaml(yaml_text, "readers.yaml")


@pytest.fixture(scope="module")
def yaml_db(yaml_data: dict[str, Any]) -> Database:
    return Database.from_data(yaml_data, "readers.yaml")


@pytest.fixture(scope="module")
def db() -> Database:
    """The packaged database as users get it (through the cache)."""
    loaded = database.load_database()
    assert loaded.origin.endswith("readers.cache"), "the committed cache must be valid"
    return loaded


# --- generation --------------------------------------------------------------------------


def test_regenerating_gives_the_committed_files(
    gen: Any, yaml_text: str, yaml_data: dict[str, Any], descriptor_corpus: Any
) -> None:
    assert gen.build(REFERENCE, yaml_text) == yaml_text
    cache = Path(database.CACHE_PATH).read_text(encoding="utf-8")
    assert database.render_cache(yaml_text, yaml_data) == cache


def test_check_mode_is_usable_from_the_command_line(descriptor_corpus: Any) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_readers.py"), "--check",
         "--reference", str(REFERENCE)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_hand_written_part_survives_regeneration(gen: Any, yaml_text: str,
                                                 descriptor_corpus: Any) -> None:
    edited = yaml_text.replace(
        "rules:\n",
        "rules:\n# a comment the generator must keep\n"
        "- {quirks: [no-pinpad], match: [{vid: 0x1234, pid: 0x5678}], note: 'mine'}\n",
        1,
    )
    assert edited != yaml_text
    regenerated = gen.build(REFERENCE, edited)
    assert regenerated == edited
    marker = gen.HAND_WRITTEN_MARKER
    assert regenerated.split(marker)[0] == yaml_text.split(marker)[0]


def test_generator_refuses_a_file_without_marker(gen: Any, descriptor_corpus: Any) -> None:
    with pytest.raises(SystemExit):
        gen.build(REFERENCE, "schema: 1\n")


# --- content against the corpus ----------------------------------------------------------


def test_every_line_of_libccid_list_is_kept(yaml_data: dict[str, Any],
                                            supported_readers: Any) -> None:
    lines = yaml_data["lines"]
    entries = supported_readers["entries"]
    assert len(lines) == len(entries) == supported_readers["total"]
    for ours, theirs in zip(lines, entries):
        assert ours["line"] == theirs["line"]
        assert ours["section"] == theirs["section"]
        assert (ours["vid"], ours["pid"]) == (theirs["vid_int"], theirs["pid_int"])
        assert ours["name"] == theirs["name"]
        assert ours["vendor"] == theirs["vendor_group"]
        assert ours.get("dump") == theirs.get("file")
    counts = Counter(line["section"] for line in lines)
    assert dict(counts) == supported_readers["counts"]


def test_listed_lines_and_entries(db: Database, supported_readers: Any) -> None:
    assert [ln.line for ln in db.lines()] == [e["line"] for e in supported_readers["entries"]]
    live = {(e["vid_int"], e["pid_int"]) for e in supported_readers["entries"]
            if e["section"] in ("supported", "shouldwork", "unsupported")}
    entries = db.all_entries()
    ids = {(e.vid, e.pid) for e in entries}
    assert live <= ids
    assert len(ids) == len(entries)
    # a VID:PID listed only in 'disabled' keeps that status
    for e in entries:
        assert e.section != "duplicates"


def test_every_corpus_interface_is_in_the_database(db: Database, descriptor_corpus: Any) -> None:
    for dump in descriptor_corpus["readers"]:
        vid, pid = dump["idVendor"], dump["idProduct"]
        variants = [v for v in db.variants(vid, pid) if v.dump == dump["file"]]
        assert variants, dump["file"]
        assert {v.bcd_device for v in variants} == {dump["bcdDevice"]}
        assert variants[0].interface_count == len(dump["interfaces"])
        for iface in dump["interfaces"]:
            expected = CCIDDescriptor.from_fields(iface)
            number = iface["interface"]["bInterfaceNumber"]
            match = [v for v in variants if number in v.interface_numbers
                     and v.raw_descriptor == expected.to_bytes()]
            assert match, (dump["file"], number)
            entry = match[0]
            parsed = entry.descriptor()
            assert parsed == expected
            assert entry.slots == iface["bMaxSlotIndex"] + 1
            assert entry.max_message_length == iface["dwMaxCCIDMessageLength"]
            assert entry.max_ifsd == iface["dwMaxIFSD"]
            assert entry.exchange_level == expected.exchange_level
            assert entry.protocols == expected.protocols
            assert entry.voltages == expected.voltages
            assert entry.pin_support == expected.pin_support
            assert entry.lcd_layout == expected.lcd_layout
            assert entry.interface_class == iface["interface"]["bInterfaceClass"]
            assert entry.interface_protocol == iface["interface"]["bInterfaceProtocol"]
            assert entry.has_interrupt == (iface["interface"]["bNumEndpoints"] == 3)
            assert entry.manufacturer == dump.get("iManufacturer")
            assert entry.product == dump.get("iProduct")
            assert iface.get("iInterface") in entry.interface_names
            rates = iface.get("unsigned_data_rates_bps", iface["data_rates_bps"])
            assert entry.data_rates == tuple(r & 0xFFFFFFFF for r in rates)


def test_identical_interfaces_share_one_group(db: Database, descriptor_corpus: Any) -> None:
    for dump in descriptor_corpus["readers"]:
        distinct = {CCIDDescriptor.from_fields(i).to_bytes() for i in dump["interfaces"]}
        variants = [v for v in db.variants(dump["idVendor"], dump["idProduct"])
                    if v.dump == dump["file"]]
        assert len(variants) >= len(distinct)
        assert sum(len(v.interface_numbers) for v in variants) == len(dump["interfaces"])


def test_lookup_picks_firmware_and_interface(db: Database, descriptor_corpus: Any) -> None:
    by_id: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for dump in descriptor_corpus["readers"]:
        by_id[(dump["idVendor"], dump["idProduct"])].append(dump)
    checked = 0
    for (vid, pid), dumps in by_id.items():
        bcds = [d["bcdDevice"] for d in dumps]
        for dump in dumps:
            numbers = [i["interface"]["bInterfaceNumber"] for i in dump["interfaces"]]
            if bcds.count(dump["bcdDevice"]) > 1 or len(set(numbers)) != len(numbers):
                continue  # ambiguous in the corpus itself
            for iface in dump["interfaces"]:
                number = iface["interface"]["bInterfaceNumber"]
                entry = db.lookup(vid, pid, dump["bcdDevice"], number)
                assert entry is not None and entry.dump == dump["file"]
                assert entry.raw_descriptor == CCIDDescriptor.from_fields(iface).to_bytes()
                checked += 1
    assert checked > 700


def test_lookup_default_dump_is_the_one_for_the_listed_name(db: Database) -> None:
    # 072F:90CC has five dumps; the list names it after the ACR38U
    entry = db.lookup(0x072F, 0x90CC)
    assert entry is not None and entry.name == "ACS ACR 38U-CCID"
    assert entry.dump == "ACR38U-CCID.txt"
    # a firmware between two dumps takes the closest older one
    older = db.lookup(0x08E6, 0x3478, 0x0150)
    newer = db.lookup(0x08E6, 0x3478, 0x0300)
    assert older is not None and newer is not None
    assert older.bcd_device == 0x0100 and newer.bcd_device == 0x0211


def test_lookup_unknown_and_bad_arguments(db: Database) -> None:
    assert db.lookup(0x1234, 0x5678) is None
    assert db.lookup(0x08E6, 0x3478, None, 9) is not None  # listed, no such interface dumped
    assert db.lookup(0x08E6, 0x3478, None, 9).raw_descriptor is None  # type: ignore[union-attr]
    for args in [(-1, 0), (0x10000, 0), (0, "1"), (True, 0)]:
        with pytest.raises(UsageError):
            db.lookup(*args)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        db.lookup(1, 2, bcd_device=0x10000)
    with pytest.raises(UsageError):
        db.lookup(1, 2, interface=256)


def test_is_supported_follows_the_sections(db: Database, supported_readers: Any) -> None:
    main: dict[tuple[int, int], str] = {}
    for e in supported_readers["entries"]:
        if e["section"] != "duplicates":
            main.setdefault((e["vid_int"], e["pid_int"]), e["section"])
    for (vid, pid), section in main.items():
        assert db.is_supported(vid, pid) == (section in ("supported", "shouldwork"))
    assert not db.is_supported(0x1234, 0x5678)


def test_support_status_answers(db: Database) -> None:
    assert db.support_status(0x08E6, 0x3478).status is SupportStatus.SUPPORTED
    assert db.support_status(0x0982, 0x0008).status is SupportStatus.SHOULD_WORK
    oz = db.support_status(0x0B97, 0x7762)
    assert oz.status is SupportStatus.KNOWN_PROBLEMS and oz.reason and "9600" in oz.reason
    other = db.support_status(0x0D46, 0x4000)
    assert other.status is SupportStatus.KNOWN_PROBLEMS and other.reason
    assert db.support_status(0x1DB2, 0x0600).status is SupportStatus.DISABLED
    unlisted = db.support_status(0x1234, 0x5678, interface_class=0x0B)
    assert unlisted.status is SupportStatus.UNLISTED_CLASS_COMPLIANT
    assert "opens it anyway" in unlisted.message
    assert db.support_status(0x1234, 0x5678).status is SupportStatus.UNKNOWN
    assert db.support_status(0x1234, 0x5678, interface_class=0xFF).status is SupportStatus.UNKNOWN
    bad = db.support_status(0x04E6, 0xE001, bcd_device=0x0510)
    assert bad.status is SupportStatus.KNOWN_PROBLEMS
    assert bad.reason and "5.10" in bad.reason and "5.16" in bad.reason
    good = db.support_status(0x04E6, 0xE001, bcd_device=0x0516)
    assert good.status is db.lookup(0x04E6, 0xE001).status  # type: ignore[union-attr]


def test_module_functions_use_the_packaged_database() -> None:
    import ccid

    assert ccid.lookup(0x08E6, 0x3478) is database.lookup(0x08E6, 0x3478)
    assert ccid.is_supported(0x08E6, 0x3478)
    assert ccid.support_status(0x08E6, 0x3478).status is SupportStatus.SUPPORTED
    assert database.descriptor_bytes(0x08E6, 0x3478) is not None
    assert database.find_by_name("GemPCPinpad")
    assert len(database.all_entries()) == len(database.default_database().all_entries())


def test_find_by_name(db: Database) -> None:
    found = db.find_by_name("gempcpinpad")
    assert any(e.id == "08E6:3478" for e in found)
    assert all(e.id != "072F:90CC" for e in found)
    globbed = db.find_by_name("*omnikey*3?21*")
    assert any(e.id == "076B:3031" for e in globbed)
    assert db.find_by_name("no such reader anywhere") == []
    with pytest.raises(UsageError):
        db.find_by_name("  ")


def test_descriptor_bytes_rebuild_the_reader(db: Database, descriptor_corpus: Any) -> None:
    dump = next(d for d in descriptor_corpus["readers"] if d["file"] == "GemPCPinpadv2.txt")
    raw = db.descriptor_bytes(0x08E6, 0x3478)
    assert raw is not None and len(raw) == 54
    assert parse_ccid_descriptor(raw).bPINSupport == 3
    assert db.lookup(0x08E6, 0x3478, 0x0211).raw_descriptor == (  # type: ignore[union-attr]
        CCIDDescriptor.from_fields(dump["interfaces"][0]).to_bytes()
    )
    assert db.descriptor_bytes(0x1234, 0x5678) is None


# --- firmware ----------------------------------------------------------------------------

LIBCCID_BOGUS_FIRMWARE = {  # ccid_usb.c Bogus_firmwares[] at 1.8.2 (O2Micro patch on)
    (0x04E6, 0xE001): 0x0516, (0x04E6, 0x5111): 0x0620, (0x04E6, 0xE003): 0x0510,
    (0x0D46, 0x3001): 0x0037, (0x0D46, 0x3002): 0x0037, (0x09C3, 0x0008): 0x0203,
    (0x0DC3, 0x1004): 0x0502, (0x0DC3, 0x1102): 0x0607, (0x058F, 0x9520): 0x0102,
    (0x072F, 0x2200): 0x0206, (0x08C3, 0x0402): 0x5000, (0x08C3, 0x0401): 0x5000,
    (0x0B0C, 0x0050): 0x0101, (0x0DC3, 0x0900): 0x0200, (0x03F0, 0x0036): 0x0124,
    (0x062D, 0x0001): 0x0102, (0x04E6, 0x5291): 0x0112,
}


def test_minimum_firmware_table(db: Database, yaml_data: dict[str, Any]) -> None:
    assert len(yaml_data["minimum_firmware"]) == 17
    for (vid, pid), minimum in LIBCCID_BOGUS_FIRMWARE.items():
        assert db.min_firmware(vid, pid) == minimum
        assert db.check_firmware(vid, pid, minimum) is None
        with pytest.raises(UnsupportedReaderError) as info:
            db.check_firmware(vid, pid, minimum - 1, reader="r")
        text = str(info.value)
        assert format_bcd(minimum - 1) in text and format_bcd(minimum) in text
        assert "upgrade" in text and "allow_bad_firmware" in text and info.value.reader == "r"
        warning = db.check_firmware(vid, pid, minimum - 1, allow_bad_firmware=True)
        assert warning is not None and "upgrade" in warning
    assert db.min_firmware(0x08E6, 0x3478) is None
    assert db.check_firmware(0x08E6, 0x3478, 0) is None


# --- quirks matching ---------------------------------------------------------------------


def test_quirk_matching_conditions(db: Database) -> None:
    ids = lambda **kw: [q.id for q in db.quirks_for(**kw)]  # noqa: E731
    # bcdDevice range: SafeNet eToken 5100 firmware 0.12 and 0.13 only
    assert "etoken-no-ifsd" in ids(vid=0x0529, pid=0x0620, bcd_device=0x0012)
    assert "etoken-no-ifsd" in ids(vid=0x0529, pid=0x0620, bcd_device=0x0013)
    assert "etoken-no-ifsd" not in ids(vid=0x0529, pid=0x0620, bcd_device=0x0014)
    assert "etoken-no-ifsd" not in ids(vid=0x0529, pid=0x0620)
    # vendor-wide rule
    assert "gemalto-firmware-features" in ids(vid=0x08E6, pid=0xFFFF)
    # interface protocol (ICCD-B), from the caller or from the dump
    assert "iccd-b-extended-apdu" in ids(vid=0x1234, pid=0x5678, interface_protocol=2)
    assert "iccd-b-extended-apdu" not in ids(vid=0x1234, pid=0x5678, interface_protocol=0)
    assert "iccd-b-extended-apdu" in ids(vid=0x1A74, pid=0x6354)
    # card ATR, any reader
    atr = bytes.fromhex("3BFA1300FF813180450031C173C00100009000B1")
    assert ids(vid=0x1234, pid=0x5678, atr=atr) == ["openpgp-card-bwi"]
    assert ids(vid=0x1234, pid=0x5678, atr=atr[:-1] + b"\x00") == []
    assert ids(vid=0x1234, pid=0x5678) == []
    # minimum firmware comes first
    assert ids(vid=0x04E6, pid=0xE001)[0] == "minimum-firmware"
    # results are copies
    first = db.quirks_for(0x08E6, 0x3478)
    first.clear()
    assert db.quirks_for(0x08E6, 0x3478)


def test_entry_quirk_ids_match_quirks_for(db: Database) -> None:
    for entry in db.all_entries():
        assert entry.quirks == tuple(q.id for q in db.quirks_for(entry.vid, entry.pid))


# --- the cache ---------------------------------------------------------------------------


def test_cache_and_yaml_give_the_same_database(db: Database, yaml_db: Database) -> None:
    assert db.ids() == yaml_db.ids()
    assert db.lines() == yaml_db.lines()
    for key in db.ids():
        vid, pid = (int(p, 16) for p in key.split(":"))
        assert db.variants(vid, pid) == yaml_db.variants(vid, pid)
        assert db.quirks_for(vid, pid) == yaml_db.quirks_for(vid, pid)
        assert db.min_firmware(vid, pid) == yaml_db.min_firmware(vid, pid)


MINI = """\
schema: 1
source: {repository: "r", commit: "c", commit_date: "d", release: "1"}
lines:
- {line: 1, section: supported, vid: 0x1111, pid: 0x2222, vendor: "V", name: "V Reader"}
devices: {}
rules:
- quirks: [no-pinpad]
  match:
  - {vid: 0x1111}
minimum_firmware: []
notes: {}
"""


def test_stale_cache_is_ignored(tmp_path: Path) -> None:
    yaml_file = tmp_path / "readers.yaml"
    yaml_file.write_text(MINI, encoding="utf-8")
    cache_file = tmp_path / "readers.cache"
    cache_file.write_text(
        database.render_cache(MINI, database.parse_yaml(MINI)), encoding="utf-8"
    )
    fresh = database.load_database(yaml_file)
    assert fresh.origin == str(cache_file)
    assert fresh.lookup(0x1111, 0x2222).name == "V Reader"  # type: ignore[union-attr]
    yaml_file.write_text(MINI.replace("V Reader", "Edited"), encoding="utf-8")
    edited = database.load_database(yaml_file)
    assert edited.origin == str(yaml_file)
    assert edited.lookup(0x1111, 0x2222).name == "Edited"  # type: ignore[union-attr]
    cache_file.write_text("garbage\n", encoding="utf-8")
    assert database.load_database(yaml_file).origin == str(yaml_file)
    with pytest.raises(DatabaseError):
        database.load_database(tmp_path / "missing.yaml")


def test_use_database_switches_the_module_functions(tmp_path: Path) -> None:
    mini = Database.from_data(database.parse_yaml(MINI), "mini")
    try:
        database.use_database(mini)
        assert database.is_supported(0x1111, 0x2222)
        assert not database.is_supported(0x08E6, 0x3478)
    finally:
        database.use_database(None)
    assert database.is_supported(0x08E6, 0x3478)


def test_import_ccid_loads_nothing_and_lookup_needs_no_yaml() -> None:
    code = (
        "import sys, ccid\n"
        "assert 'ccid.database' not in sys.modules and 'yaml' not in sys.modules\n"
        "assert ccid.lookup(0x08E6, 0x3478) is not None\n"
        "assert 'yaml' not in sys.modules, 'the cache path must not import yaml'\n"
        "assert 'ccid.quirks' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- schema ------------------------------------------------------------------------------


def _error(text: str) -> str:
    with pytest.raises(DatabaseError) as info:
        database.parse_yaml(text, "t.yaml")
    return str(info.value)


def test_schema_accepts_the_minimal_database() -> None:
    data = database.parse_yaml(MINI)
    assert data["lines"][0]["name"] == "V Reader"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('name: "V Reader"}', 'name: "V Reader", colour: red}', ["t.yaml:4:", "lines[0]",
                                                                 "0x2222", "'colour'"]),
        ("section: supported", "section: great", ["t.yaml:4:", "'great'"]),
        ("vid: 0x1111, pid", "vid: 0x11111, pid", ["t.yaml:4:", "out of range"]),
        ("vid: 0x1111, pid", 'vid: "0x1111", pid', ["t.yaml:4:", "an integer"]),
        ("[no-pinpad]", "[no-such-quirk]", ["t.yaml:7:", "rules[0]", "'no-such-quirk'"]),
        ("  - {vid: 0x1111}", "  - {pid: 0x1111}", ["t.yaml:9:", "pid needs vid"]),
        ("  - {vid: 0x1111}", "  - {}", ["t.yaml:9:", "every reader"]),
        ("  - {vid: 0x1111}", "  - {atr: '3B00', atr_mask: 'FF'}", ["differ in length"]),
        ("  - {vid: 0x1111}", "  - {atr: 'xyz'}", ["not hex"]),
        ("  - {vid: 0x1111}", "  - {vid: 1, bcd_device: {min: 2, max: 1}}", ["above max"]),
        ("notes: {}", 'notes: {"08e6:3478": "x"}', ["t.yaml:11:", "VVVV:PPPP"]),
        ("notes: {}", "notes: {}\nextra: 1", ["t.yaml:12:", "top level", "'extra'"]),
        ("schema: 1", "schema: 2", ["schema 2"]),
        ("devices: {}", "devices: []", ["t.yaml:5:", "expected a mapping"]),
        ("minimum_firmware: []", "minimum_firmware: [{vid: 1}]",
         ["t.yaml:10:", "minimum_firmware[0]", "missing key"]),
        ("lines:\n", "lines:\n- !!python/object:os.system {}\n",
         ["t.yaml:4:", "not allowed"]),
        ("- {line: 1", "- {line: 1 :: [", ["t.yaml:4:", "not valid YAML"]),
    ],
)
def test_schema_errors_name_entry_and_line(old: str, new: str, expected: list[str]) -> None:
    assert old in MINI
    message = _error(MINI.replace(old, new, 1))
    for part in expected:
        assert part in message, message


def test_schema_rejects_empty_and_duplicate_keys() -> None:
    assert "empty" in _error("")
    assert "twice" in _error(MINI.replace("schema: 1\n", "schema: 1\nschema: 1\n"))


@settings(max_examples=300)
@given(st.integers(0, len(MINI) - 1), st.text(min_size=0, max_size=4))
def test_schema_never_crashes_on_edits(position: int, insert: str) -> None:
    text = MINI[:position] + insert + MINI[position + 1:]
    try:
        data = database.parse_yaml(text, "t.yaml")
    except DatabaseError:
        return
    Database.from_data(data, "t")


def test_parse_vid_pid() -> None:
    assert database.parse_vid_pid("08E6:3478") == (0x08E6, 0x3478)
    assert database.parse_vid_pid(" 0x08e6:0x3478 ") == (0x08E6, 0x3478)
    assert database.parse_vid_pid("8e6 3478") == (0x08E6, 0x3478)
    for bad in ["", "08E6", "08E6:34789", "zz:12"]:
        with pytest.raises(UsageError):
            database.parse_vid_pid(bad)


def test_entry_views(db: Database) -> None:
    entry = db.lookup(0x08E6, 0x3478)
    assert entry is not None
    assert entry.id == "08E6:3478" and entry.supported
    assert entry.status is SupportStatus.SUPPORTED
    assert entry.exchange_level is ExchangeLevel.TPDU
    with pytest.raises(AttributeError):
        entry.name = "x"  # type: ignore[misc]
