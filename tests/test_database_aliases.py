"""A user-supplied reader database with YAML anchors and aliases is refused, file and line
named, before validation walks the tree an alias can make exponentially large."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccid import database
from ccid.errors import DatabaseError

HEAD = """\
schema: 1
source: {repository: "r", commit: "c", commit_date: "d", release: "1"}
"""
TAIL = """\
devices: {}
rules: []
minimum_firmware: []
notes: {}
"""


def test_a_single_alias_is_refused_with_file_and_line() -> None:
    text = HEAD + """\
lines:
- &entry {line: 1, section: supported, vid: 0x1111, pid: 0x2222, vendor: "V", name: "R"}
- *entry
""" + TAIL
    with pytest.raises(DatabaseError, match=r"^t\.yaml:4: YAML anchors and aliases"):
        database.parse_yaml(text, "t.yaml")


def test_nested_aliases_are_refused_before_the_walk(tmp_path: Path) -> None:
    # 12 levels of 9 aliases each: 9**12 leaves if expanded; refused at the first reuse
    levels = ['a0: &a0 {line: 1, section: supported, vid: 1, pid: 2, vendor: "V", name: "R"}']
    for i in range(1, 13):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    text = HEAD + "notes:\n" + "".join(f"  {lvl}\n" for lvl in levels) + \
        "lines: *a12\ndevices: {}\nrules: []\nminimum_firmware: []\n"
    path = tmp_path / "laughs.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatabaseError, match=r"laughs\.yaml:\d+: YAML anchors and aliases"):
        database.load_database(path, use_cache=False)


def test_merge_keys_are_aliases_too() -> None:
    text = HEAD + """\
lines:
- &entry {line: 1, section: supported, vid: 0x1111, pid: 0x2222, vendor: "V", name: "R"}
- {<<: *entry, line: 2, pid: 0x2223}
""" + TAIL
    with pytest.raises(DatabaseError, match="anchors and aliases"):
        database.parse_yaml(text, "t.yaml")


def test_the_packaged_database_has_no_aliases() -> None:
    text = Path(database.YAML_PATH).read_text(encoding="utf-8")
    assert database.parse_yaml(text, "readers.yaml")["lines"]
