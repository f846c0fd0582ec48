"""Every `ccid` example in README.md and in the --help texts runs, against virtual readers.

Sources: README.md's ```sh blocks and its inline `ccid ...` spans, and the examples of the
main and every subcommand's help. What is not run, by rule and listed here:
``SKIP_PREFIXES`` (installing, root, changing the system) and ``NOT_COMMANDS`` (table cells
naming a placeholder). What is adapted, and only this: a command that can take
``--virtual`` and has none gets ``--virtual gemalto-pc-twin`` (no hardware here); a scan
that would wait forever gets ``--timeout 1``; ``/tmp/`` becomes the test's own directory;
``session.log`` / ``session.jsonl``, which the README's trace examples read, are recorded
first with ``ccid --trace``; ``ccid serve`` gets ``--socket`` in the test's directory, runs
until the example's PC/SC client lines (``CLIENTS``, run unmodified against it with
``PCSCLITE_CSOCK_NAME`` set, which is what the README's ``export`` line does) are done, and
must then stop cleanly on SIGTERM. Set CCID_README to check another copy of the README.

README.md's ```python blocks run too, each unmodified, in order, in a fresh interpreter
(cwd the test's directory). What is adapted, and only this: a prelude (``PRELUDE``) imports
``ccid`` and sets the library's default pyusb backend (the cache behind
``ccid.transport.usb.default_backend()``) to the ``gemalto-pc-twin`` virtual reader, since
there is no hardware here and the blocks call ``open_reader()`` / ``list_readers()`` /
``ccid.aio.open_reader()`` with no backend. The virtual reader is a real pyusb backend, so
none of our code is mocked. A block that prints APDU responses must show its SELECT of the
virtual card's applet (A0000000 18FF) answering 9000.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

README = Path(os.environ.get("CCID_README", ROOT / "README.md"))

#: Lines not run: they install packages, need root, or change the system.
SKIP_PREFIXES = ("sudo ", "python3 -m pip ", "pip ", "python3 -m pytest", "python -m pytest")
#: Inline spans that name a placeholder (a table of commands), not a command to run.
NOT_COMMANDS = {"ccid send APDU…", "ccid atr HEX", "ccid supported VID:PID", "ccid trace FILE"}
#: Subcommands with --virtual.
VIRTUAL = {"list", "scan", "parse", "dump-descriptor", "send", "demo", "serve"}
#: Unmodified PC/SC clients the README runs against `ccid serve`.
CLIENTS = ("opensc-tool ", "pcsc_scan")
#: The README's line pointing those clients at the server; the test sets the variable itself.
CLIENT_ENV = "export PCSCLITE_CSOCK_NAME="
#: Run before each README python block: `import ccid` (a later block may rely on the first
#: one's import) and a virtual reader as the default backend (there is no hardware here).
PRELUDE = (
    "import ccid\n"
    "import ccid.testing.presets\n"
    "import ccid.transport.usb\n"
    "ccid.transport.usb._default_backend = ccid.testing.presets.preset('gemalto-pc-twin')\n"
)
#: A SELECT by AID: a block sending one must print it answering 9000 (the README selects the
#: virtual card's applet, A0000000 18FF).
SELECT = "00A40400"


def readme_examples(text: str) -> list[str]:
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part and not part.startswith("#"):
                    out.append(part)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += [span for span in re.findall(r"`(ccid [^`]+)`", prose) if span not in NOT_COMMANDS]
    return out


def python_blocks(text: str) -> list[tuple[int, str]]:
    """README's ```python blocks, each with the line it starts on."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def help_examples() -> list[tuple[str, list[str]]]:
    from ccid import cli

    parser = cli.build_parser()
    sources = [("ccid --help", parser.epilog or "")]
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sp in sub.choices.items():
        sources.append((f"ccid {name} --help", sp.epilog or ""))
    out = []
    for source, epilog in sources:
        lines = [line.strip() for line in epilog.splitlines()
                 if line.startswith("  ccid ") or line.startswith("  sudo ")]
        out.append((source, lines))
    return out


def adapt(command: str, tmp: Path) -> list[str] | None:
    if command.startswith((*SKIP_PREFIXES, *CLIENTS, CLIENT_ENV)):
        return None
    argv = shlex.split(command.replace("/tmp/", f"{tmp}/"), comments=True)
    assert argv[0] == "ccid", command
    args = argv[1:]
    # the subcommand: the first word that is not a global option (or its value)
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] == "--trace" else 1
    sub = args[i] if i < len(args) else ""
    if sub in VIRTUAL and "--virtual" not in args:
        args.insert(i + 1, "--virtual")
        args.insert(i + 2, "gemalto-pc-twin")
    if sub == "scan" and "--once" not in args and "--timeout" not in args:
        args += ["--timeout", "1"]
    if sub == "serve" and "--socket" not in args:
        args += ["--socket", str(tmp / "pcscd.comm")]
    return args


class Server:
    """A `ccid serve` example, running until its client lines are done."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.socket = Path(args[args.index("--socket") + 1])
        self.proc = subprocess.Popen([sys.executable, "-m", "ccid", *args], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert self.proc.poll() is None, (args, self.proc.communicate())
            assert time.monotonic() < deadline, f"{args}: no socket after 30 s"
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, (self.proc.returncode, out[-2000:], err[-2000:])
        assert "Traceback" not in err, err
        assert not self.socket.exists(), "the socket outlived the server"


def run_all(commands: list[str], tmp: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("session.log", "session.jsonl"):
        if not any(name in command for command in commands):
            continue
        subprocess.run([sys.executable, "-m", "ccid", "--trace", name, "send", "--virtual",
                        "gemalto-pc-twin", "0084000008"], cwd=tmp, env=env, check=True,
                       capture_output=True, timeout=60)
    ran = 0
    server: Server | None = None
    try:
        for command in commands:
            if command.startswith(CLIENTS):
                assert server is not None, f"{command}: no `ccid serve` example before it"
                client_env = dict(env, PCSCLITE_CSOCK_NAME=str(server.socket))
                r = subprocess.run(shlex.split(command, comments=True), cwd=tmp,
                                   env=client_env, capture_output=True, text=True,
                                   timeout=60, stdin=subprocess.DEVNULL)
                assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
                ran += 1
                continue
            args = adapt(command, tmp)
            if args is None:
                continue
            if "serve" in args:
                if server is not None:
                    server.stop()
                server = Server(args, tmp, env)
                ran += 1
                continue
            r = subprocess.run([sys.executable, "-m", "ccid", *args], cwd=tmp, env=env,
                               capture_output=True, text=True, timeout=60,
                               stdin=subprocess.DEVNULL)
            assert r.returncode == 0, (command, args, r.stdout[-2000:], r.stderr[-2000:])
            assert "Traceback" not in r.stderr, (command, r.stderr)
            ran += 1
        if server is not None:
            server.stop()
            server = None
    finally:
        if server is not None:
            server.proc.kill()
            server.proc.communicate()
    assert ran, "no example ran"


def test_readme_examples_run(tmp_path: Path) -> None:
    commands = readme_examples(README.read_text(encoding="utf-8"))
    assert any(c.startswith("ccid udev-rules") for c in commands)
    run_all(commands, tmp_path)


@pytest.mark.parametrize("source", [s for s, _ in help_examples()])
def test_help_examples_run(source: str, tmp_path: Path) -> None:
    commands = dict(help_examples())[source]
    assert commands, f"{source} shows no example"
    run_all(commands, tmp_path)


def test_skipped_lines_are_only_the_listed_kinds() -> None:
    everything = readme_examples(README.read_text(encoding="utf-8"))
    everything += [c for _, lines in help_examples() for c in lines]
    for command in everything:
        assert command.startswith(("ccid ", *SKIP_PREFIXES, *CLIENTS, CLIENT_ENV)), command


def test_uaccess_examples_sort_before_73() -> None:
    text = README.read_text(encoding="utf-8")
    commands = readme_examples(text) + [c for _, lines in help_examples() for c in lines]
    for command in commands:
        argv = shlex.split(command, comments=True)
        if "udev-rules" in argv and "--uaccess" in argv and "-o" in argv:
            assert Path(argv[argv.index("-o") + 1]).name < "73", command
    for target in re.findall(r"/etc/udev/rules\.d/(\S+\.rules)", text):
        assert target != "92_pcscd_ccid.rules" or "libccid" in text, target


def test_readme_has_python_blocks() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert any("ccid.aio" in code for _, code in blocks), "no asyncio example"
    assert any("ccid.open_reader()" in code for _, code in blocks), "no default-backend example"


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    line, code = python_blocks(README.read_text(encoding="utf-8"))[index]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    where = f"README.md python block at line {line}"
    assert r.returncode == 0, (where, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout, (where, r.stderr[-2000:])
    if SELECT in code.upper().replace(" ", "") and "print(" in code:
        # the response is printed as hex: data (none for this applet) then SW1 SW2
        answers = [ln for ln in r.stdout.splitlines()
                   if re.fullmatch(r"(?:[0-9a-f]{2})*9000", ln.strip())]
        assert answers, (where, "its SELECT did not answer 9000", r.stdout[-2000:])
