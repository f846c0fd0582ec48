"""fork(): handles from the parent refuse to work in the child; the child opens its own.

The seeds: on Yosemite PC/SC calls crashed after fork(); on El Capitan a context
established in the child after fork() failed. Here a reader or card opened before fork()
raises UsageError in the child (no crash, no hang, the parent's session intact), and a
reader opened in the child works.

A virtual device lives in the memory of the process that built it: after fork() the child
holds a copy, so what the parent does later (closing, releasing) is not seen by the child's
copy and the other way round. A real USB device is shared by both processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from conftest import in_child

import ccid
from ccid.errors import CCIDError, SharingViolationError, UsageError
from ccid.testing import VirtualCard, preset

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

ECHO = bytes.fromhex("8010000003010203")
ECHO_ANSWER = bytes.fromhex("0102039000")


def open_reader(backend: Any) -> ccid.Reader:
    return ccid.open_reader(backend=backend, quirks=False)


def raises_usage_error(call: Callable[[], Any]) -> bool:
    try:
        call()
    except UsageError:
        return True
    except CCIDError:
        return False
    return False


def test_handles_from_before_fork_refuse_in_the_child() -> None:
    backend = preset("gemalto-pc-twin")
    with open_reader(backend) as reader:
        card = reader.connect()
        assert card.transmit(ECHO) == ECHO_ANSWER

        def child() -> int:
            checks = [
                lambda: card.transmit(ECHO),
                lambda: reader.connect(),
                lambda: reader.escape(b"\x00"),
                lambda: reader.slot_status(0),
                lambda: reader.wait_for_event(0.1),
                lambda: card.reset(),
                lambda: card.disconnect("unpower"),
            ]
            failed = [i for i, call in enumerate(checks) if not raises_usage_error(call)]
            if failed:
                print("no UsageError from checks", failed)
                return 1
            reader.close()  # harmless: never touches the parent's handle
            return 0

        assert in_child(child) == 0
        # the parent's session goes on untouched
        for _ in range(3):
            assert card.transmit(ECHO) == ECHO_ANSWER
        with pytest.raises(SharingViolationError):
            reader.connect(mode="exclusive")  # the parent's handle is still registered


def test_usage_error_message_says_what_to_do() -> None:
    backend = preset("gemalto-pc-twin")
    with open_reader(backend) as reader:

        def child() -> int:
            try:
                reader.connect()
            except UsageError as exc:
                return 0 if "fork" in str(exc) and str(os.getppid()) in str(exc) else 2
            return 1

        assert in_child(child) == 0


def test_reader_opened_in_the_child_works() -> None:
    backend = preset("gemalto-pc-twin")  # built before fork, nothing opened

    def child() -> int:
        with open_reader(backend) as reader:
            return 0 if reader.connect().transmit(ECHO) == ECHO_ANSWER else 1

    assert in_child(child) == 0
    with open_reader(backend) as reader:  # and the parent can open its own copy
        assert reader.connect().transmit(ECHO) == ECHO_ANSWER


def test_child_opens_the_reader_the_parent_released() -> None:
    backend = preset("gemalto-pc-twin")
    reader = open_reader(backend)
    reader.connect().transmit(ECHO)
    reader.close()

    def child() -> int:
        with open_reader(backend) as mine:
            return 0 if mine.connect().transmit(ECHO) == ECHO_ANSWER else 1

    assert in_child(child) == 0


def test_child_cannot_take_a_reader_the_parent_holds() -> None:
    backend = preset("gemalto-pc-twin")
    with open_reader(backend) as reader:
        card = reader.connect()

        def child() -> int:
            # The interface is still claimed by the parent's handle: like pcscd holding it.
            try:
                open_reader(backend)
            except SharingViolationError:
                pass
            else:
                return 1
            # A context of its own (here: its own virtual reader) works in the child.
            with open_reader(preset("gemalto-pc-twin", card=VirtualCard())) as mine:
                return 0 if mine.connect().transmit(ECHO) == ECHO_ANSWER else 3

        assert in_child(child) == 0
        assert card.transmit(ECHO) == ECHO_ANSWER


def test_events_after_fork() -> None:
    backend = preset("gemalto-pc-twin", card=None)
    with open_reader(backend) as reader:

        def child() -> int:
            return 0 if raises_usage_error(lambda: list(reader.events(0.1))) else 1

        assert in_child(child) == 0
        vr = backend.readers[0]
        vr.insert(VirtualCard())
        event = reader.wait_for_event(5)  # the parent's monitor thread still runs
        assert type(event).__name__ == "CardInserted"
