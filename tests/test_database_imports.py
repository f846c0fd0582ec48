"""The reader database's cold start: what a first lookup imports, and the light value classes.

The lookup path avoids ``dataclasses``, ``json``, ``ccid.constants`` and friends (see the
``ccid.database`` docstring); these tests keep it so, and prove that the hand-written value
classes and the C-scanner cache reader behave as the dataclasses and ``json.loads`` did.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from ccid import database
from ccid.constants import ExchangeLevel, Features, PINSupport, Protocols, Voltage
from ccid.database import Database, ListedLine, ReaderEntry, SupportAnswer, SupportStatus

# Modules the first lookup must not import when ``import ccid`` has not already done so.
# ``enum`` is not listed: SupportStatus is an Enum, and on Python 3.10-3.12 ``import ccid``
# already imports enum (typing imports re, re imports enum); 3.13 pays for it at lookup.
HEAVY = (
    "dataclasses", "inspect", "json", "re", "pathlib", "yaml",
    "ccid.constants", "ccid.descriptor", "ccid.errors", "ccid.quirks", "ccid.database.schema",
)
# Everything a first lookup may import: the package and its cold-path modules, the C JSON
# scanner, zlib (the cache's hash check), on 3.13 enum (see above), and os with what it
# imports (the data files' paths): the interpreter loads those at start-up, except Python
# 3.10 without site (-S), where the first lookup does.
COLD_PATH = frozenset({
    "ccid.database", "ccid.database.lookups", "ccid.database.entries", "ccid.database.cache",
    "_json", "zlib", "enum",
    "os", "os.path", "posixpath", "genericpath", "stat", "_stat",
})

PROBE = """
import sys
sys.path.insert(0, {root!r})
import ccid
before = set(sys.modules)
{calls}
print(" ".join(sorted(set(sys.modules) - before)))
"""

LOOKUP_PATH = """
entry = ccid.lookup(0x08E6, 0x3478)
assert entry is not None and entry.name
assert ccid.is_supported(0x08E6, 0x3478)
assert ccid.support_status(0x08E6, 0x3478).entry is entry
assert ccid.support_status(0x1234, 0x5678, interface_class=0x0B).entry is None
from ccid import database
assert database.lookup(0x08E6, 0x3478, 0x0100, 0) is not None
assert database.lookup(0x1234, 0x5678) is None
assert database.quirks_for(0x1234, 0x5678) == []
assert entry.quirks and entry.raw_descriptor
"""


def _new_modules(calls: str, *flags: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, *flags, "-c", PROBE.format(root=str(ROOT), calls=calls)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


# -I -S: a bare interpreter (no site, no .pth imports), as an installed package sees it
@pytest.mark.parametrize("flags", [(), ("-I", "-S")], ids=["site", "isolated"])
def test_first_lookup_imports_nothing_heavy(flags: tuple[str, ...]) -> None:
    new = _new_modules(LOOKUP_PATH, *flags)
    assert "ccid.database.lookups" in new  # the probe did exercise the database
    assert not new & set(HEAVY), sorted(new & set(HEAVY))
    assert new <= COLD_PATH, sorted(new - COLD_PATH)


def test_capability_flags_import_constants_on_first_access() -> None:
    new = _new_modules(
        "entry = ccid.lookup(0x08E6, 0x3478)\n"
        "assert 'ccid.constants' not in sys.modules\n"
        "from ccid.constants import ExchangeLevel, Features\n"
        "assert entry.exchange_level is ExchangeLevel.TPDU\n"
        "assert type(entry.features) is Features\n",
        "-I", "-S",
    )
    assert "ccid.constants" in new


# --- the value classes behave as the frozen dataclasses they replace --------------------


@pytest.fixture(scope="module")
def db() -> Database:
    return database.load_database()


@pytest.fixture(scope="module")
def yaml_db() -> Database:
    return database.load_database(use_cache=False)


READER_ENTRY_FIELDS = [
    "vid", "pid", "name", "vendor", "section", "line", "aliases", "note", "quirks",
    "min_firmware", "dump", "bcd_device", "manufacturer", "product", "interface_count",
    "interface_numbers", "interface_names", "interface_class", "interface_subclass",
    "interface_protocol", "has_interrupt", "ccid_version", "exchange_level", "protocols",
    "voltages", "slots", "max_message_length", "max_ifsd", "pin_support", "lcd_layout",
    "features", "default_clock_khz", "max_clock_khz", "clocks_khz", "default_data_rate",
    "max_data_rate", "data_rates", "raw_descriptor",
]


def test_dataclass_helpers_work(db: Database) -> None:
    entry = db.lookup(0x08E6, 0x3478)
    assert entry is not None
    assert dataclasses.is_dataclass(entry) and dataclasses.is_dataclass(ReaderEntry)
    assert [f.name for f in dataclasses.fields(entry)] == READER_ENTRY_FIELDS
    as_dict = dataclasses.asdict(entry)
    assert list(as_dict) == READER_ENTRY_FIELDS
    assert as_dict["exchange_level"] is ExchangeLevel.TPDU and as_dict["name"] == entry.name
    renamed = dataclasses.replace(entry, name="renamed")
    assert renamed.name == "renamed" and renamed != entry
    assert dataclasses.replace(renamed, name=entry.name) == entry
    answer = db.support_status(0x08E6, 0x3478)
    assert [f.name for f in dataclasses.fields(answer)] == [
        "status", "vid", "pid", "entry", "reason"]
    assert dataclasses.asdict(answer)["status"] is SupportStatus.SUPPORTED
    line = db.lines()[0]
    assert [f.name for f in dataclasses.fields(line)] == [
        "line", "section", "vid", "pid", "vendor", "name", "dump"]


def test_frozen(db: Database) -> None:
    entry = db.lookup(0x08E6, 0x3478)
    assert entry is not None
    answer = db.support_status(0x08E6, 0x3478)
    line = db.lines()[0]
    for value, name in [(entry, "name"), (entry, "features"), (entry, "unknown"),
                        (answer, "status"), (line, "line")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(value, name)
    assert not hasattr(entry, "__dict__")  # slots: no stray attributes


def test_equality_hash_repr(db: Database, yaml_db: Database) -> None:
    entry = db.lookup(0x08E6, 0x3478)
    twin = yaml_db.lookup(0x08E6, 0x3478)
    other = db.lookup(0x08E6, 0x3437)
    assert entry is not None and twin is not None and other is not None
    assert entry == twin and hash(entry) == hash(twin) and entry is not twin
    assert entry != other and entry != (entry.vid, entry.pid) and entry != object()
    assert len({entry, twin, other}) == 2
    text = repr(entry)
    assert text.startswith(f"ReaderEntry(vid=2278, pid=13432, name={entry.name!r}, ")
    assert "exchange_level=<ExchangeLevel.TPDU: 65536>" in text
    assert text.endswith(f"raw_descriptor={entry.raw_descriptor!r})")
    assert repr(ListedLine(1, "supported", 1, 2, None, "n")) == (
        "ListedLine(line=1, section='supported', vid=1, pid=2, vendor=None, name='n', dump=None)"
    )
    answer = SupportAnswer(SupportStatus.UNKNOWN, 1, 2, None, "why")
    assert answer == SupportAnswer(SupportStatus.UNKNOWN, 1, 2, None, "why")
    assert answer != SupportAnswer(SupportStatus.UNKNOWN, 1, 2, None, "other")
    assert str(answer) == "0001:0002 is not listed: why"


def test_copy_pickle_and_match(db: Database) -> None:
    entry = db.lookup(0x08E6, 0x3478)
    answer = db.support_status(0x08E6, 0x3478)
    for value in (entry, answer, db.lines()[5]):
        assert copy.copy(value) == value
        assert copy.deepcopy(value) == value
        assert pickle.loads(pickle.dumps(value)) == value
    match entry:
        case ReaderEntry(vid=0x08E6, pid=pid, exchange_level=ExchangeLevel.TPDU):
            assert pid == 0x3478
        case _:
            pytest.fail("keyword pattern did not match")
    match answer:
        case SupportAnswer(SupportStatus.SUPPORTED, vid, pid):
            assert (vid, pid) == (0x08E6, 0x3478)
        case _:
            pytest.fail("positional pattern did not match")


def test_capability_flags_have_their_types(db: Database) -> None:
    checked = 0
    for entry in db.all_entries():
        descriptor = entry.descriptor()
        if descriptor is None:
            assert entry.features is None and entry.protocols is None
            continue
        assert type(entry.exchange_level) is ExchangeLevel
        assert type(entry.protocols) is Protocols
        assert type(entry.voltages) is Voltage
        assert type(entry.pin_support) is PINSupport
        assert type(entry.features) is Features
        assert entry.features == descriptor.dwFeatures
        assert entry.exchange_level is descriptor.exchange_level
        assert entry.protocols == descriptor.protocols
        assert entry.voltages == descriptor.voltages
        assert entry.pin_support == descriptor.pin_support
        checked += 1
    assert checked > 300


def test_explicit_construction_keeps_values() -> None:
    entry = ReaderEntry(1, 2, "n", None, "supported", 7, (), None, (), None,
                        features=Features.AUTO_BAUD, protocols=Protocols.T1)
    assert entry.features is Features.AUTO_BAUD and entry.protocols is Protocols.T1
    assert entry.exchange_level is None and entry.data_rates == ()
    assert entry == ReaderEntry(vid=1, pid=2, name="n", vendor=None, section="supported",
                                line=7, aliases=(), note=None, quirks=(), min_firmware=None,
                                features=Features.AUTO_BAUD, protocols=Protocols.T1)
    with pytest.raises(TypeError):
        ReaderEntry(1, 2)  # type: ignore[call-arg]


# --- the cache reader -------------------------------------------------------------------


def test_cache_lines_decode_as_json_does() -> None:
    loads = database._json_loads()
    lines = Path(database.CACHE_PATH).read_text(encoding="utf-8").splitlines()
    assert len(lines) > 600
    for line in lines:
        text = line.split("\t", 1)[-1]
        assert loads(text) == json.loads(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values, st.booleans())
def test_json_scanner_matches_json_loads(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))
    decoded = database._json_loads()(text)
    assert decoded == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", "[1,", '{"a":1} x', " 1", "NaN", "[Infinity]", "'a'"])
def test_json_scanner_rejects_what_is_not_one_json_value(text: str) -> None:
    with pytest.raises(ValueError):
        database._json_loads()(text)


def test_lookup_then_iteration_sees_every_reader(yaml_db: Database) -> None:
    fresh = database.load_database()
    assert fresh.lookup(0x08E6, 0x3478) == yaml_db.lookup(0x08E6, 0x3478)
    assert fresh.lookup(0xFFFF, 0xFFFF) is None
    assert fresh.ids() == yaml_db.ids()
    assert fresh.lines() == yaml_db.lines()
    assert fresh.all_entries() == yaml_db.all_entries()


def test_cache_with_crlf_line_ends_is_used(tmp_path: Path) -> None:
    yaml_file = tmp_path / "readers.yaml"
    yaml_file.write_bytes(Path(database.YAML_PATH).read_bytes())
    cache = Path(database.CACHE_PATH).read_bytes()
    (tmp_path / "readers.cache").write_bytes(cache.replace(b"\n", b"\r\n"))
    loaded = database.load_database(yaml_file)
    assert loaded.origin.endswith("readers.cache")
    assert loaded.lookup(0x08E6, 0x3478) == database.lookup(0x08E6, 0x3478)
    text = cache.decode("utf-8")
    from_text = Database.from_cache(text, None, "text")
    assert from_text is not None
    assert from_text.lookup(0x08E6, 0x3478) == database.lookup(0x08E6, 0x3478)


@pytest.mark.parametrize("damage", ["empty", "cut", "header only", "meta", "other yaml"])
def test_damaged_cache_is_refused(damage: str) -> None:
    cache = Path(database.CACHE_PATH).read_bytes()
    yaml_raw = Path(database.YAML_PATH).read_bytes()
    assert Database.from_cache(cache, yaml_raw, "intact") is not None
    header_end = cache.index(b"\n")
    meta_end = cache.index(b"\n", header_end + 1)
    blob = {
        "empty": b"",
        "cut": cache[:10],
        "header only": cache[:header_end],
        "meta": cache[: meta_end - 5] + cache[meta_end:],
        "other yaml": cache,
    }[damage]
    if damage == "other yaml":
        yaml_raw += b"# edited\n"
    assert Database.from_cache(blob, yaml_raw, "damaged") is None
