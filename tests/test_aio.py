"""End-to-end scenarios through both front doors (blocking ``ccid`` and ``ccid.aio``) on the
virtual readers, and what only asyncio has: cancellation, concurrency in one loop, tasks
waiting for a transaction, ``watch``.

The shared scenarios are a representative set of test_reader_exchange, test_sharing,
test_events, test_reader_faults and test_pinpad, written once (see frontdoors.py).
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest
from frontdoors import AIO, Door, doors, drain, next_event

import ccid
import ccid.aio
from ccid import events as ev
from ccid.constants import MessageType
from ccid.errors import (
    CardRemovedError,
    CardResetError,
    NoCardError,
    PinCancelledError,
    ReaderTimeoutError,
    SharingViolationError,
    UsageError,
)
from ccid.testing import VirtualBackend, VirtualCard, VirtualDevice, VirtualReader
from ccid.testing import faults as F
from ccid.testing.apps import CallableApp, default_card_os
from ccid.testing.presets import preset_reader

pytestmark = pytest.mark.timeout(90)

XFR = frozenset({MessageType.PC_to_RDR_XfrBlock})
APDU = bytes.fromhex("801000000401020304")
ANSWER = bytes.fromhex("010203049000")
SELECT_MF = bytes.fromhex("00A4000C023F00")
SELECT_APPLET = bytes.fromhex("00A4040006A000000018FF")
COUNT4 = bytes.fromhex("8034000404")


def echo(n: int, extended: bool = False) -> tuple[bytes, bytes]:
    """An ECHO command of n data bytes and the response it must give."""
    data = bytes((i * 7 + n) & 0xFF for i in range(n))
    if extended or n > 255:
        apdu = bytes([0x80, 0x10, 0, 0, 0]) + n.to_bytes(2, "big") + data + b"\x00\x00"
    else:
        apdu = bytes([0x80, 0x10, 0, 0, n]) + data + b"\x00"
    return apdu, data + b"\x90\x00"


def backend_of(vr: VirtualReader) -> VirtualBackend:
    return VirtualBackend(VirtualDevice(vr))


# --- exchange -------------------------------------------------------------------------------


@doors
@pytest.mark.parametrize("protocol", [0, 1], ids=["T0", "T1"])
@pytest.mark.parametrize("kind", ["gemalto-pc-twin", "short-apdu", "extended-apdu"])
def test_connect_atr_and_transmit(door: Door, kind: str, protocol: int) -> None:
    vcard = VirtualCard(fi_di=0x96)
    vr = preset_reader(kind, card=vcard)

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader:
            async with reader.connect(protocol=protocol) as card:
                assert card.protocol == f"T={protocol}"
                assert bytes(card.atr) == vcard.atr
                short, expected = echo(200)
                assert await card.transmit(short) == expected
                assert await card.transmit(SELECT_MF) == b"\x90\x00"
                long_apdu, long_expected = echo(3000, extended=True)
                level = reader.exchange_level.name
                if level == "EXTENDED_APDU" or (level == "TPDU" and protocol == 1):
                    assert await card.transmit(long_apdu) == long_expected
                else:
                    with pytest.raises(UsageError):
                        await card.transmit(long_apdu)
                assert await card.transmit(short) == expected
            assert not card.connected

    door.run(scenario)


@doors
def test_64k_extended_apdu(door: Door) -> None:
    vr = preset_reader("extended-apdu", card=VirtualCard(protocols=(1,)))
    apdu, expected = echo(65535, extended=True)

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader, \
                reader.connect() as card:
            assert await card.transmit(apdu) == expected

    door.run(scenario)


@doors
def test_t0_get_response_automatic_and_raw(door: Door) -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(0,), t0_always_61=True))

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader, \
                reader.connect() as card:
            assert await card.transmit(bytes.fromhex("8012000010")) == \
                bytes(range(16)) + b"\x90\x00"
            raw = await card.transmit(bytes.fromhex("8012000010"), raw=True)
            assert raw[0] == 0x61 and len(raw) == 2

    door.run(scenario)


@doors
def test_list_escape_direct_mode_and_no_card(door: Door) -> None:
    vr = preset_reader("two-slot", card=None, escape_handler=lambda data: b"echo:" + bytes(data))
    vr.insert(VirtualCard(), 1)
    backend = backend_of(vr)

    async def scenario(door: Door) -> None:
        (info,) = await door.list_readers(backend)
        async with await door.open_reader(info, backend=backend, events=False) as reader:
            assert reader.name == info.name
            assert await reader.escape(b"\x01\x02") == b"echo:\x01\x02"
            async with reader.connect(mode="direct") as direct:
                assert direct.atr is None
                assert await direct.escape(b"x") == b"echo:x"
                with pytest.raises(UsageError):
                    await direct.transmit(SELECT_MF)
            with pytest.raises(NoCardError):
                await reader.connect(0)
            with pytest.raises(UsageError):
                await reader.connect(2)
            async with reader.connect(1) as card:
                assert reader.slots[1].powered and reader.slots[1].atr == bytes(card.atr)
        with pytest.raises(UsageError):
            await reader.connect(1)  # closed

    door.run(scenario)


@doors
def test_disconnect_dispositions_and_cold_reset(door: Door) -> None:
    vr = preset_reader("gemalto-pc-twin")

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader:
            for disposition in ("leave", "reset", "unpower", "eject"):
                card = await reader.connect()
                assert await card.transmit(SELECT_MF) == b"\x90\x00"
                await card.disconnect(disposition)
                assert reader.slots[0].powered == (disposition in ("leave", "reset"))
            card = await reader.connect()
            await card.reset(cold=True)
            assert await card.transmit(SELECT_MF) == b"\x90\x00"
            with pytest.raises(UsageError):
                await card.disconnect("explode")
            await card.disconnect()

    door.run(scenario)


# --- sharing, reset, removal (the seed scenarios) -------------------------------------------


@doors
def test_sharing_violation_both_orders(door: Door) -> None:
    vr = preset_reader("gemalto-pc-twin")

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader:
            a = await reader.connect()
            b = await reader.connect()
            with pytest.raises(SharingViolationError) as info:
                await reader.connect(mode="exclusive")
            assert info.value.pcsc_code == "SCARD_E_SHARING_VIOLATION"
            await a.disconnect()
            await b.disconnect()
            ex = await reader.connect(mode="exclusive")
            with pytest.raises(SharingViolationError):
                await reader.connect()
            with pytest.raises(SharingViolationError):
                await reader.connect(protocol="T=1")
            await ex.disconnect()
            async with reader.connect() as again:
                assert await again.transmit(SELECT_MF) == b"\x90\x00"

    door.run(scenario)


@doors
def test_reset_by_another_handle_is_seen_before_anything_is_sent(door: Door) -> None:
    vr = preset_reader("gemalto-pc-twin")

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader:
            looper = await reader.connect()
            other = await reader.connect()
            assert await looper.transmit(SELECT_APPLET) == b"\x90\x00"
            assert await looper.transmit(COUNT4) == bytes(range(4)) + b"\x90\x00"
            await other.reset()
            seen = vr.commands_seen
            with pytest.raises(CardResetError) as info:
                await looper.transmit(COUNT4)
            assert info.value.pcsc_code == "SCARD_W_RESET_CARD"
            assert vr.commands_seen == seen  # nothing reached the reader
            await looper.reconnect()
            assert await looper.transmit(COUNT4) == b"\x69\x85"  # the applet was deselected
            assert await looper.transmit(SELECT_APPLET) == b"\x90\x00"
            await other.disconnect("unpower")
            with pytest.raises(CardResetError):
                await looper.transmit(SELECT_APPLET)
            await looper.reconnect()
            assert await looper.transmit(SELECT_APPLET) == b"\x90\x00"

    door.run(scenario)


@doors
def test_removal_event_and_old_handles_refused(door: Door) -> None:
    vr = preset_reader("gemalto-pc-twin", card=None)

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), quirks=False,
                                          poll_interval=3600) as reader:
            assert await drain(reader) == []
            seen = vr.commands_seen
            vr.insert(VirtualCard())
            assert await next_event(reader) == ev.CardInserted(reader.name, 0)
            card = await reader.connect()
            vr.remove()
            assert await next_event(reader) == ev.CardRemoved(reader.name, 0)
            after = vr.commands_seen
            assert after > seen  # the connect
            with pytest.raises(CardRemovedError):
                await card.transmit(SELECT_MF)
            assert vr.commands_seen == after  # refused before anything was sent
            vr.insert(VirtualCard())
            events = []
            async for event in reader.events(timeout=5):
                events.append(event)
                break
            assert events == [ev.CardInserted(reader.name, 0)]
            async with reader.connect() as again:
                assert await again.transmit(SELECT_MF) == b"\x90\x00"

    door.run(scenario)


@doors
def test_unplug_is_reader_removed(door: Door) -> None:
    vr = preset_reader("gemalto-pc-twin")
    backend = backend_of(vr)

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend, quirks=False) as reader:
            await drain(reader)
            backend.unplug(vr)
            got = [event async for event in reader.events(timeout=5)]
            assert got == [ev.ReaderRemoved(reader.name)]  # and the iteration ended

    door.run(scenario)


# --- faults, timeouts ------------------------------------------------------------------------


@doors
@pytest.mark.parametrize(
    "fault",
    [F.StaleFrame(commands=XFR), F.Stall(commands=XFR, endpoint="in"),
     F.TimeExtension(commands=XFR, times=3, multiplier=2, interval=0.02)],
    ids=lambda f: type(f).__name__)
def test_recoverable_faults_are_invisible(door: Door, fault: F.Fault) -> None:
    vr = preset_reader("extended-apdu", card=VirtualCard())

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader, \
                reader.connect() as card:
            vr.inject(fault)
            assert await card.transmit(APDU, timeout=5) == ANSWER
            assert await card.transmit(APDU) == ANSWER

    door.run(scenario)


@doors
def test_timeout_aborts_and_the_reader_goes_on(door: Door) -> None:
    vr = preset_reader("extended-apdu", card=VirtualCard())
    frames = record_commands(vr)

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader, \
                reader.connect() as card:
            vr.inject(F.NoAnswer(commands=XFR))
            with pytest.raises(ReaderTimeoutError, match="aborted") as info:
                await card.transmit(APDU, timeout=1.0)
            assert info.value.reader == reader.name
            assert MessageType.PC_to_RDR_Abort in frames
            vr.clear_faults()
            assert await card.transmit(APDU) == ANSWER
            card_removed = F.CardRemoved(commands=XFR)
            vr.inject(card_removed)
            with pytest.raises(CardRemovedError):
                await card.transmit(APDU)
            with pytest.raises(NoCardError):
                await reader.connect()

    door.run(scenario)


def record_commands(vr: VirtualReader) -> list[int]:
    """The message type of every bulk command the reader receives, in order."""
    frames: list[int] = []

    def responder(frame: bytes) -> None:
        frames.append(frame[0])
        return None

    vr.responder = responder
    return frames


# --- transactions and pinpad -----------------------------------------------------------------


@doors
def test_transaction(door: Door) -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(1,)))

    async def scenario(door: Door) -> None:
        async with await door.open_reader(backend=backend_of(vr), events=False) as reader:
            a = await reader.connect()
            b = await reader.connect()
            async with a.transaction() as held:
                assert held is a
                for i in range(1, 4):
                    apdu, expected = echo(i)
                    assert await a.transmit(apdu) == expected
                with pytest.raises(SharingViolationError):
                    await reader.connect(mode="exclusive")
            assert await b.transmit(SELECT_MF) == b"\x90\x00"  # free again
            await b.reset()
            with pytest.raises(CardResetError):
                async with a.transaction():
                    pass  # a stale handle cannot start one

    door.run(scenario)


@doors
def test_verify_pin_on_the_pinpad(door: Door) -> None:
    from ccid.testing.apps import PIN, FileSystem
    from ccid.testing.reader import PinEntry

    padded = b"1234" + b"\xff" * 4
    vr = VirtualReader.from_database("08E6:3478", pin_entry=PinEntry("1234"),
                                     prompts=["Enter PIN"])
    vr.insert(VirtualCard(app=FileSystem(pins={0x80: PIN(padded)}), protocols=(0,)))
    verify = bytes.fromhex("00200080")

    async def scenario(door: Door) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # escapes the firmware ignores
            reader = await door.open_reader(backend=backend_of(vr), events=False)
        async with reader, reader.connect() as card:
            assert await card.transmit(bytes.fromhex("00A4020C020002")) == b"\x90\x00"
            assert await card.transmit(bytes.fromhex("00B0000006")) == b"\x69\x82"
            assert await card.verify_pin(verify) == b"\x90\x00"
            assert await card.transmit(bytes.fromhex("00B0000006")) == b"secret\x90\x00"
            vr.inject(F.PinCancelled())
            with pytest.raises(PinCancelledError):
                await card.verify_pin(verify)
            assert await card.verify_pin(verify, timeout=20) == b"\x90\x00"

    door.run(scenario)


# --- asyncio only: what needs tasks ----------------------------------------------------------


class Gate:
    """A card application that holds the APDU ``80 EE`` until ``release`` is set."""

    def __init__(self) -> None:
        self.inner = default_card_os()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, apdu: bytes) -> bytes:
        if apdu[:2] == b"\x80\xee":
            self.entered.set()
            assert self.release.wait(30), "never released"
            return b"\x90\x00"
        return self.inner.process(apdu)


HOLD = bytes.fromhex("80EE0000")


async def until(flag: threading.Event) -> None:
    """Wait in the loop (without blocking it) until a thread sets ``flag``."""
    await asyncio.get_running_loop().run_in_executor(None, flag.wait, 30)
    assert flag.is_set()


def test_two_readers_and_two_slots_run_at_once_in_one_loop() -> None:
    # The first reader's card answers only once the other three APDUs have completed:
    # run one after the other, this would deadlock (and fail by the scenario's ceiling).
    gate = Gate()
    first = preset_reader("gemalto-pc-twin", card=VirtualCard(app=CallableApp(gate)))
    second = preset_reader("two-slot-concurrent", card=None)
    second.insert(VirtualCard(), 0)
    second.insert(VirtualCard(protocols=(1,)), 1)

    async def scenario(door: Door) -> None:
        r1 = await ccid.aio.open_reader(backend=backend_of(first), events=False)
        r2 = await ccid.aio.open_reader(backend=backend_of(second), events=False)
        async with r1, r2, r1.connect() as held, r2.connect(0) as c0, r2.connect(1) as c1:
            waiting = asyncio.create_task(held.transmit(HOLD))
            await until(gate.entered)
            results = await asyncio.gather(*(
                card.transmit(echo(10 + i)[0]) for i in range(20) for card in (c0, c1)))
            assert results == [echo(10 + i)[1] for i in range(20) for _ in (c0, c1)]
            assert not waiting.done()
            gate.release.set()
            assert await waiting == b"\x90\x00"

    AIO.run(scenario)


def test_transaction_holds_other_handles_and_other_tasks() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(protocols=(1,)))
    order: list[str] = []

    async def scenario(door: Door) -> None:
        async with await ccid.aio.open_reader(backend=backend_of(vr), events=False) as reader:
            a = await reader.connect()
            b = await reader.connect()

            async def other(card: ccid.aio.Card, name: str) -> None:
                await card.transmit(SELECT_MF)
                order.append(name)

            async with a.transaction():
                tasks = [asyncio.create_task(other(b, "other handle")),
                         asyncio.create_task(other(a, "other task"))]
                for i in range(1, 6):
                    apdu, expected = echo(i)
                    assert await a.transmit(apdu) == expected
                    await asyncio.sleep(0.01)  # give the others every chance to cut in
                order.append("transaction")
            await asyncio.gather(*tasks)

    AIO.run(scenario)
    assert order[0] == "transaction"
    assert sorted(order[1:]) == ["other handle", "other task"]


ENDLESS = F.TimeExtension(commands=XFR, times=10_000, multiplier=200, interval=0.05)


@pytest.mark.skipif(not hasattr(ccid.Card, "cancel"),
                    reason="needs the thread-safe Card.cancel() of the session core")
def test_cancelled_transmit_sends_abort_and_the_reader_goes_on() -> None:
    vr = preset_reader("extended-apdu", card=VirtualCard())
    frames = record_commands(vr)

    async def scenario(door: Door) -> None:
        async with await ccid.aio.open_reader(backend=backend_of(vr), events=False) as reader, \
                reader.connect() as card:
            # The reader keeps asking for more time: only the 60 s ceiling or the
            # cancellation ends the command (ccid.aio.CANCEL_WAIT is much shorter).
            vr.inject(ENDLESS)
            task = asyncio.create_task(card.transmit(APDU, timeout=60))
            while MessageType.PC_to_RDR_XfrBlock not in frames:  # the command is out
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert MessageType.PC_to_RDR_Abort in frames
            vr.clear_faults()
            assert await card.transmit(APDU) == ANSWER
            # cancelled by a timeout of the caller's own, the same
            vr.inject(ENDLESS)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(card.transmit(APDU, timeout=60), 0.3)
            assert frames.count(MessageType.PC_to_RDR_Abort) == 2
            vr.clear_faults()
            assert await card.transmit(APDU) == ANSWER

    AIO.run(scenario)


def test_cancelled_before_it_started_never_runs() -> None:
    gate = Gate()
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(app=CallableApp(gate)))

    async def scenario(door: Door) -> None:
        async with await ccid.aio.open_reader(backend=backend_of(vr), events=False) as reader, \
                reader.connect() as card:
            first = asyncio.create_task(card.transmit(HOLD))
            await until(gate.entered)
            queued = asyncio.create_task(card.transmit(echo(3)[0]))
            await asyncio.sleep(0)  # queued behind the first on the handle's worker
            seen = vr.commands_seen
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued  # ends at once: the call was dropped from the worker's queue
            gate.release.set()
            assert await first == b"\x90\x00"
            assert vr.commands_seen == seen  # the cancelled APDU never went out
            assert await card.transmit(echo(4)[0]) == echo(4)[1]

    AIO.run(scenario)


def test_watch_reports_readers_and_cards_and_releases_them() -> None:
    first = preset_reader("gemalto-pc-twin", card=VirtualCard())
    backend = backend_of(first)

    async def scenario(door: Door) -> None:
        got: list[Any] = []
        async with contextlib_aclosing(ccid.aio.watch(backend=backend, interval=0.05,
                                                      quirks=False)) as events:
            async for event in events:
                got.append(event)
                if len(got) == 2:
                    first.remove()
                if isinstance(event, ev.CardRemoved):
                    break
        name = got[0].reader
        assert got == [ev.ReaderAdded(name), ev.CardInserted(name, 0), ev.CardRemoved(name, 0)]
        # the watch closed the reader it opened: it can be opened again
        async with await ccid.aio.open_reader(backend=backend, events=False) as reader:
            assert reader.name == name

    AIO.run(scenario)


def contextlib_aclosing(gen: Any) -> Any:
    import contextlib

    return contextlib.aclosing(gen)


def test_wait_for_event_times_out_with_none_and_the_loop_stays_free() -> None:
    vr = preset_reader("gemalto-pc-twin")

    async def scenario(door: Door) -> None:
        async with await ccid.aio.open_reader(backend=backend_of(vr), quirks=False) as reader:
            await drain(reader)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            assert await reader.wait_for_event(0.3) is None
            task.cancel()
            assert ticks > 0  # the loop ran other tasks while the reader waited

    AIO.run(scenario)
