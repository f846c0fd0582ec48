"""``ccid serve``: the command line of the PC/SC server (imported when the parser is built,
so it imports nothing heavy; the server loads when the command runs)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["add_parser", "run"]

EXAMPLES = """examples:
  ccid serve                                   # every USB reader, per-user socket
  ccid serve --virtual gemalto-pc-twin ct700   # virtual readers, for testing applications
  PCSCLITE_CSOCK_NAME=$XDG_RUNTIME_DIR/ccid/pcscd.comm pcsc_scan
  sudo ccid serve --system --allow-group scard # in place of pcscd (stop pcscd first)

With --virtual, lines on standard input drive the virtual readers (index from 0):
  remove I | insert I [t0|t1|t01] | unplug I
"""

_CARDS = ("t01", "t0", "t1", "empty")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``ccid`` parser's subparsers."""
    sp: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve the readers to PC/SC applications (pcsc-lite's socket protocol)",
        description="A PC/SC server: unmodified pcsc-lite clients (pcsc_scan, OpenSC, "
                    "pyscard, ...) use the readers through it (protocols 4:4, 4:5, 4:6).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--virtual", nargs="+", metavar="NAME[=CARD]", default=[],
                    help="serve built-in virtual readers instead of USB ones; CARD is "
                         "t01 (default), t0, t1 or empty")
    sp.add_argument("--socket", metavar="PATH", help="socket path (default: "
                    "$XDG_RUNTIME_DIR/ccid/pcscd.comm)")
    sp.add_argument("--system", action="store_true",
                    help="listen on /run/pcscd/pcscd.comm like pcscd (refused if one runs; "
                         "$CCID_SERVE_SYSTEM_SOCKET moves it)")
    sp.add_argument("--allow-group", action="append", default=[], metavar="GROUP",
                    help="also serve members of GROUP (default: only our own user)")
    sp.add_argument("--allow-escape", action="store_true",
                    help="offer FEATURE_CCID_ESC_COMMAND (vendor escapes) to clients")
    sp.add_argument("--virtual-pin", metavar="DIGITS",
                    help="what the user of a virtual pinpad types (default: nothing, the "
                         "entry times out)")
    sp.add_argument("-v", dest="serve_verbose", action="count", default=0,
                    help="-v: each request and answer (APDUs and PINs masked)")
    sp.add_argument("--trace", dest="serve_trace", metavar="FILE",
                    help="record the CCID wire to FILE")
    sp.set_defaults(func=run)
    return sp


def _virtual_backend(specs: list[str], pin: str | None = None) -> Any:
    from ccid.errors import UsageError
    from ccid.testing import PinEntry, VirtualBackend, VirtualCard, presets

    backend = VirtualBackend()
    for spec in specs:
        name, _, kind = spec.partition("=")
        kind = kind or "t01"
        if name not in presets.PRESETS:
            raise UsageError(f"unknown virtual reader {name!r}; known: "
                             + ", ".join(sorted(presets.PRESETS)))
        if kind not in _CARDS:
            raise UsageError(f"card {kind!r} for {name}: use one of {', '.join(_CARDS)}")
        extra = {} if pin is None else {"pin_entry": PinEntry(pin)}
        presets.preset(name, _card(kind, VirtualCard), backend=backend, **extra)
    return backend


def _card(kind: str, card_type: Any) -> Any:
    if kind == "empty":
        return None
    protocols = {"t0": (0,), "t1": (1,), "t01": (0, 1)}[kind]
    return card_type(protocols=protocols)


def _drive(backend: Any, stream: Any) -> None:
    """Control lines for the virtual readers (tests and demos insert and remove cards)."""
    from ccid.testing import VirtualCard

    removed: dict[int, Any] = {}
    for line in stream:
        words = line.split()
        if not words:
            continue
        try:
            readers = backend.readers
            readers = readers() if callable(readers) else readers
            index = int(words[1]) if len(words) > 1 else 0
            vreader = readers[index]
            if words[0] == "remove":
                removed[index] = vreader.remove(0)
            elif words[0] == "insert":
                kind = words[2] if len(words) > 2 else None
                card = _card(kind, VirtualCard) if kind else removed.pop(index, None)
                vreader.insert(card if card is not None else VirtualCard(), 0)
            elif words[0] == "unplug":
                backend.unplug(vreader)
            else:
                raise ValueError(words[0])
            print(f"ok {line.strip()}", flush=True)
        except (ValueError, IndexError, KeyError) as exc:
            print(f"error {line.strip()}: {exc}", flush=True)


def run(args: argparse.Namespace) -> int:
    from ccid.serve.server import SYSTEM_SOCKET, Server, ServerError, default_socket_path, group_ids

    level = logging.DEBUG if args.serve_verbose else logging.INFO
    logging.getLogger("ccid.serve").setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    if root.level > level:
        root.setLevel(level)
        logging.getLogger("ccid").setLevel(logging.WARNING if not args.verbose else
                                           root.level)
        logging.getLogger("ccid.serve").setLevel(level)
    if args.system and args.socket:
        from ccid.errors import UsageError

        raise UsageError("--system and --socket are exclusive")
    # CCID_SERVE_SYSTEM_SOCKET: where --system listens when /run/pcscd is not pcscd's
    # place (containers, tests); pcscd's own path is fixed when it is built.
    system = os.environ.get("CCID_SERVE_SYSTEM_SOCKET") or SYSTEM_SOCKET
    path = system if args.system else (args.socket or default_socket_path())
    backend = _virtual_backend(args.virtual, args.virtual_pin) if args.virtual else None
    if args.serve_trace:
        from ccid import trace

        trace.enable(args.serve_trace)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    # Installed before the socket exists: a SIGTERM sent as soon as the socket appears must
    # still shut down cleanly (socket removed), not kill the process.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = Server(path, backend=backend, allow_gids=group_ids(args.allow_group),
                        allow_escape=args.allow_escape, wire_log=args.serve_verbose > 0,
                        socket_mode=0o666 if args.system else 0o600)
        server.start()
    except ServerError as exc:
        print(f"ccid serve: {exc}", file=sys.stderr)
        return 1
    print(f"ccid serve: listening on {path}", flush=True)
    print(f"export PCSCLITE_CSOCK_NAME={path}", flush=True)
    if backend is not None and not os.isatty(0):
        threading.Thread(target=_drive, args=(backend, sys.stdin), daemon=True,
                         name="ccid-serve-control").start()
    try:
        # Short waits: the kernel may hand SIGTERM to any thread, and Python runs the
        # handler only once the main thread runs again.
        while not stop.wait(1.0):
            pass
    finally:
        server.close()
        if args.serve_trace:
            from ccid import trace

            trace.disable()
        logging.getLogger("ccid.serve").info("stopped; %s removed", path)
    return 0
