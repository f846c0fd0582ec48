"""udev rules giving access to CCID readers, rendered from the reader database.

Two modes:

* default (``rules/92-ccid-python.rules``): the readers belong to a group (``pcscd`` by
  default: pcsc-lite 2.4.0+ creates it and runs pcscd as that user; elsewhere create it with
  ``groupadd --system pcscd`` or pick another with ``group=``). A program using ``ccid``
  directly must run in that group.
* ``uaccess=True`` (``rules/70-ccid-uaccess.rules``): also ``TAG+="uaccess"``, so the user
  logged in at the seat gets access (and nobody else). systemd acts on that tag in
  ``73-seat-late.rules``, so this variant must be installed under a name sorting before
  ``73`` (``UACCESS_FILENAME``).

The file names differ from the distribution's libccid ``92_pcscd_ccid.rules``: installing
ours never replaces theirs. Never ``MODE="0666"``: every local user and service could then
talk to the cards.

    python -m ccid.udev [--uaccess] [--group NAME] [--check | --write]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from ccid import database
from ccid.errors import UsageError

__all__ = [
    "AUTOSUSPEND_BROKEN",
    "DEFAULT_GROUP",
    "LIBCCID_FILENAME",
    "RULES_DIR",
    "RULES_FILENAME",
    "RULES_PATH",
    "UACCESS_FILENAME",
    "UACCESS_PATH",
    "check_group",
    "filename",
    "proprietary_class_readers",
    "render_rules",
]

#: Group mode's file: not libccid's name, so installing it never replaces the distribution's.
RULES_FILENAME = "92-ccid-python.rules"
#: uaccess mode's file: sorts before systemd's 73-seat-late.rules, which acts on the tag.
UACCESS_FILENAME = "70-ccid-uaccess.rules"
#: The distribution's libccid rules file (pcscd's readers), which ours must not overwrite.
LIBCCID_FILENAME = "92_pcscd_ccid.rules"
DEFAULT_GROUP = "pcscd"
RULES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rules")
RULES_PATH = os.path.join(RULES_DIR, RULES_FILENAME)
UACCESS_PATH = os.path.join(RULES_DIR, UACCESS_FILENAME)
# what groupadd accepts (shadow-utils' default NAME_REGEX, with the trailing $ of machine
# accounts), which is also safe inside a udev rule's double quotes
_GROUP_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
#: Kobil mIDentity: starts as a mass-storage device; libccid's rules run its switch program
#: (shipped with libccid) to bring up the CCID interface. Guarded: only where it is installed.
KOBIL_SWITCH = "/usr/sbin/Kobil_mIDentity_switch"
KOBIL_MIDENTITY = (0x0D46, 0x4081)
_END = "pcscd_ccid_rules_end"
CLASS_MATCH = 'ENV{ID_USB_INTERFACES}=="*:0b0000:*"'
#: Marks the devices matched here, for the power-management rules below them.
_FLAG_NAME = "CCID_READER"
_FLAG = f'ENV{{{_FLAG_NAME}}}="1"'

#: Readers that stop working with USB autosuspend: (vid, pid, name).
AUTOSUSPEND_BROKEN: tuple[tuple[int, int, str], ...] = (
    (0x0783, 0x0003, "C3PO LTC31 v1"),
    (0x058F, 0x9520, "Alcor Micro AU9520"),
)


def proprietary_class_readers(
    db: database.Database | None = None,
) -> list[tuple[int, int, str, str]]:
    """Listed readers with a CCID interface of class 0xFF: (vid, pid, name, dump file).

    Readers the database marks disabled (libccid comments them out) are left out.
    """
    db = db or database.default_database()
    found: dict[tuple[int, int], tuple[int, int, str, str]] = {}
    for key in db.ids():
        vid, pid = (int(part, 16) for part in key.split(":"))
        entry = db.lookup(vid, pid)
        if entry is None or entry.status is database.SupportStatus.DISABLED:
            continue
        for variant in db.variants(vid, pid):
            if variant.interface_class == 0xFF and (vid, pid) not in found:
                found[(vid, pid)] = (vid, pid, variant.name, variant.dump or "")
    return sorted(found.values())


def _device(vid: int, pid: int) -> str:
    # lowercase: udev compares the sysfs text, and sysfs prints idVendor in lowercase
    return f'ATTR{{idVendor}}=="{vid:04x}", ATTR{{idProduct}}=="{pid:04x}"'


def check_group(group: str) -> str:
    """``group`` when it is a valid group name; ``UsageError`` naming the problem otherwise."""
    if not isinstance(group, str) or not _GROUP_NAME.fullmatch(group):
        raise UsageError(f"not a valid group name: {group!r} (lowercase letters, digits, _ "
                         "and -, starting with a letter or _, at most 32 characters)")
    return group


def filename(uaccess: bool = False) -> str:
    """The file name to install the rules under (uaccess: one sorting before 73)."""
    return UACCESS_FILENAME if uaccess else RULES_FILENAME


def render_rules(
    uaccess: bool = False, db: database.Database | None = None, group: str = DEFAULT_GROUP
) -> str:
    """The rules file text (default: group ``group``; ``uaccess``: also the seat's user)."""
    check_group(group)
    db = db or database.default_database()
    access = f'GROUP="{group}"' + (', TAG+="uaccess"' if uaccess else "")
    source = db.source
    name = filename(uaccess)
    out = [
        f"# {name}: udev rules for USB CCID smart-card readers.",
        "# Generated by ccid.udev from ccid/readers.yaml (libccid "
        f"{source.get('release', '?')} reader list); do not edit, regenerate.",
        f"# Named apart from libccid's {LIBCCID_FILENAME}, which it must not replace.",
    ]
    if group == DEFAULT_GROUP:
        out += [
            "# Group pcscd: pcsc-lite 2.4.0+ creates it; elsewhere `groupadd --system pcscd`",
            "# first (or regenerate with `ccid udev-rules --group NAME`).",
        ]
    else:
        out += [f"# Group {group}: create it first if needed (`groupadd --system {group}`)."]
    if uaccess:
        out += [
            "# uaccess mode: that group, and the user logged in at the seat (TAG uaccess).",
            "# Install under a name sorting before 73 (systemd's 73-seat-late.rules acts on",
            f"# the tag): /etc/udev/rules.d/{UACCESS_FILENAME}",
        ]
    else:
        out += [
            "# Group mode: a program using ccid directly must run in that group (or use the",
            "# uaccess variant, which also gives the seat's user access). Install as",
            f"# /etc/udev/rules.d/{RULES_FILENAME}",
        ]
    out += [
        "",
        "# Not on remove: change events must keep the group too.",
        f'ACTION=="remove", GOTO="{_END}"',
        f'SUBSYSTEM!="usb", GOTO="{_END}"',
        f'ENV{{DEVTYPE}}!="usb_device", GOTO="{_END}"',
        "",
        "# Every CCID class device (an interface of class 0x0B).",
        f"{CLASS_MATCH}, {_FLAG}, {access}",
        "",
        "# Listed readers whose CCID interface has the proprietary class 0xFF.",
    ]
    for vid, pid, reader, dump in proprietary_class_readers(db):
        out.append(f"# {reader} ({dump})")
        out.append(f"{_device(vid, pid)}, {_FLAG}, {access}")
    kvid, kpid = KOBIL_MIDENTITY
    out += [
        "",
        "# Kobil mIDentity: shows up as mass storage; libccid's switch program (where it is",
        "# installed) turns on its CCID interface.",
        f'{_device(kvid, kpid)}, TEST=="{KOBIL_SWITCH}", RUN{{program}}+="{KOBIL_SWITCH}"',
        "",
        "# Power management, for the readers matched above only.",
        f'ENV{{{_FLAG_NAME}}}!="1", GOTO="{_END}"',
        "# No USB persist: a reader unplugged during suspend must be seen as gone.",
        'TEST=="power/persist", ATTR{power/persist}="0"',
        "# USB autosuspend on, except for readers that break with it.",
    ]
    for vid, pid, reader in AUTOSUSPEND_BROKEN:
        out.append(f"# {reader}")
        out.append(f'{_device(vid, pid)}, GOTO="{_END}"')
    out.append('TEST=="power/control", ATTR{power/control}="auto"')
    out += ["", f'LABEL="{_END}"', ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print, check or write the committed rules")
    parser.add_argument("--uaccess", action="store_true", help='add TAG+="uaccess"')
    parser.add_argument("--group", default=DEFAULT_GROUP, help="group (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help=f"compare both modes with the files in {RULES_DIR}")
    parser.add_argument("--write", action="store_true", help=f"write both files in {RULES_DIR}")
    args = parser.parse_args(argv)
    if args.check or args.write:
        if args.uaccess or args.group != DEFAULT_GROUP:
            parser.error("--check and --write cover the committed files (both modes, pcscd)")
        stale = []
        for path, uaccess in ((RULES_PATH, False), (UACCESS_PATH, True)):
            text = render_rules(uaccess=uaccess)
            if args.write:
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(text)
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    same = fh.read() == text
            except OSError:
                same = False
            if not same:
                stale.append(path)
        for path in stale:
            print(f"{path} differs: run python -m ccid.udev --write", file=sys.stderr)
        return 1 if stale else 0
    try:
        text = render_rules(uaccess=args.uaccess, group=args.group)
    except UsageError as exc:
        parser.error(str(exc))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
