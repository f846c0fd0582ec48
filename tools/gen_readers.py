#!/usr/bin/env python3
"""Generate ccid/readers.yaml (and its compiled cache) from libccid's reference corpus.

The generated part comes from ``libccid_supported_readers.json`` (every line of libccid's
``supported_readers.txt``) and ``libccid_reader_descriptors.json`` (the descriptor dumps).
Everything after the ``HAND_WRITTEN_MARKER`` line of the existing file is hand-written
(quirk rules, minimum firmware, notes) and is copied back byte for byte, so regenerating
never loses it.

    python tools/gen_readers.py            # rewrite ccid/readers.yaml and the cache
    python tools/gen_readers.py --check    # exit 1 if either file differs from the output
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ccid.descriptor import CCIDDescriptor  # noqa: E402

YAML_PATH = ROOT / "ccid" / "readers.yaml"
CACHE_PATH = ROOT / "ccid" / "readers.cache"
HAND_WRITTEN_MARKER = "# ==== hand-written below: the generator copies this part verbatim ===="

SUPPORTED = "libccid_supported_readers.json"
DESCRIPTORS = "libccid_reader_descriptors.json"

_LEVELS = {0: "character", 0x10000: "tpdu", 0x20000: "short_apdu", 0x40000: "extended_apdu"}

DEFAULT_HAND_WRITTEN = f"""{HAND_WRITTEN_MARKER}
rules: []
minimum_firmware: []
notes: {{}}
"""


def default_reference() -> Path:
    # tests/data/ carries the corpus (tools/derive_test_data.py keeps it equal to its source),
    # so the database regenerates from a clone alone.
    env = os.environ.get("CCID_REFERENCE")
    return Path(env) if env else ROOT / "tests" / "data"


# --- YAML rendering (by hand: stable, compact, hex where hex reads better) --------------


def q(value: str | None) -> str:
    """A YAML double-quoted scalar (JSON escapes are valid YAML escapes)."""
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=True)
    # YAML refuses raw DEL even inside quotes; JSON leaves it alone.
    return text.replace("\x7f", "\\u007f")


def h(value: int, width: int = 4) -> str:
    return f"0x{value:0{width}X}"


def flow_ints(values: Iterable[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def flow_strs(values: Iterable[str]) -> str:
    return "[" + ", ".join(q(v) for v in values) + "]"


# --- facts from the corpus -------------------------------------------------------------


def _unsigned(iface: Mapping[str, Any], key: str) -> list[int]:
    values = iface.get(f"unsigned_{key}", iface.get(key, []))
    return [int(v) & 0xFFFFFFFF for v in values]


def capabilities(iface: Mapping[str, Any]) -> dict[str, Any]:
    """What one CCID interface can do, as ordered (key, rendered value) pairs."""
    desc = CCIDDescriptor.from_fields(iface)
    usb = iface["interface"]
    caps: dict[str, Any] = {}
    caps["class"] = h(usb["bInterfaceClass"], 2)
    caps["subclass"] = h(usb["bInterfaceSubClass"], 2)
    caps["interface_protocol"] = str(usb["bInterfaceProtocol"])
    caps["endpoints"] = str(usb["bNumEndpoints"])
    caps["interrupt"] = "true" if usb["bNumEndpoints"] == 3 else "false"
    caps["ccid_version"] = q(desc.version)
    caps["exchange_level"] = _LEVELS[int(desc.exchange_level)]
    caps["protocols"] = flow_strs(f"T={n}" for n, bit in ((0, 1), (1, 2)) if desc.dwProtocols & bit)
    caps["voltages"] = flow_strs(
        name for name, bit in (("5.0V", 1), ("3.0V", 2), ("1.8V", 4)) if desc.bVoltageSupport & bit
    )
    caps["slots"] = str(desc.slot_count)
    caps["max_message_length"] = str(desc.dwMaxCCIDMessageLength)
    caps["max_ifsd"] = str(desc.dwMaxIFSD)
    caps["pin"] = flow_strs(
        name for name, bit in (("verify", 1), ("modify", 2)) if desc.bPINSupport & bit
    )
    lcd = desc.lcd_layout
    caps["lcd"] = "null" if lcd is None else flow_ints(lcd)
    caps["features"] = h(desc.dwFeatures, 8)
    caps["default_clock_khz"] = str(desc.dwDefaultClock)
    caps["max_clock_khz"] = str(desc.dwMaximumClock)
    caps["clocks_khz"] = flow_ints(_unsigned(iface, "clock_frequencies_khz"))
    if iface.get("clock_request_error") is not None:
        caps["clocks_error"] = q(iface["clock_request_error"])
    caps["default_data_rate"] = str(desc.dwDataRate)
    caps["max_data_rate"] = str(desc.dwMaxDataRate)
    caps["data_rates"] = flow_ints(_unsigned(iface, "data_rates_bps"))
    if iface.get("data_rates_request_error") is not None:
        caps["data_rates_error"] = q(iface["data_rates_request_error"])
    caps["descriptor"] = q(desc.to_bytes().hex())
    return caps


def interface_groups(dump: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One group per distinct capability set; identical interfaces share one group."""
    groups: list[dict[str, Any]] = []
    for iface in dump["interfaces"]:
        caps = capabilities(iface)
        number = iface["interface"]["bInterfaceNumber"]
        name = iface.get("iInterface")
        for group in groups:
            if group["caps"] == caps:
                group["numbers"].append(number)
                group["names"].append(name)
                break
        else:
            groups.append({"numbers": [number], "names": [name], "caps": caps})
    return groups


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def order_dumps(
    dumps: Sequence[Mapping[str, Any]], main_name: str | None, dup_files: Mapping[str, str]
) -> list[Mapping[str, Any]]:
    """The dump that best describes the listed reader first, then by file name.

    A ``duplicates`` line naming a dump and carrying the main line's name wins; otherwise
    the dump whose file name is closest to the listed name.
    """

    def score(dump: Mapping[str, Any]) -> tuple[int, float, str]:
        file = dump["file"]
        named = 0 if main_name is not None and dup_files.get(file) == main_name else 1
        ratio = 0.0
        if main_name is not None:
            stem = _norm(file.rsplit(".", 1)[0])
            ratio = difflib.SequenceMatcher(None, stem, _norm(main_name)).ratio()
        return (named, -round(ratio, 6), file)

    return sorted(dumps, key=score)


# --- the generated text ----------------------------------------------------------------


def render_generated(supported: Mapping[str, Any], corpus: Mapping[str, Any]) -> str:
    src = supported["source"]
    out: list[str] = [
        "# ccid reader database: which readers exist, what they can do, what their firmware",
        "# gets wrong. Generated by tools/gen_readers.py from libccid's supported_readers.txt",
        "# and descriptor dumps; do not edit above the hand-written marker (regenerate instead).",
        "# Keys are documented in ccid/database/. Integers may be written in hex (0x...).",
        "schema: 1",
        "source:",
        f"  repository: {q(src['repository'])}",
        f"  commit: {q(src['commit'])}",
        f"  commit_date: {q(src['commit_date'])}",
        f"  release: {q('1.8.2')}",
        "",
        "# every line of supported_readers.txt, in file order",
        "lines:",
    ]
    entries = supported["entries"]
    for e in entries:
        fields = [
            f"line: {e['line']}",
            f"section: {e['section']}",
            f"vid: {h(e['vid_int'])}",
            f"pid: {h(e['pid_int'])}",
            f"vendor: {q(e['vendor_group'])}",
            f"name: {q(e['name'])}",
        ]
        if e.get("file"):
            fields.append(f"dump: {q(e['file'])}")
        out.append("- {" + ", ".join(fields) + "}")

    main_names: dict[tuple[int, int], str] = {}
    dup_files: dict[str, str] = {}
    for e in entries:
        key = (e["vid_int"], e["pid_int"])
        if e["section"] == "duplicates":
            if e.get("file"):
                dup_files.setdefault(e["file"], e["name"])
        else:
            main_names.setdefault(key, e["name"])

    by_id: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for dump in corpus["readers"]:
        by_id[(dump["idVendor"], dump["idProduct"])].append(dump)

    out += ["", "# descriptor dumps by VID:PID, the best match for the listed name first"]
    out.append("devices:")
    for vid, pid in sorted(by_id):
        out.append(f"  \"{vid:04X}:{pid:04X}\":")
        for dump in order_dumps(by_id[(vid, pid)], main_names.get((vid, pid)), dup_files):
            out.append(f"  - dump: {q(dump['file'])}")
            out.append(f"    bcd_device: {h(dump['bcdDevice'])}")
            out.append(f"    manufacturer: {q(dump.get('iManufacturer'))}")
            out.append(f"    product: {q(dump.get('iProduct'))}")
            out.append(f"    interface_count: {dump['interface_count']}")
            out.append("    interfaces:")
            for group in interface_groups(dump):
                out.append(f"    - numbers: {flow_ints(group['numbers'])}")
                names = ", ".join(q(n) for n in group["names"])
                out.append(f"      names: [{names}]")
                for key, value in group["caps"].items():
                    out.append(f"      {key}: {value}")
    out.append("")
    return "\n".join(out) + "\n"


def hand_written_part(existing: str | None) -> str:
    if existing is None:
        return DEFAULT_HAND_WRITTEN
    index = existing.find("\n" + HAND_WRITTEN_MARKER)
    if index < 0:
        raise SystemExit(f"{YAML_PATH}: marker line not found: {HAND_WRITTEN_MARKER!r}")
    return existing[index + 1 :]


def build(reference: Path, existing: str | None) -> str:
    with (reference / SUPPORTED).open(encoding="utf-8") as fh:
        supported = json.load(fh)
    with (reference / DESCRIPTORS).open(encoding="utf-8") as fh:
        corpus = json.load(fh)
    return render_generated(supported, corpus) + hand_written_part(existing)


def build_cache(yaml_text: str) -> str:
    """The compiled cache: the validated database as JSON, keyed to the YAML's hash."""
    from ccid import database

    data = database.parse_yaml(yaml_text, str(YAML_PATH))
    return database.render_cache(yaml_text, data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--reference", type=Path, default=default_reference())
    parser.add_argument("--output", type=Path, default=YAML_PATH)
    parser.add_argument("--cache", type=Path, default=CACHE_PATH)
    args = parser.parse_args(argv)

    existing = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    text = build(args.reference, existing)
    cache = build_cache(text)
    old_cache = args.cache.read_text(encoding="utf-8") if args.cache.exists() else None
    if args.check:
        ok = True
        if existing != text:
            ok = False
            print(f"{args.output} differs from the generator output", file=sys.stderr)
            diff = difflib.unified_diff(
                (existing or "").splitlines(), text.splitlines(), "committed", "generated",
                lineterm="", n=1,
            )
            for i, line in enumerate(diff):
                if i > 40:
                    print("...", file=sys.stderr)
                    break
                print(line, file=sys.stderr)
        if old_cache != cache:
            ok = False
            print(f"{args.cache} is stale: run tools/gen_readers.py", file=sys.stderr)
        return 0 if ok else 1
    args.output.write_text(text, encoding="utf-8")
    args.cache.write_text(cache, encoding="utf-8")
    print(f"wrote {args.output} ({len(text)} bytes) and {args.cache} ({len(cache)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
