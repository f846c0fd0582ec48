"""The virtual reader's public responder hook and its bulk/interrupt wake-up separation."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import usb.core
import usb.util

from ccid.constants import MessageType as M
from ccid.framing import build_frame
from ccid.testing.backend import VirtualBackend
from ccid.testing.card import VirtualCard
from ccid.testing.presets import preset_reader

pytestmark = pytest.mark.timeout(60)


def _link(backend: VirtualBackend) -> tuple[Any, Any, Any, Any]:
    dev: Any = usb.core.find(backend=backend)
    dev.set_configuration()
    intf = dev.get_active_configuration()[(0, 0)]
    usb.util.claim_interface(dev, intf.bInterfaceNumber)
    eps = {(usb.util.endpoint_direction(e.bEndpointAddress),
            usb.util.endpoint_type(e.bmAttributes)): e for e in intf}
    return (dev, eps[(usb.util.ENDPOINT_OUT, usb.util.ENDPOINT_TYPE_BULK)],
            eps[(usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_BULK)],
            eps.get((usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_INTR)))


def test_responder_answers_before_the_model_and_none_falls_through() -> None:
    seen: list[bytes] = []
    scripted = build_frame(0x81, 0, 0, 0x42, 0x00, 0x00)  # any bytes: the hook decides

    def responder(frame: bytes) -> list[bytes] | None:
        seen.append(frame)
        if frame[0] == M.PC_to_RDR_Escape:
            wtx = build_frame(0x83, 0, frame[6], 0x80, 0x02, 0x00)
            return [wtx, build_frame(0x83, 0, frame[6], 0, 0, 0, b"scripted")]
        if frame[0] == M.PC_to_RDR_Mechanical:
            return [scripted]
        return None

    vr = preset_reader("gemalto-pc-twin", card=VirtualCard())
    vr.responder = responder
    _, out, inp, _ = _link(VirtualBackend(vr))
    before = vr.commands_seen
    out.write(build_frame(M.PC_to_RDR_Escape, 0, 5, 0, 0, 0, b"\x01"))
    first, second = bytes(inp.read(4096, 1000)), bytes(inp.read(4096, 1000))
    assert first[7] >> 6 == 2 and first[6] == 5  # the time extension comes first
    assert second[10:] == b"scripted" and second[6] == 5
    out.write(build_frame(M.PC_to_RDR_Mechanical, 0, 6, 1))
    assert bytes(inp.read(4096, 1000)) == scripted  # verbatim, even with a "wrong" bSeq
    out.write(build_frame(M.PC_to_RDR_GetSlotStatus, 0, 7))
    status = bytes(inp.read(4096, 1000))
    assert status[0] == 0x81 and status[6] == 7 and status[7] & 0x03 == 1  # the model
    assert [f[0] for f in seen] == [M.PC_to_RDR_Escape, M.PC_to_RDR_Mechanical,
                                    M.PC_to_RDR_GetSlotStatus]
    assert vr.commands_seen == before + 3


def test_responder_empty_list_leaves_the_command_unanswered() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard(), responder=lambda f: [])
    _, out, inp, _ = _link(VirtualBackend(vr))
    out.write(build_frame(M.PC_to_RDR_GetSlotStatus, 0, 1))
    with pytest.raises(usb.core.USBTimeoutError):
        inp.read(4096, 50)


def test_bulk_traffic_does_not_wake_a_blocked_interrupt_read() -> None:
    vr = preset_reader("gemalto-pc-twin", card=VirtualCard())
    _, out, inp, intr = _link(VirtualBackend(vr))
    assert intr is not None
    intr.read(8, 100)  # the NotifySlotChange of plug-in
    wakeups = 0
    waiter: list[threading.Thread] = []

    def counting(real: Any) -> Any:
        def wait(timeout: float | None = None) -> bool:
            nonlocal wakeups
            if threading.current_thread() in waiter:
                wakeups += 1
            return bool(real(timeout))
        return wait

    # Whichever condition the backend makes the interrupt read wait on, count its waits.
    vr.cv.wait = counting(vr.cv.wait)  # type: ignore[method-assign]
    vr.intr_cv.wait = counting(vr.intr_cv.wait)  # type: ignore[method-assign]
    got: list[bytes] = []
    blocked = threading.Thread(target=lambda: got.append(bytes(intr.read(8, 5000))))
    waiter.append(blocked)
    blocked.start()
    for _ in range(500):  # until the read is blocked in its first wait
        if wakeups:
            break
        threading.Event().wait(0.01)
    assert wakeups == 1
    for seq in range(20):
        out.write(build_frame(M.PC_to_RDR_GetSlotStatus, 0, seq))
        assert bytes(inp.read(4096, 1000))[6] == seq
        threading.Event().wait(0.005)  # give a wrongly woken reader time to run
    busy_wakeups = wakeups
    vr.remove()  # interrupt data: this one must wake the reader
    blocked.join(5)
    assert not blocked.is_alive()
    assert got and got[0][0] == M.RDR_to_PC_NotifySlotChange
    assert busy_wakeups == 1  # the first wait only: 20 bulk round trips woke nothing
