"""The ``ccid`` command: list, scan, parse, send, atr, supported, udev-rules, trace, virtual.

Exit codes: 0 ok, 1 failure (a reader, card or file said no), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
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
  ccid scan --virtual gemalto-pc-twin --once
  ccid send --virtual gemalto-pc-twin 00A4040007A0000002471001 0084000008
  ccid parse --virtual ct700 --json
  ccid atr "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 01 00 00 00 00 6A"
  ccid supported 08E6:3437
  ccid udev-rules --uaccess -o 92_pcscd_ccid.rules
  ccid trace session.jsonl --replay
"""

log = logging.getLogger("ccid.cli")


class CLIError(Exception):
    """A failure to report in one line with exit code 1."""


# --- helpers ---------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data.hex(" ").upper()


def _parse_hex(text: str) -> bytes:
    cleaned = "".join(text.replace(":", " ").split())
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise UsageError(f"not hexadecimal: {text!r}") from None


def _parse_vid_pid(text: str) -> tuple[int, int]:
    try:
        vid_s, pid_s = text.split(":")
        return int(vid_s, 16), int(pid_s, 16)
    except ValueError:
        raise UsageError(f"expected VID:PID in hex, e.g. 08E6:3437, got {text!r}") from None


def _emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


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
    table = {
        0x90: "success",
        0x61: f"{sw2} bytes still available (GET RESPONSE)",
        0x62: "warning: state unchanged",
        0x63: (f"verification failed, {sw2 & 0x0F} tries left"
               if sw2 & 0xF0 == 0xC0 else "warning: state changed"),
        0x64: "execution error, state unchanged",
        0x65: "execution error, memory changed",
        0x67: "wrong length",
        0x68: "function in CLA not supported",
        0x69: {0x82: "security status not satisfied", 0x83: "authentication blocked",
               0x84: "reference data not usable", 0x85: "conditions of use not satisfied",
               0x86: "command not allowed (no current EF)"}.get(sw2, "command not allowed"),
        0x6A: {0x80: "incorrect data", 0x81: "function not supported",
               0x82: "file or application not found", 0x86: "incorrect P1 P2",
               0x88: "referenced data not found"}.get(sw2, "wrong parameters P1 P2"),
        0x6B: "wrong parameters P1 P2",
        0x6C: f"wrong Le: exact length is {sw2}",
        0x6D: "instruction not supported",
        0x6E: "class not supported",
        0x6F: "no precise diagnosis",
    }
    if sw1 == 0x90 and sw2 == 0x00:
        return "success"
    text = table.get(sw1)
    return text if isinstance(text, str) else "unknown status"


# --- subcommands -----------------------------------------------------------------------


def cmd_atr(args: argparse.Namespace) -> int:
    from ccid.protocol.atr import parse_atr

    raw = _parse_hex(" ".join(args.atr))
    atr = parse_atr(raw, check_tck=False)
    if args.json:
        _emit_json({"atr": raw.hex(), "tck_ok": atr.tck_ok,
                    "protocols": list(atr.protocols), "description": atr.describe()})
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
        entries = database.find_by_name(args.name)
        rows = [_entry_dict(e) for e in entries]
        if args.json:
            _emit_json(rows)
        else:
            for row in rows:
                print(f"{row['vid_pid']}  {row['status']:<12} {row['name']}")
            print(f"{len(rows)} reader(s) match {args.name!r}")
        return 0 if rows else 1
    if not args.vid_pid:
        raise UsageError("give VID:PID or --name PATTERN")
    vid, pid = _parse_vid_pid(args.vid_pid)
    answer = database.support_status(vid, pid)
    entry = database.lookup(vid, pid)
    ok = database.is_supported(vid, pid)
    data: dict[str, Any] = {"vid_pid": f"{vid:04X}:{pid:04X}", "supported": ok,
                            "answer": _answer_dict(answer)}
    if entry is not None:
        data["entry"] = _entry_dict(entry)
        quirks = database.quirks_for(vid, pid)
        data["quirks"] = [{"id": q.id, "description": q.description} for q in quirks]
    if args.json:
        _emit_json(data)
    else:
        print(f"{vid:04X}:{pid:04X}: {_answer_text(answer)}")
        if entry is not None:
            for key, value in _entry_dict(entry).items():
                if value not in (None, [], ""):
                    print(f"  {key}: {value}")
            for q in data["quirks"]:
                print(f"  quirk {q['id']}: {q['description']}")
    return 0 if ok else 1


def _answer_dict(answer: Any) -> dict[str, Any]:
    if hasattr(answer, "__dataclass_fields__"):
        from dataclasses import asdict

        out = asdict(answer)
        return {k: (v.name if hasattr(v, "name") else v) for k, v in out.items()}
    return {"status": str(answer)}


def _answer_text(answer: Any) -> str:
    status = getattr(answer, "status", answer)
    name = getattr(status, "name", str(status)).replace("_", " ").lower()
    reason = getattr(answer, "reason", None) or getattr(answer, "message", None)
    return f"{name}" + (f" ({reason})" if reason else "")


def _entry_dict(entry: Any) -> dict[str, Any]:
    if hasattr(entry, "__dataclass_fields__"):
        from dataclasses import fields

        out: dict[str, Any] = {}
        for f in fields(entry):
            value = getattr(entry, f.name)
            if hasattr(value, "name") and not isinstance(value, str):
                value = value.name
            out[f.name] = value
        out.setdefault("vid_pid", f"{out.get('vid', 0):04X}:{out.get('pid', 0):04X}")
        out["status"] = str(out.get("status", "")).lower()
        return json.loads(json.dumps(out, default=str))  # type: ignore[no-any-return]
    return {"entry": str(entry), "vid_pid": "", "status": "", "name": str(entry)}


def cmd_udev_rules(args: argparse.Namespace) -> int:
    from ccid import udev

    text = udev.render_rules(uaccess=args.uaccess)
    if args.install:
        target_dir = args.rules_dir
        # the uaccess tag is acted on by systemd's 73-seat-late.rules: sort before it
        name = "70-ccid-uaccess.rules" if args.uaccess else "92_pcscd_ccid.rules"
        target = os.path.join(target_dir, name)
        if not os.path.isdir(target_dir) or not os.access(target_dir, os.W_OK):
            raise CLIError(f"cannot write {target}: run as root (sudo ccid udev-rules --install)"
                           " on a system with udev")
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {target}")
        print("reload with: sudo udevadm control --reload-rules && sudo udevadm trigger")
        return 0
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_virtual(args: argparse.Namespace) -> int:
    from ccid.testing import presets

    items = presets.PRESETS
    if args.json:
        _emit_json({name: str(desc) for name, desc in items.items()})
    else:
        for name, desc in items.items():
            print(f"{name:<20} {desc}")
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
        row = _info_dict(info)
        row["database"] = _answer_text(database.support_status(row["vid"], row["pid"]))
        slots: list[dict[str, Any]] = []
        try:
            with ccid.open_reader(index, backend=args._virtual_backend
                                  if getattr(args, "_virtual_backend", None) else None) as reader:
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
    for index, row in enumerate(rows):
        print(f"{index}: {row['name']}")
        print(f"   {row['vid_pid']}  serial {row['serial'] or '-'}  path {row['usb_path']}"
              f"  slots {row['slots']}  {row.get('exchange_level', '?')}")
        print(f"   database: {row['database']}")
        if "error" in row:
            print(f"   error: {row['error']}")
        for s in row["slot_states"]:
            state = "card present" if s["present"] else "no card"
            atr = f"  ATR: {s['atr']}" if s.get("atr") else ""
            err = f"  ({s['error']})" if s.get("error") else ""
            print(f"   slot {s['slot']}: {state}{atr}{err}")
    return 0


def _slot_info(reader: Any, slot: int) -> dict[str, Any]:
    present = reader.slot_status(slot) != ICCStatus.ABSENT
    info: dict[str, Any] = {"slot": slot, "present": present}
    if info["present"]:
        try:
            with reader.connect(slot=slot) as card:
                info["atr"] = _hex(bytes(card.atr))
                info["protocol"] = card.protocol
        except CCIDError as exc:
            info["error"] = str(exc)
    return info


def _open(args: argparse.Namespace) -> Any:
    import ccid

    backend = _backend(args)
    selector = args.reader
    if selector is not None and selector.isdigit():
        selector = int(selector)
    if backend is None and not ccid.list_readers():
        raise CLIError(_no_reader_message())
    return ccid.open_reader(selector, backend=backend)


def cmd_send(args: argparse.Namespace) -> int:
    apdus = [_parse_hex(a) for a in args.apdu]
    protocols = {"T0": "T=0", "T1": "T=1", "T=0": "T=0", "T=1": "T=1"}
    protocol = protocols.get((args.protocol or "").upper())
    results = []
    with _open(args) as reader, reader.connect(slot=args.slot, protocol=protocol,
                                               mode=args.mode) as card:
        if not args.json:
            print(f"Reader: {reader.name}")
            print(f"ATR: {_hex(bytes(card.atr))}  protocol {card.protocol}")
        for apdu in apdus:
            t0 = time.perf_counter()
            resp = card.transmit(apdu)
            ms = (time.perf_counter() - t0) * 1000
            sw1, sw2 = (resp[-2], resp[-1]) if len(resp) >= 2 else (0, 0)
            results.append({"command": apdu.hex(), "response": resp.hex(),
                            "sw": f"{sw1:02X}{sw2:02X}", "meaning": _sw_text(sw1, sw2),
                            "ms": round(ms, 3)})
            if not args.json:
                print(f"> {_hex(apdu)}")
                print(f"< {_hex(resp[:-2])}" if len(resp) > 2 else "<")
                print(f"  SW {sw1:02X} {sw2:02X}: {_sw_text(sw1, sw2)}  ({ms:.1f} ms)")
    if args.json:
        _emit_json(results)
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    import ccid
    from ccid.report import format_descriptor_report, report_as_dict

    backend = _backend(args)
    infos = ccid.list_readers(backend=backend)
    if args.reader is not None:
        infos = [i for n, i in enumerate(infos) if _match(args.reader, n, i)]
    if not infos:
        raise CLIError(_no_reader_message())
    reports = []
    for info in infos:
        with ccid.open_reader(info.usb_path, backend=backend) as reader:
            reports.append(reader.report())
    if args.json:
        _emit_json([report_as_dict(r) for r in reports])
    else:
        for rep in reports:
            sys.stdout.write(format_descriptor_report(rep))
            print()
    return 0


def _match(selector: str, index: int, info: Any) -> bool:
    if selector.isdigit():
        return int(selector) == index
    low = selector.lower()
    return (low in str(info.name).lower() or selector == info.usb_path
            or selector == getattr(info, "serial", None)
            or low == f"{info.vid:04x}:{info.pid:04x}")


def _schedule_simulation(args: argparse.Namespace) -> None:
    """--simulate 'remove@1 insert@2': drive the virtual reader's slot while we watch."""
    if not args.simulate:
        return
    vreader = _virtual_reader(args)
    if vreader is None:
        raise UsageError("--simulate needs --virtual NAME")
    steps = []
    for item in args.simulate.replace(",", " ").split():
        action, _, when = item.partition("@")
        if action not in ("insert", "remove") or not when:
            raise UsageError(f"--simulate step {item!r}: use insert@SECONDS or remove@SECONDS")
        steps.append((float(when), action))
    card_holder: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        for when, action in sorted(steps):
            time.sleep(max(0.0, start + when - time.monotonic()))
            if action == "remove":
                card_holder["card"] = vreader.remove(0)
            else:
                card = card_holder.get("card")
                if card is None:
                    from ccid.testing import VirtualCard

                    card = VirtualCard()
                vreader.insert(card, 0)

    threading.Thread(target=run, daemon=True, name="ccid-simulate").start()


def cmd_scan(args: argparse.Namespace) -> int:
    """Like pcsc_scan: readers coming and going, cards inserted and removed, with ATRs.

    Blocks on the event queue (the readers' interrupt endpoints, or polling where a reader
    has none); enumeration for reader hot-plug runs every half second.
    """
    import ccid
    from ccid.events import CardInserted, CardRemoved, ReaderAdded, ReaderRemoved

    backend = _backend(args)
    _schedule_simulation(args)
    print("ccid scan (no pcscd); Ctrl-C to stop")
    opened: dict[str, Any] = {}
    number = 0
    if not ccid.list_readers(backend=backend):
        print("Waiting for the first reader... (or try --virtual gemalto-pc-twin)")
    events = ccid.watch(backend=backend, interval=0.5, timeout=args.timeout, readers=opened)
    try:
        # Ctrl-C raises KeyboardInterrupt inside watch()'s blocking queue wait (lock waits
        # are interruptible), so an idle scan stops at once; `finally` releases the readers.
        for event in events:
            stamp = time.strftime("%a %b %d %H:%M:%S %Y")
            if isinstance(event, ReaderAdded):
                print(f"{stamp}\n Reader added: {event.reader}")
            elif isinstance(event, ReaderRemoved):
                print(f"{stamp}\n Reader removed: {event.reader}")
            elif isinstance(event, (CardInserted, CardRemoved)):
                reader = opened.get(event.reader)
                if reader is None:
                    continue
                _print_slot_state(reader, event.slot, number, isinstance(event, CardInserted))
                number += 1
                if args.once:
                    break
            else:
                print(f"{stamp}\n Event: {event}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        events.close()
    return 0


def _print_slot_state(reader: Any, slot: int, number: int, present: bool) -> None:
    print(time.strftime("%a %b %d %H:%M:%S %Y"))
    name = reader.info.slot_names[slot] if slot < len(reader.info.slot_names) else reader.name
    print(f" Reader {slot}: {name}")
    print(f"  Event number: {number}")
    if not present:
        print("  Card state: Card removed, ")
        return
    try:
        with reader.connect(slot=slot) as card:
            raw = bytes(card.atr)
            print("  Card state: Card inserted, ")
            print(f"  ATR: {_hex(raw)}")
            print()
            for line in card.atr.describe():
                print(f"  {line}")
    except CCIDError as exc:
        print(f"  Card state: Card inserted, Unresponsive card, ({exc})")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ccid",
        description="Talk to USB CCID smart-card readers directly (no pcscd).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    p.add_argument("--trace", metavar="FILE", help="record the CCID wire to FILE")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, examples: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_,
                              epilog="examples:\n" + examples,
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
             "  ccid scan --virtual gemalto-pc-twin --simulate 'remove@1 insert@2' --timeout 3\n")
    virtual_opt(sp)
    sp.add_argument("--once", action="store_true", help="stop after the first state printed")
    sp.add_argument("--timeout", type=float, default=None, help="stop after SECONDS")
    sp.add_argument("--simulate", metavar="STEPS",
                    help="with --virtual: 'remove@SECONDS insert@SECONDS ...' on slot 0")
    sp.set_defaults(func=cmd_scan)

    for name in ("parse", "dump-descriptor"):
        sp = add(name, "print each CCID interface's descriptor like libccid's parse tool",
                 f"  ccid {name}\n  ccid {name} --virtual ct700 --json\n")
        virtual_opt(sp)
        sp.add_argument("--reader", metavar="SELECTOR", help="index, name, VID:PID, serial, path")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=cmd_parse)

    sp = add("send", "connect to a card and send hex APDUs",
             "  ccid send 00A4040007A0000002471001\n"
             "  ccid send --virtual extended --protocol T1 0084000008\n")
    virtual_opt(sp)
    sp.add_argument("apdu", nargs="+", help="APDU in hex (spaces allowed inside quotes)")
    sp.add_argument("--reader", metavar="SELECTOR", help="index, name, VID:PID, serial, path")
    sp.add_argument("--slot", type=int, default=0)
    sp.add_argument("--protocol", choices=["T0", "T1", "T=0", "T=1"], default=None)
    sp.add_argument("--mode", choices=["shared", "exclusive", "direct"], default="shared")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_send)

    sp = add("atr", "decode an ATR (no reader needed)", "  ccid atr 3B 02 14 50\n")
    sp.add_argument("atr", nargs="+", help="ATR bytes in hex")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_atr)

    sp = add("supported", "is a reader supported? (the reader database)",
             "  ccid supported 08E6:3437\n  ccid supported --name omnikey\n")
    sp.add_argument("vid_pid", nargs="?", metavar="VID:PID")
    sp.add_argument("--name", metavar="PATTERN", help="search by name instead")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_supported)

    sp = add("udev-rules", "print or install the udev rules for CCID readers",
             "  ccid udev-rules\n  ccid udev-rules --uaccess -o 92_pcscd_ccid.rules\n"
             "  sudo ccid udev-rules --uaccess --install\n")
    sp.add_argument("--uaccess", action="store_true",
                    help="also give the logged-in seat user access (TAG+=\"uaccess\")")
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

    sp = add("virtual", "list the built-in virtual readers", "  ccid virtual --list\n")
    sp.add_argument("--list", action="store_true", default=True)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_virtual)

    sp = add("demo", "first reader (or the virtual one): reader, card ATR, an APDU exchange",
             "  ccid demo\n  ccid demo --virtual two-slot\n")
    virtual_opt(sp)
    sp.add_argument("--reader", metavar="SELECTOR", default=None)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _tracing(args.trace):
            return int(args.func(args))
    except UsageError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    except (CCIDError, CLIError, OSError) as exc:
        print(f"ccid: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
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
