"""udev rules: committed file == generator output, and every line well-formed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from ccid import database, errors, udev

# udev keys: which may be matched, which assigned (man 7 udev)
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "ATTR", "ATTRS", "ENV", "TEST",
              "TAG", "DRIVER", "DRIVERS", "DEVPATH", "PROGRAM", "RESULT"}
ASSIGN_KEYS = {"GROUP", "OWNER", "MODE", "TAG", "ENV", "ATTR", "RUN", "GOTO", "LABEL",
               "SYMLINK", "NAME", "IMPORT", "OPTIONS"}
WITH_ARG = {"ATTR", "ATTRS", "ENV", "TEST", "IMPORT", "RUN"}
TOKEN = re.compile(r'([A-Z]+)(?:\{([^}]+)\})?(==|!=|\+=|-=|:=|=)"([^"]*)"')


def parse_rule(line: str) -> list[tuple[str, str | None, str, str]]:
    """Split a rule line into (key, attribute, operator, value); fail on anything else."""
    out = []
    pos = 0
    while pos < len(line):
        m = TOKEN.match(line, pos)
        assert m, f"bad token at {pos}: {line!r}"
        key, attr, op, value = m.groups()
        assert (attr is not None) == (key in WITH_ARG) or key == "TEST", line
        if op in ("==", "!="):
            assert key in MATCH_KEYS, f"{key} cannot be matched: {line!r}"
        else:
            assert key in ASSIGN_KEYS, f"{key} cannot be assigned: {line!r}"
        out.append((key, attr, op, value))
        pos = m.end()
        if pos < len(line):
            assert line[pos:pos + 2] == ", ", f"separator at {pos}: {line!r}"
            pos += 2
    assert out
    return out


def rules_of(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    rules = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rules.append(parse_rule(line))
    return rules


@pytest.fixture(scope="module")
def committed() -> str:
    return Path(udev.RULES_PATH).read_text(encoding="utf-8")


def test_committed_rules_equal_generator_output(committed: str) -> None:
    assert committed == udev.render_rules()


def test_check_from_the_command_line() -> None:
    result = subprocess.run([sys.executable, "-m", "ccid.udev", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_line_is_well_formed(committed: str) -> None:
    rules = rules_of(committed)
    labels = {v for rule in rules for k, _, op, v in rule if k == "LABEL"}
    for rule in rules:
        for key, attr, op, value in rule:
            if key == "GOTO":
                assert value in labels
            if key in ("ATTR", "ATTRS") and attr in ("idVendor", "idProduct"):
                assert op == "=="
                assert re.fullmatch(r"[0-9a-f]{4}", value), f"{attr} {value!r}"
            assert key != "MODE", "never MODE: the group (or uaccess) gives access"
    for rule in rules_of(udev.render_rules(uaccess=True)):
        for key, _, _, _ in rule:
            assert key != "MODE"


def test_structure(committed: str) -> None:
    rules = rules_of(committed)
    first = rules[0]
    assert first[0] == ("ACTION", None, "==", "remove") and first[1][0] == "GOTO"
    assert 'ACTION!="add"' not in committed
    assert rules[1][0] == ("SUBSYSTEM", None, "!=", "usb")
    class_rule = next(r for r in rules if r[0] == ("ENV", "ID_USB_INTERFACES", "==", "*:0b0000:*"))
    assert ("GROUP", None, "=", "pcscd") in class_rule
    flat = [item for rule in rules for item in rule]
    assert ("ATTR", "power/persist", "=", "0") in flat
    assert ("ATTR", "power/control", "=", "auto") in flat


def test_proprietary_readers_and_autosuspend(committed: str, descriptor_corpus: Any) -> None:
    db = database.default_database()
    listed = {(ln.vid, ln.pid) for ln in db.lines()
              if db.lookup(ln.vid, ln.pid).status is not database.SupportStatus.DISABLED}
    expected = {
        (d["idVendor"], d["idProduct"])
        for d in descriptor_corpus["readers"]
        if any(i["interface"]["bInterfaceClass"] == 0xFF for i in d["interfaces"])
        and (d["idVendor"], d["idProduct"]) in listed
    }
    rules = rules_of(committed)
    granted = set()
    for rule in rules:
        fields = {(k, a): v for k, a, _, v in rule}
        if ("GROUP", None) in fields and ("ATTR", "idVendor") in fields:
            granted.add((int(fields[("ATTR", "idVendor")], 16),
                         int(fields[("ATTR", "idProduct")], 16)))
    assert granted == expected and len(expected) >= 16  # 24 of class 0xFF, 8 disabled
    # libccid comments these out of its list, so the database marks them disabled
    assert not granted & {(0x0C4B, 0x0500), (0x1DB2, 0x0604)}
    # autosuspend exceptions jump over the power/control rule
    text_rules = [r for r in rules]
    control = next(i for i, r in enumerate(text_rules)
                   if ("ATTR", "power/control", "=", "auto") in r)
    for vid, pid, _ in udev.AUTOSUSPEND_BROKEN:
        index = next(i for i, r in enumerate(text_rules)
                     if ("ATTR", "idVendor", "==", f"{vid:04x}") in r
                     and ("ATTR", "idProduct", "==", f"{pid:04x}") in r
                     and r[-1][0] == "GOTO")
        assert index < control


def test_uaccess_differs_only_as_intended(committed: str) -> None:
    plain = committed.splitlines()
    uaccess = udev.render_rules(uaccess=True).splitlines()
    assert len(plain) == len(uaccess)
    changed = 0
    for a, b in zip(plain, uaccess):
        if a == b:
            continue
        if a.startswith("#"):
            assert b.startswith("#")
            continue
        assert b == a + ', TAG+="uaccess"' and 'GROUP="pcscd"' in a
        changed += 1
    grants = sum(1 for r in rules_of(committed) if ("GROUP", None, "=", "pcscd") in r)
    assert changed == grants
    assert udev.UACCESS_FILENAME < "73" and udev.UACCESS_FILENAME in "\n".join(uaccess)


def test_names_never_collide_with_libccid_and_uaccess_sorts_before_73() -> None:
    assert udev.RULES_FILENAME != udev.LIBCCID_FILENAME != udev.UACCESS_FILENAME
    assert udev.UACCESS_FILENAME < "73-seat-late.rules"
    assert Path(udev.UACCESS_PATH).read_text(encoding="utf-8") == udev.render_rules(uaccess=True)
    assert not (ROOT / "rules" / udev.LIBCCID_FILENAME).exists()


def test_kobil_midentity_switch_rule(committed: str) -> None:
    rule = next(r for r in rules_of(committed) if ("ATTR", "idVendor", "==", "0d46") in r)
    assert ("ATTR", "idProduct", "==", "4081") in rule
    assert ("TEST", None, "==", udev.KOBIL_SWITCH) in rule
    assert ("RUN", "program", "+=", udev.KOBIL_SWITCH) in rule


def test_group_option() -> None:
    text = udev.render_rules(group="smartcard")
    grants = [r for r in rules_of(text) if any(k == "GROUP" for k, *_ in r)]
    assert grants and all(("GROUP", None, "=", "smartcard") in r for r in grants)
    assert "groupadd --system smartcard" in text and 'GROUP="pcscd"' not in text
    assert "groupadd --system pcscd" in udev.render_rules()
    for bad in ("", "Root", "a b", 'x"', "-x", "x" * 40, "wheel,adm"):
        with pytest.raises(errors.UsageError):
            udev.render_rules(group=bad)
