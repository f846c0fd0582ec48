"""A fork child never frees its parent's reader, however it ends.

Each case runs in a fresh interpreter (children must end as real programs do: sys.exit,
an uncaught exception, close() then exit, falling off the end), which opens a virtual
reader, forks, lets the child end, then reports what the child did to the parent's handle
(the virtual backend records releases and closes made from a fork child) and whether the
parent still drives the reader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import os, sys, gc
import ccid
from ccid.testing import VirtualBackend, VirtualCard, preset_reader

mode = sys.argv[1]
backend = VirtualBackend(preset_reader("gemalto-pc-twin", card=VirtualCard()))
reader = ccid.open_reader(backend=backend)
card = reader.connect()
pid = os.fork()
if pid == 0:
    if mode == "exit":
        sys.exit(0)
    if mode == "raise":
        raise RuntimeError("the child fails")
    if mode == "close":
        card.disconnect()
        reader.close()
        sys.exit(0)
    if mode == "drop":
        card = reader = None
        gc.collect()
        sys.exit(0)
    # "return": the child runs on to the end of the program
else:
    os.waitpid(pid, 0)
    print("CHILD", backend.child_calls())
    print("CLAIMS", sorted(backend.devices[0].claims))
    print("APDU", card.transmit(bytes.fromhex("801000000401020304")).hex())
    reader.close()
"""


@pytest.mark.parametrize("mode", ["exit", "raise", "close", "drop", "return"])
def test_child_ending_any_way_leaves_the_parents_reader(mode: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                          text=True, env=env, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["CHILD"] == "[]", f"the child touched the parent's handle: {lines['CHILD']}"
    assert lines["CLAIMS"] == "[0]"
    assert lines["APDU"] == "010203049000"
