"""A pyusb backend whose devices are virtual CCID readers.

``usb.core.find(backend=VirtualBackend(...))`` sees each ``VirtualDevice`` with its device,
configuration, interface and endpoint descriptors, its CCID class descriptor in the
interface's extra bytes (or after the last endpoint, as O2Micro OZ776 readers put it) and
its string descriptors. Transfers behave as libusb's do through pyusb:

* timeouts raise ``usb.core.USBTimeoutError`` (timeout 0 waits for ever, as in libusb);
* a halted endpoint raises ``USBError`` with errno EPIPE until ``clear_halt``;
* every call on a handle of an unplugged device raises ENODEV (blocked reads wake up);
* claiming an interface held by another handle (another backend = another process) or by
  "pcscd" (the ``ClaimedElsewhere`` fault) raises EBUSY;
* bulk-IN data comes in wMaxPacketSize packets; a transfer ends at a short packet, and a
  reply whose length is a multiple of wMaxPacketSize ends with a zero-length packet: a
  read whose buffer is exactly the reply's size leaves that ZLP for the next read, which
  returns 0 bytes, as on real USB;
* a read takes whole packets: a packet with more data than the buffer has room left for
  fails the read with ``USBError`` errno EOVERFLOW ("Overflow", libusb code
  LIBUSB_ERROR_OVERFLOW -8), and the data of that transfer is lost, as with libusb; read
  a multiple of wMaxPacketSize to never see it.

Blocking reads wait on the reader's conditions, no polling: bulk transfers on ``cv``,
interrupt reads on ``intr_cv`` (same lock), which only interrupt messages, reset and
unplug notify, so bulk traffic never wakes a blocked interrupt read.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import usb.backend
import usb.core

from ccid.errors import UsageError
from ccid.testing import faults as F
from ccid.testing.model import StallNow, UnplugAfter, UnplugNow
from ccid.testing.reader import VirtualReader
from ccid.testing.usbdesc import (
    DESC_CONFIG,
    DESC_DEVICE,
    DESC_STRING,
    EP_BULK,
    EP_INTERRUPT,
    LANGID_EN_US,
    ConfigDesc,
    DeviceDesc,
    EndpointDesc,
    InterfaceDesc,
    config_bytes,
    device_bytes,
    langid_bytes,
    string_bytes,
)

__all__ = ["VirtualBackend", "VirtualDevice"]

# libusb error codes, with the texts libusb gives them (pyusb shows these).
_ERRORS = {
    errno.EPIPE: (-9, "Pipe error"),
    errno.ENODEV: (-4, "No such device (it may have been disconnected)"),
    errno.EBUSY: (-6, "Resource busy"),
    errno.ENOENT: (-5, "Entity not found"),
    errno.EINVAL: (-2, "Invalid parameter"),
    errno.EIO: (-1, "Input/output error"),
    errno.EOVERFLOW: (-8, "Overflow"),
}


def _usb_error(err: int) -> usb.core.USBError:
    code, text = _ERRORS[err]
    return usb.core.USBError(text, code, err)


def _timeout_error() -> usb.core.USBTimeoutError:
    return usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)


class VirtualDevice:
    """One USB device holding one or more virtual CCID readers (one per interface)."""

    def __init__(
        self,
        readers: VirtualReader | Sequence[VirtualReader],
        *,
        vid: int | None = None,
        pid: int | None = None,
        bcd_device: int | None = None,
        manufacturer: str | None = None,
        product: str | None = None,
        serial: str | None = None,
        bus: int = 1,
        port_numbers: tuple[int, ...] | None = None,
        kernel_driver: bool = False,
    ) -> None:
        self.readers: list[VirtualReader] = (
            [readers] if isinstance(readers, VirtualReader) else list(readers))
        if not self.readers:
            raise UsageError("a virtual device needs at least one reader")
        first = self.readers[0]
        self.vid = first.vid if vid is None else vid
        self.pid = first.pid if pid is None else pid
        self.bcd_device = first.bcd_device if bcd_device is None else bcd_device
        self.manufacturer = first.manufacturer if manufacturer is None else manufacturer
        self.product = first.product if product is None else product
        self.serial = first.serial if serial is None else serial
        self.bus = bus
        self.port_numbers = port_numbers
        self.address: int | None = None
        self.configuration = 1
        self.plugged = False
        self.generation = 0
        self.backends: list[VirtualBackend] = []
        self.claims: dict[int, object] = {}
        self.kernel_driver = {r.interface_number for r in self.readers} if kernel_driver \
            else set()
        self._lock = threading.RLock()
        self.strings: dict[int, str] = {}
        self._build()

    @classmethod
    def from_descriptor_dump(cls, entry: Mapping[str, Any], **device_kwargs: Any
                             ) -> VirtualDevice:
        """Every interface of a corpus dump, as one device."""
        from ccid.testing.iccd import IccdReader, is_iccd_dump

        dumps = entry.get("interfaces") or [entry]
        readers = [(IccdReader if is_iccd_dump(d) else VirtualReader).from_descriptor_dump(
            entry, i) for i, d in enumerate(dumps)]
        return cls(readers, **device_kwargs)

    # --- descriptors --------------------------------------------------------------------

    def _string(self, text: str | None) -> int:
        if text is None:
            return 0
        index = len(self.strings) + 1
        self.strings[index] = text
        return index

    def _build(self) -> None:
        self.strings.clear()
        i_man = self._string(self.manufacturer)
        i_prod = self._string(self.product)
        i_ser = self._string(self.serial)
        fast = any(r.bulk_packet_size > 64 for r in self.readers)
        self.desc = DeviceDesc(
            idVendor=self.vid, idProduct=self.pid, bcdDevice=self.bcd_device,
            iManufacturer=i_man, iProduct=i_prod, iSerialNumber=i_ser,
            speed=3 if fast else 2,
        )
        used: set[int] = set()
        interfaces: list[InterfaceDesc] = []
        self.endpoints: dict[int, tuple[VirtualReader, str]] = {}
        self.by_interface: dict[int, VirtualReader] = {}
        for k, reader in enumerate(self.readers):
            reader.device = self
            number = reader.interface_number
            while number in used:  # a few dumps repeat interface 0
                number += 1
            used.add(number)
            reader.interface_number = number
            self.by_interface[number] = reader
            eps: list[EndpointDesc] = []
            base = 3 * k
            if reader.has_bulk:
                out_ep, in_ep = base + 1, 0x80 | (base + 2)
                eps.append(EndpointDesc(out_ep, EP_BULK, reader.bulk_packet_size))
                eps.append(EndpointDesc(in_ep, EP_BULK, reader.bulk_packet_size))
                self.endpoints[out_ep] = (reader, "out")
                self.endpoints[in_ep] = (reader, "in")
            if reader.has_interrupt:
                int_ep = 0x80 | (base + 3)
                eps.append(EndpointDesc(int_ep, EP_INTERRUPT, reader.interrupt_packet_size,
                                        bInterval=0x18 if not fast else 0x08))
                self.endpoints[int_ep] = (reader, "intr")
            class_desc = list(reader.descriptor.to_bytes())
            itf = InterfaceDesc(
                bInterfaceNumber=number, bInterfaceClass=reader.interface_class,
                bInterfaceSubClass=reader.interface_subclass,
                bInterfaceProtocol=reader.interface_protocol,
                iInterface=self._string(reader.interface_name), endpoints=eps)
            if reader.descriptor_after_endpoints and eps:
                eps[-1].extra_descriptors = class_desc
            else:
                itf.extra_descriptors = class_desc
            interfaces.append(itf)
        self.config = ConfigDesc(interfaces)

    @property
    def usb_path(self) -> str:
        """``bus-port.port`` as Linux names the device (once plugged)."""
        ports = ".".join(str(p) for p in (self.port_numbers or ()))
        return f"{self.bus}-{ports}"

    def device_descriptor(self) -> DeviceDesc:
        d = self.desc
        d.bus, d.address = self.bus, self.address
        d.port_numbers = self.port_numbers
        d.port_number = self.port_numbers[-1] if self.port_numbers else None
        return d

    # --- plug state ---------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the device out of every backend it is plugged into."""
        with self._lock:
            if not self.plugged:
                return
            self.plugged = False
            self.claims.clear()
            backends, self.backends = self.backends, []
        for backend in backends:
            backend._forget(self)
        for reader in self.readers:
            with reader.cv:
                reader.cv.notify_all()
                reader.intr_cv.notify_all()

    def reset(self) -> None:
        """USB port reset: every reader's firmware restarts."""
        for reader in self.readers:
            reader.reset()


class _Handle:
    __slots__ = ("backend", "claimed", "device", "generation", "pid")

    def __init__(self, device: VirtualDevice, backend: VirtualBackend) -> None:
        self.device = device
        self.backend = backend
        self.generation = device.generation
        self.claimed: set[int] = set()
        #: The process that opened the handle: on Linux a fork child shares it (and its
        #: interface claims), so what the child does to it is what the parent loses.
        self.pid = os.getpid()


#: Backends alive in this process, given a pipe before fork() (see ``child_calls``).
_BACKENDS: weakref.WeakSet[VirtualBackend] = weakref.WeakSet()


def _before_fork() -> None:
    for backend in list(_BACKENDS):
        backend._open_fork_pipe()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)


class VirtualBackend(usb.backend.IBackend):  # type: ignore[misc]
    """A pyusb backend holding virtual devices; ``plug``/``unplug`` at any time.

    ``libusb_transfers``: bulk-IN transfers behave as libusb's synchronous ones do through
    pyusb: a transfer ends only at a short (or zero-length) packet or a full buffer, and one
    whose timeout runs out after some packets came loses them (pyusb raises the timeout and
    drops what was transferred). By default a transfer hands back whatever packets are
    there, which is kinder and faster for tests; ``keeps_partial_reads`` tells the transport
    which of the two it is talking to.
    """

    def __init__(self, *devices: VirtualDevice | VirtualReader, bus: int = 1,
                 libusb_transfers: bool = False) -> None:
        self.keeps_partial_reads = not libusb_transfers
        self._lock = threading.RLock()
        self._devices: list[VirtualDevice] = []
        self._next_address: dict[int, int] = {}
        self._next_port: dict[int, int] = {}
        self.bus = bus
        self._fork_pipe: tuple[int, int] | None = None
        self._read_wakes = 0
        self._child_calls: list[str] = []
        for dev in devices:
            self.plug(dev)
        _BACKENDS.add(self)

    # --- what fork children did to the parent's handles ----------------------------------

    def _open_fork_pipe(self) -> None:
        if self._fork_pipe is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            self._fork_pipe = (r, w)

    def _inherited(self, handle: _Handle, call: str, detail: int = 0) -> bool:
        """Record ``call`` when a fork child makes it on a handle its parent opened (the
        parent reads it with :meth:`child_calls`); True when it was such a call."""
        if handle.pid == os.getpid():
            return False
        pipe = self._fork_pipe
        line = f"{os.getpid()} {call} {detail}\n".encode()
        if pipe is not None:
            with contextlib.suppress(OSError):
                os.write(pipe[1], line)
        return True

    def child_calls(self) -> list[str]:
        """Releases and closes fork children made on handles this process opened, as
        ``"<pid> release_interface <n>"`` / ``"<pid> close_device 0"`` lines. On real
        hardware (Linux usbfs) each one drops this process's claim on the reader."""
        pipe = self._fork_pipe
        if pipe is not None:
            while True:
                try:
                    chunk = os.read(pipe[0], 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                self._child_calls += chunk.decode().splitlines()
        return list(self._child_calls)

    def __del__(self) -> None:
        pipe, self._fork_pipe = getattr(self, "_fork_pipe", None), None
        if pipe is not None:
            for fd in pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _allocate(self, device: VirtualDevice) -> None:
        """Address (and port) on the first bus with room: a bus holds 127 devices."""
        bus = self.bus
        while True:
            used = {d.address for d in self._devices if d.bus == bus}
            if len(used) < 126:
                break
            bus += 1
        start = self._next_address.get(bus, 2)
        address = start
        while address in used:  # 1 is the root hub; addresses wrap as Linux does
            address = address % 127 + 1 if address < 127 else 2
        self._next_address[bus] = address % 127 + 1 if address < 127 else 2
        device.bus, device.address = bus, address
        if device.port_numbers is None:
            port = self._next_port.get(bus, 1)
            self._next_port[bus] = port + 1
            device.port_numbers = (port,) if port <= 255 else (port // 255, port % 255 + 1)

    # --- hot-plug -----------------------------------------------------------------------

    def plug(self, device: VirtualDevice | VirtualReader, *, announce: bool = True
             ) -> VirtualDevice:
        """Plug a device (a bare reader gets a device of its own); returns the device."""
        if isinstance(device, VirtualReader):
            device = device.device if device.device is not None else VirtualDevice(device)
        with self._lock, device._lock:
            if self in device.backends:
                return device
            if not device.plugged:
                device.plugged = True
                device.generation += 1
                self._allocate(device)
                for reader in device.readers:
                    reader.reset()  # plugging powers the firmware up afresh
                if announce:
                    for reader in device.readers:
                        reader.announce_all()
            device.backends.append(self)
            self._devices.append(device)
        return device

    def unplug(self, device: VirtualDevice | VirtualReader) -> None:
        """Pull a device out (of every backend: it is a physical unplug)."""
        if isinstance(device, VirtualReader):
            if device.device is None:
                return
            device = device.device
        device.unplug()

    def _forget(self, device: VirtualDevice) -> None:
        with self._lock:
            if device in self._devices:
                self._devices.remove(device)

    @property
    def devices(self) -> list[VirtualDevice]:
        with self._lock:
            return list(self._devices)

    @property
    def readers(self) -> list[VirtualReader]:
        return [r for d in self.devices for r in d.readers]

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _alive(handle: _Handle) -> VirtualDevice:
        dev = handle.device
        if not dev.plugged or handle.generation != dev.generation \
                or handle.backend not in dev.backends:
            raise _usb_error(errno.ENODEV)
        return dev

    def _endpoint(self, handle: _Handle, ep: int, kind: str) -> VirtualReader:
        dev = self._alive(handle)
        entry = dev.endpoints.get(ep)
        if entry is None or entry[1] != kind:
            raise _usb_error(errno.ENOENT)
        reader = entry[0]
        owner = dev.claims.get(reader.interface_number)
        if owner is not None and owner is not handle:
            raise _usb_error(errno.EBUSY)
        return reader

    @staticmethod
    def _deadline(timeout: int) -> float | None:
        return None if not timeout else time.monotonic() + timeout / 1000.0

    # --- enumeration --------------------------------------------------------------------

    def enumerate_devices(self) -> Iterator[VirtualDevice]:
        return iter(self.devices)

    def get_parent(self, dev: VirtualDevice) -> None:
        return None

    def get_device_descriptor(self, dev: VirtualDevice) -> DeviceDesc:
        return dev.device_descriptor()

    def get_configuration_descriptor(self, dev: VirtualDevice, config: int) -> ConfigDesc:
        if config != 0:
            raise IndexError(f"Invalid configuration index {config}")
        return dev.config

    def get_interface_descriptor(self, dev: VirtualDevice, intf: int, alt: int, config: int
                                 ) -> InterfaceDesc:
        cfg = self.get_configuration_descriptor(dev, config)
        if not 0 <= intf < len(cfg.interfaces):
            raise IndexError(f"Invalid interface index {intf}")
        if alt != 0:
            raise IndexError(f"Invalid alternate setting index {alt}")
        return cfg.interfaces[intf]

    def get_endpoint_descriptor(self, dev: VirtualDevice, ep: int, intf: int, alt: int,
                                config: int) -> EndpointDesc:
        itf = self.get_interface_descriptor(dev, intf, alt, config)
        if not 0 <= ep < len(itf.endpoints):
            raise IndexError(f"Invalid endpoint index {ep}")
        return itf.endpoints[ep]

    # --- handles and interfaces -----------------------------------------------------------

    def open_device(self, dev: VirtualDevice) -> _Handle:
        with self._lock:
            if dev not in self._devices or not dev.plugged:
                raise _usb_error(errno.ENODEV)
            return _Handle(dev, self)

    def close_device(self, dev_handle: _Handle) -> None:
        self._inherited(dev_handle, "close_device")
        dev = dev_handle.device
        with dev._lock:
            for number in dev_handle.claimed:
                if dev.claims.get(number) is dev_handle:
                    del dev.claims[number]
            dev_handle.claimed.clear()

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        dev = self._alive(dev_handle)
        if config_value not in (0, dev.config.bConfigurationValue):
            raise _usb_error(errno.ENOENT)
        dev.configuration = config_value

    def get_configuration(self, dev_handle: _Handle) -> int:
        return self._alive(dev_handle).configuration

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int
                                 ) -> None:
        dev = self._alive(dev_handle)
        if intf not in dev.by_interface or altsetting != 0:
            raise _usb_error(errno.ENOENT)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev = self._alive(dev_handle)
        with dev._lock:
            reader = dev.by_interface.get(intf)
            if reader is None:
                raise _usb_error(errno.ENOENT)
            if intf in dev.kernel_driver or reader.has_fault(F.ClaimedElsewhere):
                raise _usb_error(errno.EBUSY)
            owner = dev.claims.get(intf)
            if owner is not None and owner is not dev_handle:
                raise _usb_error(errno.EBUSY)
            dev.claims[intf] = dev_handle
            dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._inherited(dev_handle, "release_interface", intf)
        dev = self._alive(dev_handle)
        with dev._lock:
            if dev.claims.get(intf) is dev_handle:
                del dev.claims[intf]
            dev_handle.claimed.discard(intf)

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return intf in self._alive(dev_handle).kernel_driver

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        dev = self._alive(dev_handle)
        if intf not in dev.kernel_driver:
            raise _usb_error(errno.ENOENT)
        dev.kernel_driver.discard(intf)

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        dev = self._alive(dev_handle)
        if dev.claims.get(intf) is not None:
            raise _usb_error(errno.EBUSY)
        dev.kernel_driver.add(intf)

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        dev = self._alive(dev_handle)
        entry = dev.endpoints.get(ep)
        if entry is None:
            raise _usb_error(errno.ENOENT)
        reader, kind = entry
        with reader.cv:
            if kind == "in":
                reader.halted_in = False
            elif kind == "out":
                reader.halted_out = False
            reader.cv.notify_all()

    def reset_device(self, dev_handle: _Handle) -> None:
        self._alive(dev_handle).reset()

    # --- transfers ----------------------------------------------------------------------

    def bulk_write(self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int],
                   timeout: int) -> int:
        reader = self._endpoint(dev_handle, ep, "out")
        outcome = "ok"
        with reader.cv:
            if reader.halted_out:
                raise _usb_error(errno.EPIPE)
            if reader.wedged:
                self._wait(reader, dev_handle, self._deadline(timeout), lambda: False)
            try:
                reader.feed(data.tobytes())
            except StallNow:
                raise _usb_error(errno.EPIPE) from None
            except UnplugNow:
                outcome = "gone"
            except UnplugAfter:
                outcome = "gone after"  # the write itself went through
        if outcome != "ok":
            assert reader.device is not None
            reader.device.unplug()
            if outcome == "gone":
                raise _usb_error(errno.ENODEV)
        return len(data) * data.itemsize

    def _wait(self, reader: VirtualReader, handle: _Handle, deadline: float | None,
              ready: Any, due: float | None = None, *, bulk: bool = True) -> None:
        """Wait on the reader's bulk (or interrupt) condition until ``ready()``.

        Timeout or unplug raise. Bulk waits also wake when the next scheduled reply is due.
        """
        cond = reader.cv if bulk else reader.intr_cv
        wakes = self._read_wakes
        while True:
            self._alive(handle)
            if ready():
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise _timeout_error()
            if not bulk and self._read_wakes != wakes:
                raise _timeout_error()  # wake_reads(): the caller is closing
            waits = [t - now for t in (deadline, due) if t is not None]
            cond.wait(max(0.0, min(waits)) if waits else None)
            if bulk:
                due = reader.next_due()

    def _read(self, dev_handle: _Handle, ep: int, kind: str, buff: array.array[int],
              timeout: int) -> int:
        reader = self._endpoint(dev_handle, ep, kind)
        bulk = kind == "in"
        queue = reader.bulk_in if bulk else reader.intr_in
        mps = reader.bulk_packet_size if bulk else reader.interrupt_packet_size
        deadline = self._deadline(timeout)
        with reader.cv:

            def ready() -> bool:
                if bulk and reader.halted_in:
                    raise _usb_error(errno.EPIPE)
                if bulk:
                    reader.release_due()
                else:
                    reader.release_interrupts()
                return bool(queue)

            self._wait(reader, dev_handle, deadline, ready,
                       reader.next_due() if bulk else None, bulk=bulk)
            size = len(buff) * buff.itemsize
            view = memoryview(buff).cast("B")
            n = 0
            while True:
                while queue and n < size:
                    packet = queue.popleft()
                    if len(packet) > size - n:
                        # The device sent more than the buffer holds: libusb fails the whole
                        # transfer (LIBUSB_ERROR_OVERFLOW) and its data is gone.
                        raise _usb_error(errno.EOVERFLOW)
                    view[n : n + len(packet)] = packet
                    n += len(packet)
                    if len(packet) < mps:
                        return n  # a short (or zero-length) packet ends the transfer
                if n >= size or not bulk or self.keeps_partial_reads:
                    return n
                # libusb: the transfer goes on until its short packet; a timeout first
                # loses what came (the caller sees only the timeout)
                self._wait(reader, dev_handle, deadline, ready, reader.next_due())

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int],
                  timeout: int) -> int:
        return self._read(dev_handle, ep, "in", buff, timeout)

    def transfer_ready(self, dev_handle: _Handle, ep: int) -> bool:
        """Whether a bulk transfer on ``ep`` would end now, without waiting: OUT when the
        reader is not wedged and answers inside the write at once
        (``VirtualReader.answers_at_once``), IN when a whole transfer is queued (or the
        endpoint is halted, which fails at once). An optional backend call; the transport
        asks it so that ``ccid.aio`` can make such transfers on the event loop's thread."""
        try:
            dev = self._alive(dev_handle)
        except usb.core.USBError:
            return True  # the transfer fails at once (no device)
        entry = dev.endpoints.get(ep)
        if entry is None:
            return True
        reader, kind = entry
        with reader.cv:
            if kind == "out":
                return not reader.wedged and reader.answers_at_once()
            if kind != "in" or reader.halted_in:
                return True
            reader.release_due()
            queue = reader.bulk_in
            if not queue:
                return False
            if self.keeps_partial_reads:
                return True
            # libusb rules: the transfer ends at a short packet (or a full buffer).
            mps = reader.bulk_packet_size
            return any(len(packet) < mps for packet in queue)

    def wake_reads(self) -> None:
        """End every interrupt read in progress as a timeout, as if its time were up.

        A reader's close() calls it (through the transport) so that its event thread, blocked
        in a long interrupt read, stops at once; libusb offers no such call to a synchronous
        transfer, so there the read runs out its (short) slice instead.
        """
        with self._lock:
            self._read_wakes += 1
            devices = list(self._devices)
        for device in devices:
            for reader in device.readers:
                with reader.cv:
                    reader.intr_cv.notify_all()

    def intr_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int],
                  timeout: int) -> int:
        return self._read(dev_handle, ep, "intr", buff, timeout)

    def intr_write(self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int],
                   timeout: int) -> int:
        self._alive(dev_handle)
        raise _usb_error(errno.ENOENT)

    def ctrl_transfer(self, dev_handle: _Handle, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: array.array[int], timeout: int) -> int:
        dev = self._alive(dev_handle)
        kind = bmRequestType & 0x60
        recipient = bmRequestType & 0x1F
        answer: bytes | str
        if kind == 0x00:
            answer = self._standard(dev, bmRequestType, bRequest, wValue, wIndex)
        elif kind == 0x20 and recipient == 0x01:
            reader = dev.by_interface.get(wIndex & 0xFF)
            if reader is None:
                raise _usb_error(errno.EPIPE)
            special = self._special_request(dev, reader, bmRequestType, bRequest, wValue,
                                            data)
            if special is not None:
                answer = special
            elif bmRequestType == 0x21 and bRequest == 0x01:
                reader.class_abort(wValue & 0xFF, wValue >> 8)
                answer = b""
            elif bmRequestType == 0xA1 and bRequest == 0x02:
                answer = reader.clocks_payload()
            elif bmRequestType == 0xA1 and bRequest == 0x03:
                answer = reader.data_rates_payload()
            else:
                answer = "stall"
        else:
            answer = "stall"
        if answer == "stall":
            raise _usb_error(errno.EPIPE)
        if answer == "timeout":
            reader0 = dev.readers[0]
            with reader0.cv:
                self._wait(reader0, dev_handle, self._deadline(timeout), lambda: False)
        assert isinstance(answer, bytes)
        if bmRequestType & 0x80:
            n = min(len(answer), len(data) * data.itemsize)
            memoryview(data).cast("B")[:n] = answer[:n]
            return n
        return len(data) * data.itemsize

    @staticmethod
    def _special_request(dev: VirtualDevice, reader: VirtualReader, request_type: int,
                         request: int, value: int, data: array.array[int]
                         ) -> bytes | str | None:
        """A class request the reader model answers itself (ICCD tokens), else None."""
        handler = getattr(reader, "control_request", None)
        if handler is None:
            return None
        size = len(data) * data.itemsize if data is not None else 0
        payload = b"" if request_type & 0x80 or data is None else data.tobytes()
        try:
            answer: bytes | str | None = handler(request_type, request, value, payload,
                                                 size if request_type & 0x80 else 0)
        except UnplugNow:
            dev.unplug()
            raise _usb_error(errno.ENODEV) from None
        return answer

    def _standard(self, dev: VirtualDevice, rtype: int, req: int, value: int, index: int
                  ) -> bytes | str:
        if rtype == 0x80 and req == 0x06:  # GET_DESCRIPTOR
            dtype, dindex = value >> 8, value & 0xFF
            if dtype == DESC_DEVICE:
                return device_bytes(dev.desc)
            if dtype == DESC_CONFIG and dindex == 0:
                return config_bytes(dev.config)
            if dtype == DESC_STRING:
                if dindex == 0:
                    return langid_bytes((LANGID_EN_US,))
                text = dev.strings.get(dindex)
                if text is not None and index == LANGID_EN_US:
                    return string_bytes(text)
            return "stall"
        if rtype in (0x80, 0x81) and req == 0x00:  # GET_STATUS
            return b"\x00\x00"
        if rtype == 0x82 and req == 0x00:
            entry = dev.endpoints.get(index & 0xFF)
            if entry is None:
                return "stall"
            halted = entry[0].halted_in if entry[1] == "in" else entry[0].halted_out
            return b"\x01\x00" if halted else b"\x00\x00"
        if rtype == 0x80 and req == 0x08:  # GET_CONFIGURATION
            return bytes((dev.configuration,))
        if rtype == 0x00 and req == 0x09:  # SET_CONFIGURATION
            if value not in (0, dev.config.bConfigurationValue):
                return "stall"
            dev.configuration = value
            return b""
        if rtype == 0x02 and req == 0x01 and value == 0:  # CLEAR_FEATURE(ENDPOINT_HALT)
            entry = dev.endpoints.get(index & 0xFF)
            if entry is None:
                return "stall"
            with entry[0].cv:
                if entry[1] == "in":
                    entry[0].halted_in = False
                elif entry[1] == "out":
                    entry[0].halted_out = False
            return b""
        if rtype == 0x01 and req == 0x0B:  # SET_INTERFACE
            return b"" if value == 0 and index in dev.by_interface else "stall"
        return "stall"
