"""The ``ccid`` command: list, scan, parse, send, atr, supported, udev-rules, trace, virtual.

Exit codes: 0 ok, 1 failure (a reader, card or file said no), 2 usage error, 70 a bug in
ccid (reported in one line; ``-v`` adds the traceback), 130 interrupted, 141 output pipe
closed (``ccid list | head``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ccid.constants import ICCStatus
from ccid.errors import CCIDError, UsageError

EXAMPLES = """\
examples:
  ccid demo                                  # first reader, or the virtual one if none
  ccid list --virtual gemalto-pc-twin
  ccid scan --virtual two-slot --once
  ccid send --virtual gemalto-pc-twin 00A4040006A000000018FF 0084000008
  ccid send --virtual gemalto-pc-twin 00 84 00 00 08
  ccid parse --virtual ct700 --json
  ccid atr "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 01 00 00 00 00 6A"
  ccid supported 08E6:3437
  ccid udev-rules --uaccess -o 70-ccid-uaccess.rules
  ccid --trace session.jsonl send --virtual gemalto-pc-twin 0084000008
  ccid trace session.jsonl --replay

-v, --trace FILE and --json go before or after the command. `ccid COMMAND --help` says
what each --json output holds.
"""

log = logging.getLogger("ccid.cli")

#: The subcommands with a --json output (the others refuse a global --json).
JSON_COMMANDS = ("list", "scan", "parse", "dump-descriptor", "send", "atr", "supported",
                 "trace", "virtual")

EXIT_BUG = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class CLIError(Exception):
    """A failure to report in one line with exit code 1."""


# --- helpers ---------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data.hex(" ").upper()


def _parse_hex(text: str) -> bytes:
    from ccid.sw import from_hex

    return from_hex(text)


def _parse_vid_pid(text: str) -> tuple[int, int]:
    from ccid.database import parse_vid_pid

    return parse_vid_pid(text)


def _emit_json(data: Any) -> None:
    # no default=: anything not JSON data is a bug to catch in the tests, not a repr to print
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _seconds(text: str) -> float:
    """argparse type: a finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be finite and >= 0, got {text!r}")
    return value


def _slot_number(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a slot number: {text!r}") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"slot numbers are 0..255, got {text!r}")
    return value


def _backend(args: argparse.Namespace) -> Any:
    """The pyusb backend: a virtual preset with --virtual, else None (libusb)."""
    name = getattr(args, "virtual", None)
    if not name:
        return None
    from ccid.testing import presets

    if name not in presets.PRESETS:
        raise UsageError(
            f"unknown virtual reader {name!r}; `ccid virtual --list` shows: "
            + ", ".join(sorted(presets.PRESETS))
        )
    backend = presets.preset(name)
    args._virtual_backend = backend
    return backend


def _virtual_reader(args: argparse.Namespace) -> Any:
    backend = getattr(args, "_virtual_backend", None)
    if backend is None:
        return None
    readers = getattr(backend, "readers", None)
    if callable(readers):
        readers = readers()
    return next(iter(readers), None) if readers else None


def _sw_text(sw1: int, sw2: int) -> str:
    from ccid.sw import describe

    return describe(sw1 << 8 | sw2)


# --- subcommands -----------------------------------------------------------------------


def cmd_atr(args: argparse.Namespace) -> int:
    from ccid.protocol.atr import ATR

    raw = _parse_hex(" ".join(args.atr))
    atr = ATR(raw, check_tck=False)
    if args.json:
        _emit_json({"atr": raw.hex(), "convention": atr.convention, "tck_ok": atr.tck_ok,
                    "protocols": list(atr.protocols), "historical": atr.historical.hex(),
                    "description": atr.describe()})
    else:
        print(f"ATR: {_hex(raw)}")
        for line in atr.describe():
            print(f"  {line}")
        if not atr.tck_ok:
            print("  warning: TCK is wrong")
    return 0


def cmd_supported(args: argparse.Namespace) -> int:
    from ccid import database

    if args.name:
        if args.vid_pid:
            raise UsageError("give VID:PID or --name PATTERN, not both")
        rows = [_entry_json(e) for e in database.find_by_name(args.name)]
        if args.json:
            _emit_json(rows)
        else:
            for row in rows:
                print(f"{row['vid_pid']}  {row['status']:<14} {row['name']}")
            print(f"{len(rows)} reader(s) match {args.name!r}")
        return 0 if rows else 1
    if not args.vid_pid:
        raise UsageError("give VID:PID or --name PATTERN")
    vid, pid = _parse_vid_pid(args.vid_pid)
    answer = database.support_status(vid, pid)
    ok = database.is_supported(vid, pid)
    entry = answer.entry
    data: dict[str, Any] = {
        "vid_pid": f"{vid:04X}:{pid:04X}", "vid": vid, "pid": pid, "supported": ok,
        "status": _status_name(answer.status), "reason": answer.reason,
        "message": answer.message,
        "entry": None if entry is None else _entry_json(entry),
        "quirks": [{"id": q.id, "description": q.description}
                   for q in database.quirks_for(vid, pid)] if entry is not None else [],
    }
    if args.json:
        _emit_json(data)
    else:
        print(f"{data['vid_pid']}: {answer.message}")
        if entry is not None:
            for key, value in data["entry"].items():
                if value not in (None, [], "") and key not in ("vid", "pid", "vid_pid"):
                    print(f"  {key}: {value}")
            for q in data["quirks"]:
                print(f"  quirk {q['id']}: {q['description']}")
    return 0 if ok else 1


def _status_name(status: Any) -> str:
    return str(status.name).lower()


def _flag_names(value: Any, names: dict[str, str] | None = None) -> list[str] | None:
    if value is None:
        return None
    # single-bit members only: on Python 3.10 iterating a Flag class also yields its zero
    # member ("NONE") and multi-bit aliases, which 3.11+ leave out
    return [(names or {}).get(m.name, m.name.lower()) for m in type(value)
            if m.value and m.value & (m.value - 1) == 0 and m in value]


_PROTOCOL_NAMES = {"T0": "T=0", "T1": "T=1"}
_VOLTAGE_NAMES = {"V5_0": "5.0V", "V3_0": "3.0V", "V1_8": "1.8V"}


def _entry_json(entry: Any) -> dict[str, Any]:
    """A database entry as JSON data: enums by name, flags as lists, bytes as hex."""
    level = entry.exchange_level
    raw = entry.raw_descriptor
    return {
        "vid_pid": entry.id, "vid": entry.vid, "pid": entry.pid, "name": entry.name,
        "vendor": entry.vendor, "status": _status_name(entry.status),
        "supported": entry.supported, "section": entry.section, "line": entry.line,
        "aliases": list(entry.aliases), "note": entry.note, "quirks": list(entry.quirks),
        "min_firmware": entry.min_firmware, "dump": entry.dump, "bcd_device": entry.bcd_device,
        "manufacturer": entry.manufacturer, "product": entry.product,
        "interface_count": entry.interface_count,
        "interface_numbers": list(entry.interface_numbers),
        "interface_class": entry.interface_class,
        "interface_subclass": entry.interface_subclass,
        "interface_protocol": entry.interface_protocol, "has_interrupt": entry.has_interrupt,
        "ccid_version": entry.ccid_version,
        "exchange_level": None if level is None else level.name.lower(),
        "protocols": _flag_names(entry.protocols, _PROTOCOL_NAMES),
        "voltages": _flag_names(entry.voltages, _VOLTAGE_NAMES),
        "pin_support": _flag_names(entry.pin_support),
        "features": _flag_names(entry.features),
        "slots": entry.slots, "max_message_length": entry.max_message_length,
        "max_ifsd": entry.max_ifsd,
        "lcd_layout": None if entry.lcd_layout is None else list(entry.lcd_layout),
        "default_clock_khz": entry.default_clock_khz, "max_clock_khz": entry.max_clock_khz,
        "clocks_khz": list(entry.clocks_khz), "default_data_rate": entry.default_data_rate,
        "max_data_rate": entry.max_data_rate, "data_rates": list(entry.data_rates),
        "raw_descriptor": None if raw is None else raw.hex(),
    }


def cmd_udev_rules(args: argparse.Namespace) -> int:
    from ccid import udev

    text = udev.render_rules(uaccess=args.uaccess, group=args.group)
    if args.install:
        if args.output:
            raise UsageError("--install writes into --rules-dir; -o writes a file: pick one")
        target_dir = args.rules_dir
        target = os.path.join(target_dir, udev.filename(args.uaccess))
        if not os.path.isdir(target_dir):
            raise CLIError(f"cannot install {target}: the directory {target_dir} does not "
                           "exist (is udev installed? --rules-dir names another one)")
        if not os.access(target_dir, os.W_OK):
            raise CLIError(f"cannot write {target}: permission denied "
                           "(run as root: sudo ccid udev-rules --install)")
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {target}")
        if args.group == udev.DEFAULT_GROUP:
            print("group pcscd: pcsc-lite 2.4.0+ creates it; elsewhere: "
                  "sudo groupadd --system pcscd")
        print(f'then: sudo usermod -aG {args.group} "$USER" (log in again), and reload with: '
              "sudo udevadm control --reload && sudo udevadm trigger --subsystem-match=usb")
        return 0
    if args.output:
        _warn_rules_name(args.output, args.uaccess)
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _warn_rules_name(path: str, uaccess: bool) -> None:
    from ccid import udev

    name = os.path.basename(path)
    if uaccess and name >= "73":
        print(f"ccid: warning: install uaccess rules under a name sorting before 73 (systemd's "
              f"73-seat-late.rules acts on the tag), e.g. {udev.UACCESS_FILENAME}, not {name}",
              file=sys.stderr)
    if name == udev.LIBCCID_FILENAME:
        print(f"ccid: warning: {name} is libccid's file name: installed in /etc/udev/rules.d "
              f"it hides the distribution's; use {udev.filename(uaccess)}", file=sys.stderr)


def cmd_virtual(args: argparse.Namespace) -> int:
    from ccid.testing import presets

    rows = [{"name": name, "description": desc} for name, desc in presets.PRESETS.items()]
    if args.json:
        _emit_json(rows)
    else:
        for row in rows:
            print(f"{row['name']:<20} {row['description']}")
    return 0


def _list_readers(args: argparse.Namespace) -> list[Any]:
    import ccid

    backend = _backend(args)
    return list(ccid.list_readers(backend=backend))


def _no_reader_message() -> str:
    return ("no CCID reader found. Plug one in, or try the built-in virtual reader: "
            "ccid list --virtual gemalto-pc-twin (ccid virtual --list shows all)")


def _info_dict(info: Any) -> dict[str, Any]:
    keys = ("name", "vid", "pid", "serial", "usb_path", "interface", "slots")
    out = {k: getattr(info, k, None) for k in keys}
    out["vid_pid"] = f"{out['vid'] or 0:04X}:{out['pid'] or 0:04X}"
    return out


def cmd_list(args: argparse.Namespace) -> int:
    import ccid
    from ccid import database

    infos = _list_readers(args)
    if not infos:
        if args.json:
            _emit_json([])
        print(_no_reader_message(), file=sys.stderr)
        return 1
    rows = []
    for index, info in enumerate(infos):
        row: dict[str, Any] = {"index": index, **_info_dict(info)}
        answer = database.support_status(row["vid"], row["pid"])
        row["database"] = {"status": _status_name(answer.status), "reason": answer.reason,
                           "message": answer.message}
        row["exchange_level"] = None
        row["error"] = None
        slots: list[dict[str, Any]] = []
        try:
            with ccid.open_reader(info, backend=getattr(args, "_virtual_backend", None)
                                  ) as reader:
                row["exchange_level"] = reader.descriptor.exchange_level.name.lower()
                for slot in range(reader.descriptor.slot_count):
                    slots.append(_slot_info(reader, slot))
        except CCIDError as exc:
            row["error"] = str(exc)
        row["slot_states"] = slots
        rows.append(row)
    if args.json:
        _emit_json(rows)
        return 0
    for row in rows:
        print(f"{row['index']}: {row['name']}")
        print(f"   {row['vid_pid']}  serial {row['serial'] or '-'}  path {row['usb_path']}"
              f"  slots {row['slots']}  {row['exchange_level'] or '?'}")
        print(f"   database: {row['database']['message']}")
        if row["error"]:
            print(f"   error: {row['error']}")
        for s in row["slot_states"]:
            state = "card present" if s["present"] else "no card"
            atr = f"  ATR: {s['atr']}" if s["atr"] else ""
            err = f"  ({s['error']})" if s["error"] else ""
            print(f"   slot {s['slot']} ({s['name']}): {state}{atr}{err}")
    return 0


def _slot_info(reader: Any, slot: int) -> dict[str, Any]:
    names = reader.info.slot_names
    info: dict[str, Any] = {"slot": slot, "name": names[slot] if slot < len(names) else None,
                            "present": False, "atr": None, "protocol": None, "error": None}
    try:
        info["present"] = reader.slot_status(slot) != ICCStatus.ABSENT
        if info["present"]:
            with reader.connect(slot=slot) as card:
                info["atr"] = _hex(bytes(card.atr))
                info["protocol"] = str(card.protocol)
    except CCIDError as exc:
        info["error"] = str(exc)
    return info


def _selector(text: str | None) -> Any:
    """The CLI's --reader: an index when all digits, else what open_reader matches."""
    if text is not None and text.strip().isdigit():
        return int(text)
    return text


def _open(args: argparse.Namespace) -> Any:
    import ccid

    backend = _backend(args)
    if backend is None and not ccid.list_readers():
        raise CLIError(_no_reader_message())
    return ccid.open_reader(_selector(args.reader), backend=backend)


def _join_apdus(tokens: Sequence[str]) -> list[bytes]:
    """Each argument is one APDU; consecutive one-byte arguments (``00 84 00 00 08``) are
    joined into one, as ``ccid atr`` joins its arguments."""
    apdus: list[bytes] = []
    run: list[bytes] = []
    for token in tokens:
        value = _parse_hex(token)
        if len(value) == 1:
            run.append(value)
            continue
        if run:
            apdus.append(b"".join(run))
            run = []
        apdus.append(value)
    if run:
        apdus.append(b"".join(run))
    for apdu in apdus:
        if len(apdu) < 4:
            raise UsageError(f"APDU {_hex(apdu) or '(empty)'}: at least CLA INS P1 P2 (4 bytes)")
    return apdus


def cmd_send(args: argparse.Namespace) -> int:
    apdus = _join_apdus(args.apdu)
    if args.mode == "direct":
        raise UsageError("--mode direct reaches the reader without powering the card, so it "
                         "cannot send APDUs: use shared (the default) or exclusive")
    protocols = {"T0": "T=0", "T1": "T=1", "T=0": "T=0", "T=1": "T=1"}
    protocol = protocols.get((args.protocol or "").upper())
    exchanges = []
    with _open(args) as reader, reader.connect(slot=args.slot, protocol=protocol,
                                               mode=args.mode) as card:
        atr = bytes(card.atr)
        if not args.json:
            print(f"Reader: {reader.name}")
            print(f"ATR: {_hex(atr)}  protocol {card.protocol}")
        for apdu in apdus:
            t0 = time.perf_counter()
            resp = card.transmit(apdu)
            ms = (time.perf_counter() - t0) * 1000
            sw1, sw2 = (resp[-2], resp[-1]) if len(resp) >= 2 else (0, 0)
            exchanges.append({"command": apdu.hex(), "response": resp.hex(),
                              "data": resp[:-2].hex(), "sw": f"{sw1:02X}{sw2:02X}",
                              "meaning": _sw_text(sw1, sw2), "ms": round(ms, 3)})
            if not args.json:
                print(f"> {_hex(apdu)}")
                print(f"< {_hex(resp[:-2])}" if len(resp) > 2 else "<")
                print(f"  SW {sw1:02X} {sw2:02X}: {_sw_text(sw1, sw2)}  ({ms:.1f} ms)")
        name = reader.name
        proto = str(card.protocol)
    if args.json:
        _emit_json({"reader": name, "slot": args.slot, "atr": atr.hex(), "protocol": proto,
                    "exchanges": exchanges})
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    import ccid
    from ccid.report import format_descriptor_report, report_as_dict

    backend = _backend(args)
    infos = ccid.list_readers(backend=backend)
    if not infos:
        raise CLIError(_no_reader_message())
    if args.reader is not None:
        # the same selection as send and open_reader ("no reader with index 1", ...)
        with ccid.open_reader(_selector(args.reader), backend=backend) as reader:
            reports = [reader.report()]
    else:
        reports = []
        for info in infos:
            with ccid.open_reader(info, backend=backend) as reader:
                reports.append(reader.report())
    if args.json:
        _emit_json([report_as_dict(r) for r in reports])
    else:
        for rep in reports:
            sys.stdout.write(format_descriptor_report(rep))
            print()
    return 0


def _simulation_plan(args: argparse.Namespace, vreader: Any) -> list[tuple[float, str, int]]:
    """--simulate 'remove@1 insert@2 remove:1@3': steps checked against the slots' cards
    before anything runs, so a step that cannot happen is a usage error, not a crash."""
    slots = len(getattr(vreader, "slots", ())) or 1
    steps: list[tuple[float, str, int]] = []
    for item in args.simulate.replace(",", " ").split():
        what, _, when = item.partition("@")
        action, _, slot_text = what.partition(":")
        try:
            seconds = _seconds(when)
            slot = int(slot_text) if slot_text else 0
        except (argparse.ArgumentTypeError, ValueError):
            seconds, slot = -1.0, -1
        if action not in ("insert", "remove") or seconds < 0 or not 0 <= slot < slots:
            raise UsageError(f"--simulate step {item!r}: use insert@SECONDS or remove@SECONDS "
                             f"(slot 0), or insert:SLOT@SECONDS with SLOT 0..{slots - 1}")
        steps.append((seconds, action, slot))
    steps.sort()
    present = {s: vreader.card(s) is not None for s in range(slots)}
    for seconds, action, slot in steps:
        if action == "insert" and present[slot]:
            raise UsageError(f"--simulate insert@{seconds:g}: slot {slot} already holds a card "
                             f"then (remove it first: 'remove@... insert@{seconds:g}')")
        if action == "remove" and not present[slot]:
            raise UsageError(f"--simulate remove@{seconds:g}: slot {slot} is empty then")
        present[slot] = action == "insert"
    return steps


def _schedule_simulation(args: argparse.Namespace) -> None:
    """Drive the virtual reader's slots while the scan watches."""
    if not args.simulate:
        return
    vreader = _virtual_reader(args)
    if vreader is None:
        raise UsageError("--simulate needs --virtual NAME")
    steps = _simulation_plan(args, vreader)
    removed: dict[int, Any] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            for when, action, slot in steps:
                time.sleep(max(0.0, start + when - time.monotonic()))
                if action == "remove":
                    removed[slot] = vreader.remove(slot)
                else:
                    card = removed.pop(slot, None)
                    if card is None:
                        from ccid.testing import VirtualCard

                        card = VirtualCard()
                    vreader.insert(card, slot)
        except CCIDError as exc:  # the plan was checked: only a reader gone gets here
            print(f"ccid: --simulate stopped: {exc}", file=sys.stderr)

    threading.Thread(target=run, daemon=True, name="ccid-simulate").start()


def cmd_scan(args: argparse.Namespace) -> int:
    """Like pcsc_scan: readers coming and going, every slot's state (empty ones too), cards
    inserted and removed, with ATRs.

    Each slot is a PC/SC reader: it is named, and numbered in the order readers appeared.
    Blocks on the event queue (the readers' interrupt endpoints, or polling where a reader
    has none); enumeration for reader hot-plug runs every half second.

    ``--json`` prints JSON Lines instead of the text, one object per event, flushed at once;
    ``time`` is Unix seconds, ``event`` one of:

    - ``{"event": "reader_added", "time", "reader": str, "slots": [str]}``
    - ``{"event": "reader_removed", "time", "reader": str}``
    - ``{"event": "slot", "time", "reader": str, "slot": int, "name": str, "number": int,
      "event_number": int, "state": "present" | "absent" | "unknown", "atr": hex | null,
      "protocols": [int] | null, "error": str | null}``: ``number`` is the PC/SC reader
      number (the text's "Reader N"); ``error`` says why a present card gave no ATR.
    - ``{"event": "other", "time", "text": str}`` (e.g. a reader's hardware error).
    """
    import ccid
    from ccid.events import CardInserted, CardRemoved, ReaderAdded, ReaderRemoved

    backend = _backend(args)
    _schedule_simulation(args)
    # in --json mode stdout holds only the JSON lines: the notes go to stderr
    notes = sys.stderr if args.json else sys.stdout
    if not args.json:
        print("ccid scan (no pcscd); Ctrl-C to stop")
    opened: dict[str, Any] = {}
    scan = _ScanState()
    if not ccid.list_readers(backend=backend):
        print("Waiting for the first reader... (or try --virtual gemalto-pc-twin)", file=notes)
    events = ccid.watch(backend=backend, interval=0.5, timeout=args.timeout, readers=opened)
    try:
        # Ctrl-C raises KeyboardInterrupt inside watch()'s blocking queue wait (lock waits
        # are interruptible), so an idle scan stops at once; `finally` releases the readers.
        for event in events:
            if isinstance(event, ReaderAdded):
                reader = opened.get(event.reader)
                names = _slot_names(event.info, reader)
                _emit_scan(_ScanRecord("reader_added", {"reader": event.reader,
                                                        "slots": list(names)},
                                       (f" Reader added: {event.reader}",)), args.json)
                scan.add(event.reader, names)
                for slot in range(len(names)):
                    present = None
                    if reader is not None:
                        with contextlib.suppress(CCIDError):
                            present = reader.slot_status(slot) != ICCStatus.ABSENT
                    _emit_scan(scan.show(reader, event.reader, slot, present), args.json)
                if args.once:
                    break
            elif isinstance(event, ReaderRemoved):
                _emit_scan(_ScanRecord("reader_removed", {"reader": event.reader},
                                       (f" Reader removed: {event.reader}",)), args.json)
                scan.remove(event.reader)
            elif isinstance(event, (CardInserted, CardRemoved)):
                reader = opened.get(event.reader)
                _emit_scan(scan.show(reader, event.reader, event.slot,
                                     isinstance(event, CardInserted)), args.json)
            else:
                _emit_scan(_ScanRecord("other", {"text": str(event)}, (f" Event: {event}",)),
                           args.json)
    except KeyboardInterrupt:
        print("stopped", file=notes)
    finally:
        events.close()
    return 0


def _stamp(when: float | None = None) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(when))


def _slot_names(info: Any, reader: Any) -> tuple[str, ...]:
    for source in (reader.info if reader is not None else None, info):
        names = getattr(source, "slot_names", None)
        if names:
            return tuple(names)
    return (str(getattr(info, "name", "reader")),)


class _ScanRecord:
    """One thing ``ccid scan`` reports: its JSON line's fields and its text lines (printed
    after a time stamp), built together so that both outputs say the same."""

    def __init__(self, event: str, fields: dict[str, Any], lines: Sequence[str],
                 when: float | None = None) -> None:
        self.event = event
        self.time = time.time() if when is None else when
        self.fields = fields
        self.lines = tuple(lines)

    def as_json(self) -> dict[str, Any]:
        return {"event": self.event, "time": self.time, **self.fields}


def _emit_scan(record: _ScanRecord | None, as_json: bool) -> None:
    if record is None:
        return
    if as_json:
        # compact, one object per line (JSON Lines); no default=, as in _emit_json
        sys.stdout.write(json.dumps(record.as_json(), separators=(",", ":")) + "\n")
    else:
        print(_stamp(record.time))
        for line in record.lines:
            print(line)
    sys.stdout.flush()  # a stream: each event is seen when it happens


class _ScanState:
    """What ``ccid scan`` showed last per slot: PC/SC-style reader numbers (one per slot,
    in order of appearance), event counts, and the state, so a state is shown once."""

    def __init__(self) -> None:
        self.names: dict[str, tuple[str, ...]] = {}  # reader name -> its slots' names
        self.order: list[str] = []  # slot names, as PC/SC numbers them
        self.state: dict[str, bool | None] = {}
        self.count: dict[str, int] = {}

    def add(self, reader: str, names: tuple[str, ...]) -> None:
        self.names[reader] = names
        self.order.extend(n for n in names if n not in self.order)

    def remove(self, reader: str) -> None:
        for name in self.names.pop(reader, ()):
            if name in self.order:
                self.order.remove(name)
            self.state.pop(name, None)
            self.count.pop(name, None)

    def show(self, reader: Any, reader_name: str, slot: int,
             present: bool | None) -> _ScanRecord | None:
        """The record of a slot's new state; None when that state was shown already."""
        when = time.time()
        names = self.names.get(reader_name) or (reader_name,)
        name = names[slot] if slot < len(names) else f"{reader_name} slot {slot}"
        if name in self.state and self.state[name] == present:
            return None  # already shown (a card present at start is reported again as an event)
        if name not in self.order:
            self.order.append(name)
        self.state[name] = present
        number = self.count.get(name, -1) + 1
        self.count[name] = number
        index = self.order.index(name)
        card: dict[str, Any] = {"atr": None, "protocols": None, "error": None}
        if present is None:
            state, lines = "unknown", ["  Card state: unknown (the reader is in use elsewhere)"]
        elif not present:
            state, lines = "absent", ["  Card state: Card removed, no card"]
        elif reader is None:
            state, lines = "present", ["  Card state: Card inserted, "]
        else:
            state = "present"
            card, lines = _read_card(reader, slot)
        fields = {"reader": reader_name, "slot": slot, "name": name, "number": index,
                  "event_number": number, "state": state, **card}
        return _ScanRecord("slot", fields, [f" Reader {index}: {name}",
                                            f"  Event number: {number}", *lines], when)


def _read_card(reader: Any, slot: int) -> tuple[dict[str, Any], list[str]]:
    """Connect to read the ATR: the record's atr, protocols and error, and the text lines."""
    try:
        with reader.connect(slot=slot) as card:
            atr = card.atr
            raw = bytes(atr)
            return ({"atr": raw.hex(), "protocols": list(atr.protocols), "error": None},
                    ["  Card state: Card inserted, ", f"  ATR: {_hex(raw)}", "",
                     *(f"  {line}" for line in atr.describe())])
    except CCIDError as exc:
        return ({"atr": None, "protocols": None, "error": str(exc)},
                [f"  Card state: Card inserted, Unresponsive card, ({exc})"])


def cmd_trace(args: argparse.Namespace) -> int:
    """Summarise a trace file (or replay it with ``--replay``).

    ``--json`` prints :meth:`ccid.trace.Summary.as_dict` with ``"file"`` added: ``{"file":
    str, "total_time": float, "frames": int, "calls": [CALL], "api": [CALL], "errors":
    [ERROR], "interrupts": [{"name": str, "count": int}]}``, CALL ``{"name", "count",
    "total", "percent", "min", "max"}``, ERROR ``{"time", "reader", "slot", "command",
    "bStatus", "bError", "text"}``. A file with no trace record in it, or a malformed one,
    is an error (exit 1, one line).
    """
    from ccid import trace
    from ccid.errors import TraceFormatError

    try:
        records = trace.load(args.file)
    except TraceFormatError as exc:
        raise CLIError(f"{args.file}: {exc}") from None
    if not any(r.direction in trace.DIRECTIONS for r in records):
        raise CLIError(f"{args.file}: nothing in this file is a CCID trace "
                       "(no frame line, JSON record or pcscd/libccid frame)")
    summary = trace.summarize(records)
    if args.json and not args.replay:
        _emit_json({"file": str(args.file), **summary.as_dict()})
    elif not args.replay:
        print(summary)
    if args.replay:
        return _replay(records, args.json)
    return 0


def _replay(records: list[Any], as_json: bool) -> int:
    """Send every recorded command through pyusb to a virtual reader built from the trace,
    and compare its answers with the recorded ones."""
    import usb.core

    from ccid.errors import TraceFormatError
    from ccid.testing.replay import replay

    try:
        backend = replay(records)
    except TraceFormatError as exc:
        raise CLIError(str(exc)) from None
    vreader = backend.readers[0]
    dev = usb.core.find(backend=backend)
    if dev is None:
        raise CLIError("replay: the virtual reader did not enumerate")
    intf = vreader.interface_number
    import usb.util

    usb.util.claim_interface(dev, intf)
    out_ep, in_ep = vreader.endpoints_out_in() if hasattr(vreader, "endpoints_out_in") else (
        _bulk_endpoints(dev, intf))
    # group the recorded replies (time extensions included) under their command
    exchanges: list[tuple[bytes, list[Any]]] = []
    for rec in records:
        if rec.direction == "->":
            exchanges.append((rec.data, []))
        elif rec.direction == "<-" and exchanges:
            exchanges[-1][1].append(rec)
    compared = mismatched = 0
    for command, replies in exchanges:
        if not replies:
            continue  # never answered when recorded: nothing to compare
        dev.write(out_ep, command, 2000)
        for want in replies:
            try:
                got = bytes(dev.read(in_ep, max(64, len(want.data) + 64), 2000))
            except usb.core.USBError as exc:
                raise CLIError(f"replay: no answer to {_hex(command[:10])}: {exc}") from exc
            compared += 1
            if not want.matches(got, ignore=(6,)):
                mismatched += 1
    usb.util.release_interface(dev, intf)
    usb.util.dispose_resources(dev)
    result = {"commands": compared, "mismatched": mismatched}
    if as_json:
        _emit_json(result)
    else:
        print(f"replay: {compared} command(s) replayed through pyusb into a virtual reader, "
              f"{mismatched} answer(s) differ from the trace")
    return 0 if compared and not mismatched else 1


def _bulk_endpoints(dev: Any, intf: int) -> tuple[int, int]:
    import usb.util

    cfg = dev.get_active_configuration()
    iface = cfg[(intf, 0)]
    out_ep = in_ep = None
    for ep in iface:
        kind = usb.util.endpoint_type(ep.bmAttributes)
        if kind != usb.util.ENDPOINT_TYPE_BULK:
            continue
        if usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN:
            in_ep = ep.bEndpointAddress
        else:
            out_ep = ep.bEndpointAddress
    if out_ep is None or in_ep is None:
        raise CLIError("replay: the virtual reader has no bulk endpoints")
    return out_ep, in_ep


def cmd_demo(args: argparse.Namespace) -> int:
    """First real reader, else the virtual Gemalto PC Twin: reader, ATR, one APDU exchange."""
    import ccid

    if not args.virtual and not ccid.list_readers():
        print("No reader plugged in: using the built-in virtual Gemalto PC Twin "
              "(ccid virtual --list shows the others).")
        args.virtual = "gemalto-pc-twin"
    with _open(args) as reader:
        print(f"Reader: {reader.name}")
        d = reader.descriptor
        print(f"  {d.exchange_level.name.lower()} level, {d.slot_count} slot(s), "
              f"max message {d.dwMaxCCIDMessageLength} bytes")
        with reader.connect() as card:
            raw = bytes(card.atr)
            print(f"Card ATR: {_hex(raw)}  (protocol {card.protocol})")
            for line in card.atr.describe():
                print(f"  {line}")
            # SELECT the virtual card's test applet, GET CHALLENGE (most cards know it)
            for apdu in (bytes.fromhex("00A4040006A000000018FF"), bytes.fromhex("0084000008")):
                resp = card.transmit(apdu)
                print(f"> {_hex(apdu)}")
                print(f"< {_hex(resp)}  [{_sw_text(resp[-2], resp[-1])}]")
    return 0


# --- argument parsing ------------------------------------------------------------------

JSON_HELP = {
    "list": "JSON: a list, one object per reader: index, name, vid, pid, vid_pid, serial,\n"
            "usb_path, interface, slots, database {status, reason, message},\n"
            "exchange_level, error, slot_states [{slot, name, present, atr (hex text),\n"
            "protocol, error}]; null where unknown.",
    "scan": "JSON: JSON Lines, one object per event as it happens (no banner), each with\n"
            "event and time (Unix seconds): reader_added {reader, slots [names]},\n"
            "reader_removed {reader}, slot {reader, slot, name, number (the text's\n"
            "\"Reader N\"), event_number, state (present, absent or unknown), atr (hex),\n"
            "protocols [int], error}, other {text}; null where unknown.",
    "parse": "JSON: a list, one object per reader interface: idVendor, idProduct, vid_pid,\n"
             "manufacturer, product, serial, interface, bcdDevice, descriptor {every field\n"
             "of the CCID class descriptor}, raw (hex), derived {exchange_level, protocols,\n"
             "voltages, features, slots, ...}, data_rates, clocks.",
    "send": "JSON: an object: reader, slot, atr (hex), protocol, exchanges [{command,\n"
            "response, data, sw (hex), meaning, ms}].",
    "atr": "JSON: an object: atr (hex), convention, tck_ok, protocols [int], historical\n"
           "(hex), description [lines].",
    "supported": "JSON: for VID:PID an object: vid_pid, vid, pid, supported, status, reason,\n"
                 "message, entry (or null), quirks [{id, description}]; for --name a list\n"
                 "of entries. An entry: vid_pid, name, status, section, aliases, dump, the\n"
                 "descriptor's capabilities (exchange_level, protocols, voltages, features,\n"
                 "...) and raw_descriptor (hex).",
    "virtual": "JSON: a list of {name, description}.",
}


def _examples(name: str, examples: str) -> str:
    text = "examples:\n" + examples
    if name in JSON_HELP:
        text += "\n" + JSON_HELP[name] + "\n"
    return text


def build_parser() -> argparse.ArgumentParser:
    # Long on purpose: one stanza per subcommand (arguments, help, examples), read top to
    # bottom as the command's reference; split up it would only add indirection.
    from ccid import __version__

    p = argparse.ArgumentParser(
        prog="ccid",
        description="Talk to USB CCID smart-card readers directly (no pcscd).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ccid {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    p.add_argument("--trace", metavar="FILE", help="record the CCID wire to FILE")
    p.add_argument("--json", dest="global_json", action="store_true",
                   help="machine-readable output (commands that have it)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, examples: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_,
                              epilog=_examples(name, examples),
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def virtual_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--virtual", metavar="NAME",
                        help="use a built-in virtual reader (see `ccid virtual --list`)")

    sp = add("list", "list readers and, per slot, the card and its ATR",
             "  ccid list\n  ccid list --virtual two-slot --json\n")
    virtual_opt(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_list)

    sp = add("scan", "wait for card events and print them (like pcsc_scan)",
             "  ccid scan\n  ccid scan --virtual gemalto-pc-twin --once\n"
             "  ccid scan --virtual gemalto-pc-twin --simulate 'remove@0.5 insert@1'"
             " --timeout 1.5\n"
             "  ccid scan --virtual two-slot --simulate 'insert:1@0.5' --timeout 1\n"
             "  ccid scan --virtual two-slot --simulate 'insert:1@0.5' --timeout 1 --json\n")
    virtual_opt(sp)
    sp.add_argument("--once", action="store_true",
                    help="stop after the first reader's slots are shown")
    sp.add_argument("--timeout", type=_seconds, default=None, help="stop after SECONDS")
    sp.add_argument("--simulate", metavar="STEPS",
                    help="with --virtual: 'remove@SECONDS insert@SECONDS ...' (slot 0), "
                         "or insert:SLOT@SECONDS")
    sp.add_argument("--json", action="store_true",
                    help="machine-readable output: one JSON object per line")
    sp.set_defaults(func=cmd_scan)

    for name in ("parse", "dump-descriptor"):
        sp = sub.add_parser(name, help="print each CCID interface's descriptor like libccid's "
                            "parse tool", description="print each CCID interface's descriptor "
                            "like libccid's parse tool",
                            epilog=_examples("parse", f"  ccid {name}\n  ccid {name} --virtual "
                                             "ct700 --json\n"),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        virtual_opt(sp)
        sp.add_argument("--reader", metavar="SELECTOR", help="index, name, VID:PID, serial, path")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=cmd_parse)

    sp = add("send", "connect to a card and send hex APDUs",
             "  ccid send 00A4040006A000000018FF\n"
             "  ccid send --virtual extended-apdu --protocol T1 0084000008\n"
             "  ccid send --virtual gemalto-pc-twin 00 84 00 00 08 0084000004\n")
    virtual_opt(sp)
    sp.add_argument("apdu", nargs="+",
                    help="APDU in hex, one per argument (spaces allowed inside quotes); "
                         "one-byte arguments in a row are joined: 00 84 00 00 08")
    sp.add_argument("--reader", metavar="SELECTOR", help="index, name, VID:PID, serial, path")
    sp.add_argument("--slot", type=_slot_number, default=0)
    sp.add_argument("--protocol", choices=["T0", "T1", "T=0", "T=1"], default=None)
    sp.add_argument("--mode", choices=["shared", "exclusive", "direct"], default="shared",
                    help="direct cannot send APDUs (the card is not powered)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_send)

    sp = add("atr", "decode an ATR (no reader needed)",
             "  ccid atr 3B 02 14 50\n  ccid atr --json 3B021450\n")
    sp.add_argument("atr", nargs="+", help="ATR bytes in hex")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_atr)

    sp = add("supported", "is a reader supported? (the reader database)",
             "  ccid supported 08E6:3437\n  ccid supported 0x08e6:0x3478 --json\n"
             "  ccid supported --name omnikey\n")
    sp.add_argument("vid_pid", nargs="?", metavar="VID:PID")
    sp.add_argument("--name", metavar="PATTERN", help="search by name instead")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_supported)

    sp = add("udev-rules", "print or install the udev rules for CCID readers",
             "  ccid udev-rules\n  ccid udev-rules -o 92-ccid-python.rules\n"
             "  ccid udev-rules --uaccess -o 70-ccid-uaccess.rules\n"
             "  ccid udev-rules --group plugdev\n"
             "  sudo groupadd --system pcscd   # the default group, where pcsc-lite < 2.4.0\n"
             "  sudo ccid udev-rules --uaccess --install\n"
             "\nFiles: 92-ccid-python.rules (group mode), 70-ccid-uaccess.rules (uaccess\n"
             "mode: must sort before systemd's 73-seat-late.rules); never libccid's\n"
             "92_pcscd_ccid.rules, which they would replace.\n")
    sp.add_argument("--uaccess", action="store_true",
                    help="also give the logged-in seat user access (TAG+=\"uaccess\")")
    sp.add_argument("--group", default="pcscd",
                    help="the group given the readers (default: %(default)s; pcsc-lite 2.4.0+ "
                         "creates it, elsewhere: groupadd --system pcscd)")
    sp.add_argument("-o", "--output", metavar="FILE")
    sp.add_argument("--install", action="store_true", help="write to the udev rules directory")
    sp.add_argument("--rules-dir", default="/etc/udev/rules.d",
                    help="where --install writes (default: %(default)s)")
    sp.set_defaults(func=cmd_udev_rules)

    sp = add("trace", "summarise a recorded trace, or replay it into a virtual reader",
             "  ccid --trace s.jsonl send --virtual gemalto-pc-twin 0084000008\n"
             "  ccid trace s.jsonl\n  ccid trace s.jsonl --replay\n")
    sp.add_argument("file")
    sp.add_argument("--replay", action="store_true", help="replay into a virtual reader")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_trace)

    sp = add("virtual", "list the built-in virtual readers",
             "  ccid virtual --list\n  ccid virtual --json\n")
    sp.add_argument("--list", action="store_true", default=True)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_virtual)

    sp = add("demo", "first reader (or the virtual one): reader, card ATR, an APDU exchange",
             "  ccid demo\n  ccid demo --virtual two-slot\n")
    virtual_opt(sp)
    sp.add_argument("--reader", metavar="SELECTOR", default=None)
    sp.set_defaults(func=cmd_demo)

    # the global options work after the command too (ccid send ... -v --trace s.jsonl)
    for sp in sub.choices.values():
        sp.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0,
                        help="-v info, -vv debug")
        sp.add_argument("--trace", dest="sub_trace", metavar="FILE",
                        help="record the CCID wire to FILE")

    from ccid.serve.cli import add_parser as add_serve_parser  # the PC/SC server

    add_serve_parser(sub)
    return p


def _merge_global_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.verbose += getattr(args, "sub_verbose", 0)
    sub_trace = getattr(args, "sub_trace", None)
    if sub_trace and args.trace and sub_trace != args.trace:
        parser.error(f"--trace given twice ({args.trace}, {sub_trace})")
    args.trace = args.trace or sub_trace
    if args.global_json:
        if args.command not in JSON_COMMANDS:
            parser.error(f"--json: `ccid {args.command}` has no JSON output")
        args.json = True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; every failure ends as one line on stderr and an exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so that a closed pipe is seen while we can still handle it
        return code
    except BrokenPipeError:
        # `ccid ... | head`: the reader of our output is gone; stop quietly, as cat does
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _merge_global_options(parser, args)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _tracing(args.trace):
            return int(args.func(args))
    except UsageError as exc:
        # exits 2 with the usage line; the PC/SC code means nothing to a shell user
        parser.error(str(exc).removesuffix(f" [{exc.pcsc_code}]"))
    except BrokenPipeError:
        raise
    except (CCIDError, CLIError, OSError) as exc:
        print(f"ccid: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in ccid: still one line, the traceback with -v
        log.debug("internal error", exc_info=True)
        print(f"ccid: internal error: {type(exc).__name__}: {exc} (a bug in ccid: please "
              "report it with the output of -vv)", file=sys.stderr)
        return EXIT_BUG
    return 0


@contextlib.contextmanager
def _tracing(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    from ccid import trace

    trace.enable(path)
    try:
        yield
    finally:
        trace.disable()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
