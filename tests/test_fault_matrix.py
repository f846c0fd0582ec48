"""The fault matrix: every fault of ccid.testing.faults x every exchange level x T=0/T=1,
and a responder that lies (random bytes, wrong lengths, endless time extensions, other
slots' replies).

Each call ends with its answer or a ccid.errors exception within its timeout plus the
documented DEADLINE_MARGIN (a correctness bound: ``timeout`` is a ceiling for the whole
call, abort included, not a benchmark); the reader then works again (or was unplugged and
closes cleanly), and no thread or claim is left behind.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import ccid
from ccid.constants import MessageType
from ccid.errors import CCIDError, ReaderRemovedError
from ccid.reader import DEADLINE_MARGIN
from ccid.testing import VirtualBackend, VirtualCard
from ccid.testing import faults as F
from ccid.testing.presets import preset_reader

pytestmark = pytest.mark.timeout(120)

XFR = frozenset({MessageType.PC_to_RDR_XfrBlock})
APDU = bytes.fromhex("801000000401020304")
ANSWER = bytes.fromhex("010203049000")
TIMEOUT = 0.4
#: Scheduling allowance of a loaded shared CI machine on top of DEADLINE_MARGIN.
SCHEDULING = 0.15
BOUND = TIMEOUT + DEADLINE_MARGIN + SCHEDULING

FAULTS: list[F.Fault] = [
    F.BadLength(commands=XFR), F.BadLength(commands=XFR, delta=-3),
    F.CardRemoved(commands=XFR), F.ChainByte(commands=XFR), F.ChainByte(commands=XFR,
                                                                         value=0x10),
    F.ClaimedElsewhere(), F.Garbage(commands=XFR), F.NoAnswer(commands=XFR),
    F.NoAnswer(commands=XFR, wedge=True), F.PinCancelled(commands=XFR),
    F.PinTimeout(commands=XFR), F.Refuse(commands=XFR), F.RefuseUntilEscape(commands=XFR),
    F.SlowCard(commands=XFR, delay=2.0), F.StaleFrame(commands=XFR),
    F.Stall(commands=XFR, endpoint="in"), F.Stall(commands=XFR, endpoint="out"),
    F.TimeExtension(commands=XFR, times=1000, interval=0.01),
    F.Trickle(commands=XFR, piece=3, interval=0.05, pad=4000),
    F.Truncate(commands=XFR), F.Unplug(commands=XFR), F.Unplug(commands=XFR, stage="write"),
    F.WrongSeq(commands=XFR), F.WrongSlot(commands=XFR), F.WrongType(commands=XFR),
]
LEVELS = ["gemalto-pc-twin", "short-apdu", "extended-apdu"]


def threads_of(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ccid") and name in t.name]


def run_case(kind: str, protocol: int, arm: Callable[[Any], None],
             any_answer: bool = False) -> None:
    """``any_answer``: a well-formed lie is an answer the reader cannot tell from a true
    one: only its type is checked."""
    vr = preset_reader(kind, card=VirtualCard(protocols=(protocol,)))
    backend = VirtualBackend(vr)
    reader = ccid.open_reader(backend=backend, events=False, timeout=TIMEOUT)
    name = reader.name
    try:
        card = reader.connect()
        arm(vr)
        start = time.monotonic()
        try:
            answer: bytes | CCIDError = card.transmit(APDU)
        except CCIDError as exc:
            answer = exc
        elapsed = time.monotonic() - start
        assert elapsed <= BOUND, f"{elapsed:.3f} s > {BOUND} s ({answer!r})"
        assert answer == ANSWER or isinstance(answer, CCIDError) or (
            any_answer and type(answer) is bytes), answer
        vr.clear_faults()
        vr.responder = None
        if isinstance(answer, ReaderRemovedError) or not backend.devices[0].plugged:
            return  # unplugged: closing is all that is left
        if vr.wedged:
            return  # hung firmware: only a USB reset revives it; closing must still work
        if vr.card(0) is None:
            vr.insert(VirtualCard(protocols=(protocol,)), 0)
        # usable again: reconnect, as an application does after a card error
        last: CCIDError | None = None
        for _ in range(3):
            try:
                with reader.connect() as again:
                    assert again.transmit(APDU, timeout=5) == ANSWER
                break
            except CCIDError as exc:  # a stale state reported once (removed / reset)
                last = exc
                continue
        else:
            raise AssertionError(f"the reader did not recover: {last!r}")
    finally:
        reader.close()
    assert not backend.devices[0].claims
    deadline = time.monotonic() + 5
    while threads_of(name) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not threads_of(name)


@pytest.mark.parametrize("protocol", [0, 1])
@pytest.mark.parametrize("kind", LEVELS)
def test_every_fault(kind: str, protocol: int) -> None:
    for fault in FAULTS:
        try:
            run_case(kind, protocol, lambda vr, f=fault: vr.inject(f))
        except AssertionError as exc:
            raise AssertionError(f"{fault!r}: {exc}") from exc


def lying_responders(seed: int) -> list[tuple[str, Callable[[bytes], list[bytes] | None]]]:
    rnd = random.Random(seed)

    def only_xfr(make: Callable[[bytes], list[bytes]]) -> Callable[[bytes], list[bytes] | None]:
        return lambda frame: make(frame) if frame[0] == MessageType.PC_to_RDR_XfrBlock else None

    def header(frame: bytes, length: int, status: int = 0, error: int = 0,
               slot: int | None = None) -> bytes:
        return (b"\x80" + length.to_bytes(4, "little")
                + bytes((frame[5] if slot is None else slot, frame[6], status, error, 0)))

    return [
        ("random bytes", only_xfr(lambda f: [rnd.randbytes(rnd.randrange(1, 300))])),
        ("random frames", only_xfr(lambda f: [header(f, 8) + rnd.randbytes(8)
                                              for _ in range(rnd.randrange(1, 4))])),
        ("length says more", only_xfr(lambda f: [header(f, 1000) + b"\x90\x00"])),
        ("length says less", only_xfr(lambda f: [header(f, 1) + b"\x90\x00"])),
        ("huge length", only_xfr(lambda f: [header(f, 0xFFFFFFF0) + b"\x90\x00"])),
        ("endless time extensions", only_xfr(lambda f: [header(f, 0, 0x80, 1)] * 2000)),
        ("other slot's reply", only_xfr(lambda f: [header(f, 2, slot=(f[5] + 1) & 0xFF)
                                                   + b"\x90\x00"])),
        ("silence", only_xfr(lambda f: [])),
    ]


@pytest.mark.parametrize("protocol", [0, 1])
@pytest.mark.parametrize("kind", LEVELS)
def test_lying_responder(kind: str, protocol: int) -> None:
    for what, responder in lying_responders(kind.__hash__() ^ protocol):
        def arm(vr: Any, r: Callable[[bytes], list[bytes] | None] = responder) -> None:
            vr.responder = r
        try:
            run_case(kind, protocol, arm, any_answer=True)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from exc
