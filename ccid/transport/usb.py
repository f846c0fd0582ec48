"""USB transport through pyusb: find CCID interfaces, claim one, move bytes.

Any pyusb backend is accepted (``ccid.testing.VirtualBackend`` in tests); by default the
libusb-1.0 shipped by ``libusb-package`` is used. pyusb errors become ``ccid.errors``:
EBUSY on claim -> SharingViolationError, ENODEV -> ReaderRemovedError, a timeout ->
ReaderTimeoutError (the caller aborts), EPIPE -> the halt is cleared and ReaderError.
"""

from __future__ import annotations

import array
import errno
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import usb.core
import usb.util

from ccid import trace as _trace
from ccid.constants import CCID_CLASS, ClassRequest
from ccid.descriptor import (
    CCIDDescriptor,
    iccd_descriptor,
    locate_ccid_descriptor,
    parse_ccid_descriptor,
)
from ccid.errors import (
    CCIDError,
    DescriptorError,
    ReaderError,
    ReaderRemovedError,
    ReaderTimeoutError,
    SharingViolationError,
    TransportError,
)

__all__ = [
    "UsbInterface",
    "UsbTransport",
    "default_backend",
    "find_interfaces",
    "usb_error",
]

_EP_BULK = 0x02
_EP_INTERRUPT = 0x03
_DIR_IN = 0x80

#: ICCD version A and B talk over the control pipe (ccid.transport.iccd).
_ICCD_CONTROL_PROTOCOLS = (1, 2)

_PCSCD_HINT = (
    "the reader's interface is claimed by another process (probably pcscd); stop it with "
    "`sudo systemctl stop pcscd.socket pcscd` or use it through PC/SC"
)
# macOS and Windows bind every CCID device to their own smart-card driver, which libusb
# cannot take over: the error must say so, not suggest pcscd or udev rules
_OS_DRIVER_HINT = {
    "darwin": "macOS holds CCID readers in its own smart-card driver (CryptoTokenKit), which "
              "ccid cannot take over; use the reader through PC/SC (pyscard) on macOS",
    "win32": "Windows holds CCID readers in its own driver (usbccid.sys, Smart Card service), "
             "which libusb cannot open; use PC/SC (pyscard), or give a dedicated reader the "
             "WinUSB driver (Zadig)",
}


def _os_driver_hint() -> str | None:
    import sys

    return _OS_DRIVER_HINT.get(sys.platform)

_default_backend: Any = None
_default_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A parent thread may have held the lock at fork(): the child starts with a free one.
    global _default_lock
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def default_backend() -> Any:
    """The libusb-1.0 backend of libusb-package (falls back to pyusb's own search)."""
    global _default_backend
    with _default_lock:
        if _default_backend is None:
            try:
                import libusb_package

                _default_backend = libusb_package.get_libusb1_backend()
            except Exception:  # libusb-package missing or broken: pyusb searches itself
                _default_backend = None
            if _default_backend is None:
                import usb.backend.libusb1

                _default_backend = usb.backend.libusb1.get_backend()
            if _default_backend is None:
                raise TransportError(
                    "no libusb backend found: install libusb-1.0 or the libusb-package wheel"
                )
        return _default_backend


def usb_error(exc: BaseException, what: str, *, reader: str | None = None,
              slot: int | None = None) -> CCIDError:
    """The ccid error a pyusb error stands for."""
    if isinstance(exc, CCIDError):
        return exc
    if isinstance(exc, usb.core.USBTimeoutError):
        return ReaderTimeoutError(f"{what}: the reader did not answer in time", reader=reader,
                                  slot=slot)
    code = getattr(exc, "errno", None)
    if code == errno.ENODEV:
        return ReaderRemovedError(f"{what}: the reader was unplugged", reader=reader, slot=slot)
    os_hint = _os_driver_hint()
    if os_hint is not None and code in (errno.EBUSY, errno.EACCES, errno.EPERM, errno.ENOSYS,
                                        errno.ENOTSUP, errno.EOPNOTSUPP):
        return SharingViolationError(f"{what}: {os_hint}", reader=reader, slot=slot)
    if code == errno.EBUSY:
        return SharingViolationError(f"{what}: {_PCSCD_HINT}", reader=reader, slot=slot)
    if code == errno.EACCES or code == errno.EPERM:
        return TransportError(
            f"{what}: access denied to the USB device; install the udev rules "
            "(`ccid udev-rules --install`) or run with the right group",
            reader=reader, slot=slot, pcsc_code="SCARD_E_NO_ACCESS",
        )
    if code == errno.ETIMEDOUT:
        return ReaderTimeoutError(f"{what}: the reader did not answer in time", reader=reader,
                                  slot=slot)
    if code == errno.EPIPE:
        return ReaderError(f"{what}: the reader stalled the endpoint", reader=reader, slot=slot)
    return TransportError(f"{what}: USB error: {exc}", reader=reader, slot=slot)


#: Largest CCID message (header + extended APDU, CCID 1.1 dwMaxCCIDMessageLength).
_MAX_MESSAGE = 10 + 65544


def _packet_size(declared: int) -> int:
    """wMaxPacketSize as a transfer size: bits 0..10 only (bits 11..12 are the high-speed
    transactions per microframe), at least 8."""
    return max(int(declared) & 0x7FF, 8)


def _ms(seconds: float) -> int:
    # libusb reads 0 as "wait forever": never pass it.
    return max(1, int(seconds * 1000 + 0.5))


def _string(dev: Any, index: int) -> str | None:
    if not index:
        return None
    try:
        value = usb.util.get_string(dev, index)
    except Exception:  # permissions, a stalled request, a broken string: names are optional
        return None
    if value is None:
        return None
    value = str(value).strip().strip("\x00")
    return value or None


@dataclass(frozen=True, slots=True)
class UsbInterface:
    """One CCID interface of one USB device, as found by :func:`find_interfaces`."""

    vid: int
    pid: int
    bcd_device: int
    manufacturer: str | None
    product: str | None
    interface_name: str | None
    serial: str | None
    bus: int | None
    address: int | None
    port_path: tuple[int, ...]
    configuration: int
    interface: int
    alternate: int
    interface_class: int
    raw_descriptor: bytes
    descriptor: CCIDDescriptor
    bulk_in: int
    bulk_out: int
    interrupt_in: int | None
    bulk_in_packet: int
    interrupt_packet: int
    device: Any = field(compare=False, repr=False, hash=False)
    #: 1 or 2: an ICCD version A or B token driven over the control pipe; 0: bulk CCID.
    iccd: int = 0
    #: bInterfaceProtocol as the interface declares it (0 CCID, 1 ICCD-A, 2 ICCD-B);
    #: quirks may be keyed on it.
    interface_protocol: int = 0

    @property
    def usb_path(self) -> str:
        """Stable location: ``bus-port.port:config.interface`` (as Linux sysfs names it)."""
        ports = ".".join(str(p) for p in self.port_path) or str(self.address or 0)
        return f"{self.bus or 0}-{ports}:{self.configuration}.{self.interface}"

    @property
    def base_name(self) -> str:
        """``Vendor Product [Interface] (serial)``, the PC/SC name without indexes."""
        vendor = self.manufacturer or f"USB {self.vid:04X}"
        product = self.product or f"CCID reader {self.vid:04X}:{self.pid:04X}"
        name = product if product.startswith(vendor) else f"{vendor} {product}"
        if self.interface_name and self.interface_name not in name:
            name += f" [{self.interface_name}]"
        if self.serial:
            name += f" ({self.serial})"
        return name


def _iter_configs(dev: Any) -> Iterator[Any]:
    try:
        yield from dev
    except usb.core.USBError:
        return


def _interfaces_of(dev: Any) -> list[UsbInterface]:
    found: list[UsbInterface] = []
    strings: dict[int, str | None] = {}

    def text(index: int) -> str | None:
        if index not in strings:
            strings[index] = _string(dev, index)
        return strings[index]

    for cfg in _iter_configs(dev):
        for intf in cfg:
            if intf.bAlternateSetting != 0:
                continue
            klass = intf.bInterfaceClass
            if klass not in (CCID_CLASS, 0xFF):
                continue
            iccd = intf.bInterfaceProtocol if intf.bInterfaceProtocol in \
                _ICCD_CONTROL_PROTOCOLS else 0
            endpoints = list(intf)
            try:
                raw = locate_ccid_descriptor(
                    bytes(intf.extra_descriptors),
                    interface_class=klass,
                    endpoint_extras=[bytes(ep.extra_descriptors) for ep in endpoints],
                )
                desc = parse_ccid_descriptor(raw)
            except DescriptorError:
                continue  # a vendor interface without a CCID descriptor is not ours
            bulk_in = bulk_out = None
            intr: int | None = None
            bulk_in_packet = intr_packet = 64
            for ep in endpoints:
                kind = ep.bmAttributes & 0x03
                addr = ep.bEndpointAddress
                if kind == _EP_BULK and addr & _DIR_IN and bulk_in is None:
                    bulk_in, bulk_in_packet = addr, ep.wMaxPacketSize or 64
                elif kind == _EP_BULK and not addr & _DIR_IN and bulk_out is None:
                    bulk_out = addr
                elif kind == _EP_INTERRUPT and addr & _DIR_IN and intr is None:
                    intr, intr_packet = addr, ep.wMaxPacketSize or 8
            if iccd and klass != CCID_CLASS and bulk_in is not None and bulk_out is not None:
                iccd = 0  # a vendor interface with bulk pipes talks CCID, whatever it says
            if iccd:
                desc = iccd_descriptor(desc, iccd)
                bulk_in, bulk_out = bulk_in or 0, bulk_out or 0
            if bulk_in is None or bulk_out is None:
                continue
            ports = getattr(dev, "port_numbers", None) or ()
            found.append(UsbInterface(
                vid=dev.idVendor, pid=dev.idProduct, bcd_device=dev.bcdDevice,
                manufacturer=text(dev.iManufacturer), product=text(dev.iProduct),
                interface_name=text(intf.iInterface), serial=text(dev.iSerialNumber),
                bus=getattr(dev, "bus", None), address=getattr(dev, "address", None),
                port_path=tuple(ports), configuration=cfg.bConfigurationValue,
                interface=intf.bInterfaceNumber, alternate=intf.bAlternateSetting,
                interface_class=klass, raw_descriptor=raw, descriptor=desc,
                bulk_in=bulk_in, bulk_out=bulk_out, interrupt_in=intr,
                bulk_in_packet=bulk_in_packet, interrupt_packet=intr_packet, device=dev,
                iccd=iccd, interface_protocol=int(intf.bInterfaceProtocol),
            ))
    return found


def find_interfaces(backend: Any = None) -> list[UsbInterface]:
    """Every CCID interface on the bus, in bus order (composite devices: one per interface)."""
    backend = default_backend() if backend is None else backend
    try:
        devices = list(usb.core.find(find_all=True, backend=backend))
    except usb.core.NoBackendError as exc:
        raise TransportError(f"no USB backend: {exc}") from exc
    except usb.core.USBError as exc:
        raise usb_error(exc, "listing USB devices") from exc
    out: list[UsbInterface] = []
    for dev in devices:
        try:
            out.extend(_interfaces_of(dev))
        except usb.core.USBError:
            continue  # unplugged while we looked
        finally:
            try:
                usb.util.dispose_resources(dev)
            except Exception:
                pass
    out.sort(key=lambda i: (i.bus or 0, i.port_path, i.address or 0, i.interface))
    return out


class UsbTransport:
    """A claimed CCID interface: bulk-OUT frames, bulk-IN reads, class requests, interrupts.

    ``close()`` is safe at any point, also on a half-opened transport and twice; after
    ``mark_inherited()`` (a fork child) it never touches the USB handle again.
    """

    def __init__(self, info: UsbInterface, name: str) -> None:
        self.info = info
        self.name = name
        self._dev: Any = info.device
        self._claimed = False
        self._detached = False
        self._closed = False
        self._inherited = False
        self._packet = _packet_size(info.bulk_in_packet)
        # The device's declaration sizes a buffer: never past the largest CCID message.
        wanted = min(max(info.descriptor.dwMaxCCIDMessageLength, 271), _MAX_MESSAGE) + 10
        self._bulk_in = info.bulk_in
        self._bulk_out = info.bulk_out
        self._buffer = array.array("B")
        self._view = memoryview(self._buffer)
        self._buffer_lock = threading.Lock()
        self.read_size = wanted
        self._keeps_partial: bool | None = None
        self._ready: Any = False

    @property
    def read_size(self) -> int:
        """Bytes asked for by each bulk-IN read (whole packets)."""
        return len(self._buffer)

    @read_size.setter
    def read_size(self, size: int) -> None:
        # Whole packets only: a read that ends mid-packet overflows on real libusb.
        packet = self._packet
        size = (max(size, 1) + packet - 1) // packet * packet
        # One buffer reused by every read: pyusb then neither allocates nor slices an array
        # per transfer. A read that finds it in use (a drain racing the reading thread)
        # takes a fresh one.
        with self._buffer_lock:
            self._view.release()
            self._buffer = array.array("B", bytes(size))
            self._view = memoryview(self._buffer)

    # --- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """Detach a kernel driver if one is bound and claim the interface."""
        number = self.info.interface
        try:
            if self._dev.is_kernel_driver_active(number):
                self._dev.detach_kernel_driver(number)
                self._detached = True
        except (NotImplementedError, usb.core.USBError) as exc:
            code = getattr(exc, "errno", None)
            if code in (errno.ENODEV, errno.EACCES, errno.EPERM):
                raise usb_error(exc, "opening the reader", reader=self.name) from exc
            # no kernel driver support on this platform or backend: nothing to detach
        try:
            usb.util.claim_interface(self._dev, number)
        except usb.core.USBError as exc:
            raise usb_error(exc, "claiming the interface", reader=self.name) from exc
        self._claimed = True

    def reset_device(self) -> None:
        """USB port reset (firmware restarts), then claim the interface again."""
        dev = self._device()
        self._claimed = False
        try:
            dev.reset()
        except usb.core.USBError as exc:
            raise usb_error(exc, "resetting the reader", reader=self.name) from exc
        try:
            usb.util.claim_interface(dev, self.info.interface)
        except usb.core.USBError as exc:
            raise usb_error(exc, "claiming the interface after reset", reader=self.name) from exc
        self._claimed = True

    def mark_inherited(self) -> None:
        """This copy lives in a fork child: never touch the parent's handle."""
        self._inherited = True
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the interface, re-attach a detached kernel driver, free the handle."""
        if self._inherited:
            return
        self._closed = True
        dev, self._dev = self._dev, None
        if dev is None:
            return
        if self._claimed:
            self._claimed = False
            try:
                usb.util.release_interface(dev, self.info.interface)
            except Exception:
                pass
        if self._detached:
            self._detached = False
            try:
                dev.attach_kernel_driver(self.info.interface)
            except Exception:
                pass
        try:
            usb.util.dispose_resources(dev)
        except Exception:
            pass

    def _device(self) -> Any:
        dev = self._dev
        if dev is None:
            raise ReaderRemovedError("the reader is closed", reader=self.name)
        return dev

    # --- bulk ---------------------------------------------------------------------------

    def write(self, frame: bytes, timeout: float) -> None:
        """Write one PC_to_RDR frame on bulk-OUT."""
        dev = self._dev
        if dev is None:
            dev = self._device()
        if _trace.enabled:
            _trace.record(self.name, "->", frame)
        # pyusb takes an array('B') as is; any other type costs it a failed conversion
        # (a raised and caught TypeError) before the copy into an array.
        data = array.array("B", frame)
        ms = int(timeout * 1000 + 0.5)
        try:
            dev.write(self._bulk_out, data, ms if ms > 0 else 1)
        except usb.core.USBError as exc:
            self._on_error(exc, self._bulk_out)
            raise usb_error(exc, "writing to the reader", reader=self.name) from exc

    def read(self, timeout: float) -> bytes:
        """One bulk-IN transfer (up to a whole maximal frame)."""
        dev = self._dev
        if dev is None:
            dev = self._device()
        ms = int(timeout * 1000 + 0.5)
        lock = self._buffer_lock
        if not lock.acquire(False):
            return self._read_fresh(dev, ms if ms > 0 else 1)
        try:
            n = dev.read(self._bulk_in, self._buffer, ms if ms > 0 else 1)
            return self._view[:n].tobytes()
        except usb.core.USBError as exc:
            self._on_error(exc, self._bulk_in)
            raise usb_error(exc, "reading from the reader", reader=self.name) from exc
        finally:
            lock.release()

    def _read_fresh(self, dev: Any, ms: int) -> bytes:
        try:
            data = dev.read(self._bulk_in, len(self._buffer), ms)
        except usb.core.USBError as exc:
            self._on_error(exc, self._bulk_in)
            raise usb_error(exc, "reading from the reader", reader=self.name) from exc
        out: bytes = data.tobytes()
        return out

    def trace_in(self, frame: bytes) -> None:
        """Record a complete bulk-IN frame (called once the frame is reassembled)."""
        if _trace.enabled:
            _trace.record(self.name, "<-", frame)

    def _on_error(self, exc: usb.core.USBError, endpoint: int) -> None:
        if getattr(exc, "errno", None) == errno.EPIPE and not isinstance(
                exc, usb.core.USBTimeoutError):
            self.clear_halt(endpoint)

    def clear_halt(self, endpoint: int) -> None:
        """Clear a stalled endpoint (errors ignored: the next transfer will tell)."""
        dev = self._dev
        if dev is None:
            return
        try:
            dev.clear_halt(endpoint)
        except Exception:
            pass

    # --- control ------------------------------------------------------------------------

    def class_request_in(self, request: ClassRequest, length: int, timeout: float,
                         value: int = 0) -> bytes:
        """A CCID class request reading ``length`` bytes (GET_DATA_RATES, ...)."""
        dev = self._device()
        if _trace.enabled:
            _trace.record(self.name, "ctrl->", bytes([0xA1, int(request)]) +
                          value.to_bytes(2, "little") +
                          self.info.interface.to_bytes(2, "little") +
                          length.to_bytes(2, "little"))
        try:
            data = dev.ctrl_transfer(0xA1, int(request), value, self.info.interface, length,
                                     _ms(timeout))
        except usb.core.USBError as exc:
            raise usb_error(exc, f"class request {request.name}", reader=self.name) from exc
        out: bytes = bytes(data)
        if _trace.enabled:
            _trace.record(self.name, "ctrl<-", out)
        return out

    def class_request_out(self, request: ClassRequest, value: int, timeout: float) -> None:
        """A CCID class request without data stage (ABORT)."""
        dev = self._device()
        if _trace.enabled:
            _trace.record(self.name, "ctrl->", bytes([0x21, int(request)]) +
                          value.to_bytes(2, "little") +
                          self.info.interface.to_bytes(2, "little") + b"\x00\x00")
        try:
            dev.ctrl_transfer(0x21, int(request), value, self.info.interface, None,
                              _ms(timeout))
        except usb.core.USBError as exc:
            raise usb_error(exc, f"class request {request.name}", reader=self.name) from exc

    def abort(self, slot: int, seq: int, timeout: float) -> None:
        """The ABORT class request for the command (``slot``, ``seq``) (CCID 5.3.1)."""
        from ccid.messages import abort_request  # the request's one layout

        setup = abort_request(self.info.interface, slot, seq)
        self.class_request_out(ClassRequest(setup.bRequest), setup.wValue, timeout)

    # --- interrupt ----------------------------------------------------------------------

    @property
    def has_interrupt(self) -> bool:
        """The reader has an interrupt-IN endpoint (card events without polling)."""
        return self.info.interrupt_in is not None

    @property
    def keeps_partial_reads(self) -> bool:
        """A read that times out hands back the packets that came (the virtual backend);
        libusb through pyusb loses them, so a read that may time out must not span two
        packets of one frame (see ``Wire.read_sliced``)."""
        keeps = self._keeps_partial
        if keeps is None:  # asked on every read: the backend does not change, look once
            ctx = getattr(self._dev, "_ctx", None)
            keeps = self._keeps_partial = bool(
                getattr(getattr(ctx, "backend", None), "keeps_partial_reads", False))
        return keeps

    def _ready_hook(self) -> Any:
        hook = self._ready
        if hook is False:  # asked per transfer: the backend does not change, look once
            ctx = getattr(self._dev, "_ctx", None)
            hook = self._ready = getattr(getattr(ctx, "backend", None), "transfer_ready",
                                         None)
        return hook

    @property
    def pollable(self) -> bool:
        """The backend can say whether a bulk transfer would wait (an optional
        ``transfer_ready(handle, endpoint)``; the virtual backend has it, libusb through
        pyusb has not): ``ccid.aio`` then makes the transfers that would not wait on the
        event loop's thread instead of handing them to a worker thread."""
        return self._ready_hook() is not None

    def ready(self, inbound: bool) -> bool:
        """Whether a bulk-IN (``inbound``) or bulk-OUT transfer would end without waiting;
        False when the backend cannot tell."""
        hook = self._ready_hook()
        ctx = getattr(self._dev, "_ctx", None)
        handle = getattr(ctx, "handle", None)
        if hook is None or handle is None:
            return False
        return bool(hook(handle, self._bulk_in if inbound else self._bulk_out))

    def read_packet(self, timeout: float) -> bytes:
        """One bulk-IN transfer of at most one packet: a timeout can lose nothing."""
        dev = self._device()
        ms = int(timeout * 1000 + 0.5)
        try:
            data = dev.read(self._bulk_in, _packet_size(self.info.bulk_in_packet), max(1, ms))
        except usb.core.USBError as exc:
            self._on_error(exc, self._bulk_in)
            raise usb_error(exc, "reading from the reader", reader=self.name) from exc
        out: bytes = data.tobytes()
        return out

    def _wake_hook(self) -> Any:
        ctx = getattr(self._dev, "_ctx", None)  # pyusb keeps the backend on the device's context
        return getattr(getattr(ctx, "backend", None), "wake_reads", None)

    @property
    def interrupt_wakeable(self) -> bool:
        """The backend can end a blocked interrupt read early (see :meth:`wake_interrupt`)."""
        return self._wake_hook() is not None

    def wake_interrupt(self) -> None:
        """End an interrupt read blocked in another thread, where the backend can."""
        hook = self._wake_hook()
        if hook is not None:
            hook()

    def read_interrupt(self, size: int = 0, timeout_ms: int = 250) -> bytes | None:
        """One interrupt-IN message, or None when nothing came within ``timeout_ms``."""
        if self.info.interrupt_in is None:
            return None
        dev = self._device()
        packet = _packet_size(self.info.interrupt_packet)
        size = (max(min(size, 4096), packet, 8) + packet - 1) // packet * packet
        try:
            data = dev.read(self.info.interrupt_in, size, max(1, int(timeout_ms)))
        except usb.core.USBTimeoutError:
            return None
        except usb.core.USBError as exc:
            if getattr(exc, "errno", None) == errno.ETIMEDOUT:
                return None
            self._on_error(exc, self.info.interrupt_in)
            raise usb_error(exc, "reading the interrupt endpoint", reader=self.name) from exc
        out: bytes = data.tobytes()
        if _trace.enabled:
            _trace.record(self.name, "int<-", out)
        return out
