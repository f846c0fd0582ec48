"""The virtual reader at the USB level, driven through plain pyusb with CCID bytes."""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest
import usb.core
import usb.util

from ccid.constants import MessageType as M
from ccid.descriptor import locate_ccid_descriptor, parse_ccid_descriptor
from ccid.framing import build_frame
from ccid.testing import faults as F
from ccid.testing.backend import VirtualBackend, VirtualDevice
from ccid.testing.card import VirtualCard
from ccid.testing.presets import preset, preset_reader
from ccid.testing.reader import VirtualReader

pytestmark = pytest.mark.timeout(60)


class Link:
    """Plain pyusb access to one CCID interface (test scaffolding, no library code)."""

    def __init__(self, backend: VirtualBackend, index: int = 0, interface: int = 0) -> None:
        self.dev: Any = list(usb.core.find(find_all=True, backend=backend))[index]
        self.dev.set_configuration()
        self.intf = self.dev.get_active_configuration()[(interface, 0)]
        usb.util.claim_interface(self.dev, self.intf.bInterfaceNumber)
        eps = list(self.intf)

        def pick(direction: int, kind: int) -> Any:
            for ep in eps:
                if (usb.util.endpoint_direction(ep.bEndpointAddress) == direction
                        and usb.util.endpoint_type(ep.bmAttributes) == kind):
                    return ep
            return None

        self.out = pick(usb.util.ENDPOINT_OUT, usb.util.ENDPOINT_TYPE_BULK)
        self.inp = pick(usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_BULK)
        self.intr = pick(usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_INTR)
        self.seq = 0

    def send(self, msg_type: int, slot: int = 0, p1: int = 0, p2: int = 0, p3: int = 0,
             payload: bytes = b"", timeout: int = 1000) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) & 0xFF
        self.out.write(build_frame(msg_type, slot, seq, p1, p2, p3, payload), timeout)
        return seq

    def recv(self, timeout: int = 1000, size: int = 70000) -> bytes:
        return bytes(self.inp.read(size, timeout))

    def cmd(self, msg_type: int, slot: int = 0, p1: int = 0, p2: int = 0, p3: int = 0,
            payload: bytes = b"") -> bytes:
        self.send(msg_type, slot, p1, p2, p3, payload)
        return self.recv()


def _errno(exc: pytest.ExceptionInfo[usb.core.USBError]) -> int | None:
    return exc.value.errno  # type: ignore[no-any-return]


# --- enumeration and descriptors ------------------------------------------------------------


def test_enumeration_descriptors_and_strings() -> None:
    vb = preset("gemalto-pc-twin")
    reader = vb.readers[0]
    devs = list(usb.core.find(find_all=True, backend=vb))
    assert len(devs) == 1
    dev = devs[0]
    assert (dev.idVendor, dev.idProduct, dev.bcdDevice) == (0x08E6, 0x3437, 0x0100)
    assert dev.manufacturer == "Gemplus"
    assert dev.product == "USB SmartCard Reader"
    assert dev.langids == (0x0409,)
    assert dev.iSerialNumber == 0
    assert dev.bus == 1 and dev.address >= 2 and dev.port_numbers == (1,)
    assert vb.devices[0].usb_path == "1-1"
    cfg = dev.get_active_configuration()
    intf = cfg[(0, 0)]
    assert intf.bInterfaceClass == 0x0B and intf.bNumEndpoints == 3
    raw = locate_ccid_descriptor(bytes(intf.extra_descriptors))
    assert parse_ccid_descriptor(raw) == reader.descriptor
    kinds = [(usb.util.endpoint_direction(e.bEndpointAddress),
              usb.util.endpoint_type(e.bmAttributes)) for e in intf]
    assert kinds == [(usb.util.ENDPOINT_OUT, usb.util.ENDPOINT_TYPE_BULK),
                     (usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_BULK),
                     (usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_INTR)]
    # the wire form of the configuration agrees with the parsed objects
    whole = bytes(dev.ctrl_transfer(0x80, 6, 0x0200, 0, 1024))
    assert len(whole) == cfg.wTotalLength
    assert raw in whole
    device_desc = bytes(dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18))
    assert device_desc[8:12] == bytes((0xE6, 0x08, 0x37, 0x34))
    with pytest.raises(usb.core.USBError) as exc:
        dev.ctrl_transfer(0x80, 6, 0x0309, 0x0409, 255)  # no string 9
    assert _errno(exc) == errno.EPIPE


def test_serial_and_interface_strings() -> None:
    reader = VirtualReader(preset_reader("short-apdu", card=None).descriptor,
                           serial="SN-42", interface_name="CCID slot")
    vb = VirtualBackend(reader)
    dev = usb.core.find(backend=vb)
    assert dev.serial_number == "SN-42"
    intf = dev.get_active_configuration()[(0, 0)]
    assert usb.util.get_string(dev, intf.iInterface) == "CCID slot"


def test_descriptor_after_last_endpoint_like_oz776() -> None:
    base = preset_reader("gemalto-pc-twin", card=None).descriptor
    vb = VirtualBackend(VirtualReader(base, descriptor_after_endpoints=True))
    intf = usb.core.find(backend=vb).get_active_configuration()[(0, 0)]
    assert bytes(intf.extra_descriptors) == b""
    last = list(intf)[-1]
    raw = locate_ccid_descriptor(b"", endpoint_extras=[bytes(last.extra_descriptors)])
    assert parse_ccid_descriptor(raw) == base


def test_class_ff_reader_and_no_interrupt() -> None:
    base = preset_reader("no-interrupt", card=None)
    assert not base.has_interrupt
    reader = VirtualReader(base.descriptor, interface_class=0xFF, has_interrupt=False)
    vb = VirtualBackend(reader)
    intf = usb.core.find(backend=vb).get_active_configuration()[(0, 0)]
    assert intf.bInterfaceClass == 0xFF and intf.bNumEndpoints == 2
    link = Link(vb)
    assert link.intr is None
    reply = link.cmd(M.PC_to_RDR_GetSlotStatus)
    assert reply[0] == 0x81 and reply[7] == 0x02  # no card


# --- timeouts, stalls, ENODEV, EBUSY ---------------------------------------------------------


def test_timeouts() -> None:
    link = Link(preset("gemalto-pc-twin"))
    with pytest.raises(usb.core.USBTimeoutError):
        link.recv(timeout=30)
    link.intr.read(8, 100)  # the announcement made at plug time
    with pytest.raises(usb.core.USBTimeoutError):
        link.intr.read(8, 30)


def test_stall_in_and_clear_halt() -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(F.Stall(endpoint="in"))
    link = Link(vb)
    seq = link.send(M.PC_to_RDR_GetSlotStatus)
    with pytest.raises(usb.core.USBError) as exc:
        link.recv()
    assert _errno(exc) == errno.EPIPE
    link.dev.clear_halt(link.inp)
    reply = link.recv()
    assert reply[0] == 0x81 and reply[6] == seq


def test_stall_out_loses_the_command() -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(F.Stall(endpoint="out"))
    link = Link(vb)
    with pytest.raises(usb.core.USBError) as exc:
        link.send(M.PC_to_RDR_GetSlotStatus)
    assert _errno(exc) == errno.EPIPE
    with pytest.raises(usb.core.USBError):
        link.send(M.PC_to_RDR_GetSlotStatus)  # still halted
    link.dev.clear_halt(link.out)
    seq = link.send(M.PC_to_RDR_GetSlotStatus)
    assert link.recv()[6] == seq


def test_unplug_wakes_blocked_reader_and_every_call_fails() -> None:
    vb = preset("gemalto-pc-twin")
    link = Link(vb)
    link.intr.read(8, 100)
    caught: list[BaseException] = []
    started = threading.Event()

    def wait_forever() -> None:
        started.set()
        try:
            link.intr.read(8, 0)  # timeout 0: wait for ever, as libusb does
        except BaseException as exc:  # recorded for the assertion
            caught.append(exc)

    thread = threading.Thread(target=wait_forever)
    thread.start()
    started.wait()
    vb.unplug(vb.devices[0])
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(caught[0], usb.core.USBError) and caught[0].errno == errno.ENODEV
    for call in (lambda: link.send(M.PC_to_RDR_GetSlotStatus), lambda: link.recv(),
                 lambda: link.dev.ctrl_transfer(0xA1, 3, 0, 0, 64)):
        with pytest.raises(usb.core.USBError) as exc:
            call()
        assert _errno(exc) == errno.ENODEV
    assert list(usb.core.find(find_all=True, backend=vb)) == []


def test_replug_gets_new_address_and_old_handle_stays_dead() -> None:
    vb = preset("gemalto-pc-twin")
    device = vb.devices[0]
    link = Link(vb)
    first = link.dev.address
    vb.unplug(device)
    vb.plug(device)
    again = Link(vb)
    assert again.dev.address != first
    assert again.cmd(M.PC_to_RDR_GetSlotStatus)[0] == 0x81
    with pytest.raises(usb.core.USBError) as exc:
        link.send(M.PC_to_RDR_GetSlotStatus)
    assert _errno(exc) == errno.ENODEV


@pytest.mark.parametrize("stage", ["write", "reply"])
def test_unplug_fault(stage: str) -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(F.Unplug(stage=stage, commands=frozenset({M.PC_to_RDR_IccPowerOn})))
    link = Link(vb)
    assert link.cmd(M.PC_to_RDR_GetSlotStatus)[0] == 0x81
    if stage == "write":
        with pytest.raises(usb.core.USBError) as exc:
            link.send(M.PC_to_RDR_IccPowerOn, p1=1)
    else:
        link.send(M.PC_to_RDR_IccPowerOn, p1=1)
        with pytest.raises(usb.core.USBError) as exc:
            link.recv()
    assert _errno(exc) == errno.ENODEV
    assert vb.devices == []


def test_claimed_by_another_process() -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(F.ClaimedElsewhere())
    dev = usb.core.find(backend=vb)
    with pytest.raises(usb.core.USBError) as exc:
        usb.util.claim_interface(dev, 0)
    assert _errno(exc) == errno.EBUSY
    vb.readers[0].clear_faults()
    usb.util.claim_interface(dev, 0)


def test_two_owners_of_one_device() -> None:
    vb = preset("gemalto-pc-twin")
    other = VirtualBackend()
    other.plug(vb.devices[0])  # the same physical device seen by a second process
    mine = Link(vb)
    theirs = usb.core.find(backend=other)
    with pytest.raises(usb.core.USBError) as exc:
        usb.util.claim_interface(theirs, 0)
    assert _errno(exc) == errno.EBUSY
    usb.util.release_interface(mine.dev, 0)
    usb.util.dispose_resources(mine.dev)
    usb.util.claim_interface(theirs, 0)


def test_kernel_driver_must_be_detached() -> None:
    reader = preset_reader("gemalto-pc-twin", card=None)
    vb = VirtualBackend(VirtualDevice(reader, kernel_driver=True))
    dev = usb.core.find(backend=vb)
    assert dev.is_kernel_driver_active(0)
    with pytest.raises(usb.core.USBError) as exc:
        usb.util.claim_interface(dev, 0)
    assert _errno(exc) == errno.EBUSY
    dev.detach_kernel_driver(0)
    usb.util.claim_interface(dev, 0)
    assert not dev.is_kernel_driver_active(0)


# --- packets ----------------------------------------------------------------------------------


def _echo_reader() -> VirtualBackend:
    return preset("gemalto-pc-twin", escape_handler=lambda data: data)


def test_zero_length_packet_after_full_packets() -> None:
    link = Link(_echo_reader())
    link.send(M.PC_to_RDR_Escape, payload=bytes(range(54)))  # 64-byte reply
    reply = link.recv(size=64)
    assert len(reply) == 64 and reply[10:] == bytes(range(54))
    assert link.recv(size=64) == b""  # the ZLP that ended the transfer
    link.send(M.PC_to_RDR_Escape, payload=bytes(118))  # 128 bytes: 2 full packets + ZLP
    assert len(link.recv(size=4096)) == 128
    with pytest.raises(usb.core.USBTimeoutError):
        link.recv(timeout=20)  # the ZLP was consumed by the larger read


def test_short_buffer_overflows_as_with_libusb() -> None:
    link = Link(_echo_reader())
    link.send(M.PC_to_RDR_Escape, payload=bytes(range(100)))  # 110 bytes: 64 + 46
    with pytest.raises(usb.core.USBError) as info:
        link.recv(size=30)  # the first packet holds 64 bytes
    assert _errno(info) == errno.EOVERFLOW
    assert info.value.backend_error_code == -8  # LIBUSB_ERROR_OVERFLOW
    assert "Overflow" in str(info.value)
    # The transfer's data is gone: only the packets after it remain.
    assert link.recv(size=4096) == bytes(range(54, 100))
    # Room for one whole packet but not the second: the second overflows.
    link.send(M.PC_to_RDR_Escape, payload=bytes(range(100)))
    with pytest.raises(usb.core.USBError) as info:
        link.recv(size=100)
    assert _errno(info) == errno.EOVERFLOW
    # Whole packets: a read of exactly one packet takes it, the short one ends the next.
    seq = link.send(M.PC_to_RDR_Escape, payload=bytes(range(100)))
    first = link.recv(size=64)
    rest = link.recv(size=64)
    # bStatus 0x01: a card is present, not powered
    assert len(first) == 64 and first + rest == build_frame(0x83, 0, seq, 0x01, 0, 0,
                                                            bytes(range(100)))


def test_split_command_writes_are_reassembled() -> None:
    link = Link(preset("gemalto-pc-twin"))
    frame = build_frame(M.PC_to_RDR_GetSlotStatus, 0, 7)
    link.out.write(frame[:4])
    link.out.write(frame[4:])
    assert link.recv()[6] == 7


def test_blocking_read_wakes_when_card_inserted() -> None:
    vb = preset("gemalto-pc-twin", card=None)
    link = Link(vb)
    assert bytes(link.intr.read(8, 100)) == b"\x50\x02"
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(bytes(link.intr.read(8, 10000))))
    thread.start()
    vb.readers[0].insert(VirtualCard())
    thread.join(10)
    assert got == [b"\x50\x03"]


# --- control requests -------------------------------------------------------------------------


def test_data_rates_and_clocks_from_lists() -> None:
    vb = preset("extended-apdu")
    dev = usb.core.find(backend=vb)
    reader = vb.readers[0]
    rates = bytes(dev.ctrl_transfer(0xA1, 0x03, 0, 0, 1024))
    assert [int.from_bytes(rates[i:i + 4], "little") for i in range(0, len(rates), 4)] == list(
        reader.data_rates)
    clocks = bytes(dev.ctrl_transfer(0xA1, 0x02, 0, 0, 1024))
    assert len(clocks) == 12 and int.from_bytes(clocks[:4], "little") == 4000


def test_empty_lists_stall() -> None:
    dev = usb.core.find(backend=preset("two-slot"))
    for request in (0x02, 0x03):
        with pytest.raises(usb.core.USBError) as exc:
            dev.ctrl_transfer(0xA1, request, 0, 0, 256)
        assert _errno(exc) == errno.EPIPE


def test_request_that_times_out() -> None:
    reader = preset_reader("gemalto-pc-twin", card=None, data_rates_answer="timeout")
    dev = usb.core.find(backend=VirtualBackend(reader))
    with pytest.raises(usb.core.USBTimeoutError):
        dev.ctrl_transfer(0xA1, 0x03, 0, 0, 256, timeout=20)


def test_abort_class_request_then_bulk_abort() -> None:
    vb = preset("gemalto-pc-twin")
    vb.readers[0].inject(F.NoAnswer(commands=frozenset({M.PC_to_RDR_IccPowerOn})))
    link = Link(vb)
    seq = link.send(M.PC_to_RDR_IccPowerOn, p1=1)
    with pytest.raises(usb.core.USBTimeoutError):
        link.recv(timeout=20)
    # the slot is busy with the unanswered command
    assert link.cmd(M.PC_to_RDR_GetSlotStatus)[8] == 0xE0
    abort_seq = link.seq
    link.dev.ctrl_transfer(0x21, 0x01, abort_seq << 8 | 0, 0, None)
    aborted = link.recv()
    assert aborted[6] == seq and aborted[7] >> 6 == 1 and aborted[8] == 0xFF
    link.send(M.PC_to_RDR_Abort)
    reply = link.recv()
    assert reply[0] == 0x81 and reply[6] == abort_seq and reply[7] >> 6 == 0


def test_bulk_abort_waits_for_the_class_request() -> None:
    link = Link(preset("gemalto-pc-twin"))
    seq = link.send(M.PC_to_RDR_Abort)
    with pytest.raises(usb.core.USBTimeoutError):
        link.recv(timeout=20)
    link.dev.ctrl_transfer(0x21, 0x01, seq << 8, 0, None)
    assert link.recv()[6] == seq


def test_device_reset_clears_a_wedged_reader() -> None:
    vb = preset("ct700")
    link = Link(vb)
    link.send(M.PC_to_RDR_Escape, payload=b"\x6a")
    with pytest.raises(usb.core.USBTimeoutError):
        link.send(M.PC_to_RDR_GetSlotStatus, timeout=20)
    link.dev.reset()
    assert link.cmd(M.PC_to_RDR_GetSlotStatus)[0] == 0x81
