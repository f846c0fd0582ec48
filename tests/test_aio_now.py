"""``ccid.aio`` running an APDU's driver on the event loop: the transfers that would not wait
are made on the loop's thread, the rest of a request (a reply not there yet, a time
extension, a failure, a timeout and its ABORT) in the handle's worker thread.

Where each APDU ran is seen from the card's side: the virtual reader runs a card's
application inside the host's bulk-OUT write, so the application sees the thread that
wrote the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import ccid
import ccid.aio
from ccid import trace as _trace
from ccid.constants import MessageType
from ccid.errors import ReaderRemovedError, ReaderTimeoutError
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice, VirtualReader
from ccid.testing import faults as F
from ccid.testing.apps import APDU, Application, response
from ccid.testing.presets import preset_reader

pytestmark = pytest.mark.timeout(90)


class WhereEcho(Application):
    """``80 10``: echo; records the thread each command ran in. Instant unless told."""

    def __init__(self, instant: bool = True) -> None:
        self.instant = instant
        self.threads: list[str] = []

    def handle(self, cmd: APDU) -> bytes:
        self.threads.append(threading.current_thread().name)
        if (cmd.cla, cmd.ins) != (0x80, 0x10):
            return response(sw=0x6D00)
        return response(cmd.data if cmd.ne is None else cmd.data[: cmd.ne])


def echo(n: int) -> tuple[bytes, bytes]:
    data = bytes((i * 11 + n) & 0xFF for i in range(n))
    if n > 255:
        apdu = bytes([0x80, 0x10, 0, 0, 0]) + n.to_bytes(2, "big") + data + b"\x00\x00"
    else:
        apdu = bytes([0x80, 0x10, 0, 0, n]) + data + b"\x00"
    return apdu, data + b"\x90\x00"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.asynccontextmanager
async def aio_card(vr: VirtualReader, backend: Any = None) -> AsyncIterator[ccid.aio.Card]:
    """An asyncio handle on the card in slot 0 of ``vr`` (its own backend by default)."""
    if backend is None:
        backend = VirtualBackend(VirtualDevice(vr))
    async with await ccid.aio.open_reader(backend=backend, events=False) as reader, \
            reader.connect() as card:
        yield card


# The four exchange levels: T=0 and T=1 at TPDU level, short and extended APDU level. The
# sizes make T=1 chain both ways (IFSC 32 on the preset's card), T=0 take GET RESPONSE, and
# the extended reader chain its command (dwMaxCCIDMessageLength 271).
CASES = [
    ("gemalto-pc-twin", (0,), [3, 200]),
    ("gemalto-pc-twin", (1,), [3, 200, 1000]),
    ("short-apdu", (0, 1), [3, 200]),
    ("extended-apdu", (0, 1), [3, 200, 1000, 4000]),
]


@pytest.mark.parametrize(("preset", "protocols", "sizes"), CASES,
                         ids=["T=0", "T=1", "short", "extended"])
@pytest.mark.parametrize("libusb", [False, True], ids=["virtual", "libusb-transfers"])
def test_apdus_run_on_the_loop_thread(preset: str, protocols: tuple[int, ...],
                                      sizes: list[int], libusb: bool) -> None:
    app = WhereEcho()
    vr = preset_reader(preset, card=VirtualCard(app=app, protocols=protocols))
    backend = VirtualBackend(VirtualDevice(vr), libusb_transfers=libusb)

    async def scenario() -> str:
        async with aio_card(vr, backend) as card:
            for n in sizes:
                apdu, expected = echo(n)
                assert await card.transmit(apdu) == expected
        return threading.current_thread().name

    loop_thread = run(scenario())
    assert app.threads and set(app.threads) == {loop_thread}


def test_a_late_reply_is_awaited_in_the_worker_and_the_loop_runs_meanwhile() -> None:
    # Every exchange takes 0.1 s at the card: the command is written from the loop, the
    # reply is waited for in the worker thread while the loop goes on.
    app = WhereEcho()
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(app=app, protocols=(1,),
                                                             delay=0.1))

    async def scenario() -> tuple[int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        async with aio_card(vr) as card:
            task = asyncio.create_task(ticker())
            ticks = 0
            apdu, expected = echo(100)
            assert await card.transmit(apdu) == expected
            task.cancel()
        return ticks, threading.current_thread().name

    ticks, loop_thread = run(scenario())
    assert ticks >= 8, f"the loop was blocked: {ticks} ticks of 5 ms in >= 0.2 s"
    assert set(app.threads) == {loop_thread}


def test_an_application_that_may_wait_runs_in_the_worker_thread() -> None:
    app = WhereEcho(instant=False)
    vr = preset_reader("extended-apdu", card=VirtualCard(app=app))

    async def scenario() -> str:
        async with aio_card(vr) as card:
            apdu, expected = echo(10)
            assert await card.transmit(apdu) == expected
        return threading.current_thread().name

    loop_thread = run(scenario())
    assert app.threads and loop_thread not in app.threads


class BlindBackend(VirtualBackend):
    """A backend that cannot say whether a transfer would wait (as libusb through pyusb)."""

    transfer_ready = None  # type: ignore[assignment]


def test_a_backend_that_cannot_tell_gets_whole_calls_in_the_worker() -> None:
    app = WhereEcho()
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(app=app, protocols=(1,)))

    async def scenario() -> str:
        async with aio_card(vr, BlindBackend(VirtualDevice(vr))) as card:
            for n in (3, 1000):
                apdu, expected = echo(n)
                assert await card.transmit(apdu) == expected
        return threading.current_thread().name

    loop_thread = run(scenario())
    # One worker thread ran every block of both APDUs: whole calls, not block by block.
    assert len(set(app.threads)) == 1 and loop_thread not in app.threads


def test_tracing_runs_the_call_in_the_worker_and_records_it() -> None:
    app = WhereEcho()
    vr = preset_reader("extended-apdu", card=VirtualCard(app=app))
    captured: list[Any] = []

    async def scenario() -> str:
        async with aio_card(vr) as card:
            with _trace.capture() as records:
                apdu, expected = echo(5)
                assert await card.transmit(apdu) == expected
            captured.extend(records)
        return threading.current_thread().name

    loop_thread = run(scenario())
    assert loop_thread not in app.threads
    directions = [r.direction for r in captured]
    assert "->" in directions and "<-" in directions, directions


XFR = frozenset({MessageType.PC_to_RDR_XfrBlock})


@pytest.mark.parametrize("ending", ["timeout", "cancel"])
@pytest.mark.parametrize("preset", ["gemalto-pc-twin", "extended-apdu"])
def test_a_call_ended_on_the_way_aborts_and_the_handle_stays_usable(
        ending: str, preset: str) -> None:
    # The command is written from the loop; its reply never comes, so the worker waits
    # for it until the call's timeout, or until the task is cancelled: either way the
    # command is aborted (the XfrBlock, then PC_to_RDR_Abort) and the next APDU works.
    app = WhereEcho()
    vr = preset_reader(preset, card=VirtualCard(app=app, protocols=(1,)))

    async def scenario() -> None:
        async with aio_card(vr) as card:
            apdu, expected = echo(4)
            assert await card.transmit(apdu) == expected
            vr.inject(F.NoAnswer(commands=XFR))
            seen = vr.commands_seen
            if ending == "timeout":
                started = time.monotonic()
                with pytest.raises(ReaderTimeoutError, match="aborted"):
                    await card.transmit(apdu, timeout=0.3)
                assert time.monotonic() - started < 0.3 + 0.5  # the ceiling, + scheduling
            else:
                task = asyncio.create_task(card.transmit(apdu, timeout=20))
                await asyncio.sleep(0.2)
                task.cancel()
                started = time.monotonic()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert time.monotonic() - started < 2.0
            assert vr.commands_seen >= seen + 2
            vr.clear_faults()
            assert await card.transmit(apdu) == expected
        assert set(app.threads) == {threading.current_thread().name}

    run(scenario())


def test_two_handles_on_one_slot_in_one_loop_take_turns() -> None:
    # A handle's APDU waits in the worker for a late reply while the loop's thread holds
    # the slot; another handle's call from that same thread must wait for it rather than
    # enter the re-entrant slot lock and write in between (each T=1 exchange here is
    # several blocks, so a command slipped in would break the chains).
    app = WhereEcho()
    card = VirtualCard(app=app, protocols=(1,), delay=0.01)
    vr = preset_reader("gemalto-pc-twin", card=card)

    async def scenario() -> None:
        async with await ccid.aio.open_reader(backend=VirtualBackend(VirtualDevice(vr)),
                                              events=False) as reader, \
                reader.connect(mode="shared") as a, reader.connect(mode="shared") as b:
            jobs = [echo(100 + 10 * i) for i in range(6)]
            results = await asyncio.gather(*(
                (a if i % 2 else b).transmit(apdu) for i, (apdu, _) in enumerate(jobs)))
            assert results == [expected for _, expected in jobs]

    run(scenario())
    assert len(app.threads) == 6


def test_blocking_and_aio_handles_share_a_slot_across_threads() -> None:
    vr = preset_reader("extended-apdu", card=VirtualCard(app=WhereEcho()))
    backend = VirtualBackend(VirtualDevice(vr))
    stop = threading.Event()
    errors: list[BaseException] = []

    async def scenario() -> None:
        async with aio_card(vr, backend) as card:
            blocking = card.reader.blocking.connect()

            def hammer() -> None:
                try:
                    while not stop.is_set():
                        apdu, expected = echo(7)
                        assert blocking.transmit(apdu) == expected
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            thread = threading.Thread(target=hammer)
            thread.start()
            try:
                for i in range(300):
                    apdu, expected = echo(1 + i % 50)
                    assert await card.transmit(apdu) == expected
            finally:
                stop.set()
                await asyncio.get_running_loop().run_in_executor(None, thread.join)
            blocking.disconnect()

    run(scenario())
    assert not errors


def test_an_unplugged_reader_on_the_loop_path() -> None:
    vr = preset_reader("extended-apdu", card=VirtualCard(app=WhereEcho()))

    async def scenario() -> None:
        async with aio_card(vr) as card:
            apdu, expected = echo(3)
            assert await card.transmit(apdu) == expected
            vr.inject(F.Unplug(commands=XFR, stage="reply"))
            with pytest.raises(ReaderRemovedError):
                await card.transmit(apdu)
            with pytest.raises(ReaderRemovedError):
                await card.transmit(apdu)

    run(scenario())
