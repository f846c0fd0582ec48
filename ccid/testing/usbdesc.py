"""USB standard descriptors of virtual devices: the objects pyusb reads, and their wire bytes.

pyusb's backends hand ``usb.core`` plain objects carrying the descriptor fields by their
USB names (plus ``extra_descriptors``, and bus/address/port data on the device); the classes
here are those objects. ``*_bytes()`` give the same descriptors as a device sends them in
answer to GET_DESCRIPTOR, so both views always agree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "DESC_CONFIG",
    "DESC_DEVICE",
    "DESC_ENDPOINT",
    "DESC_INTERFACE",
    "DESC_STRING",
    "EP_BULK",
    "EP_INTERRUPT",
    "LANGID_EN_US",
    "ConfigDesc",
    "DeviceDesc",
    "EndpointDesc",
    "InterfaceDesc",
    "config_bytes",
    "device_bytes",
    "langid_bytes",
    "string_bytes",
]

DESC_DEVICE = 1
DESC_CONFIG = 2
DESC_STRING = 3
DESC_INTERFACE = 4
DESC_ENDPOINT = 5

EP_BULK = 0x02
EP_INTERRUPT = 0x03

LANGID_EN_US = 0x0409


@dataclass(slots=True)
class DeviceDesc:
    """Device descriptor fields, plus the topology data libusb adds (bus, address, ports)."""

    idVendor: int
    idProduct: int
    bcdDevice: int = 0x0100
    iManufacturer: int = 0
    iProduct: int = 0
    iSerialNumber: int = 0
    bcdUSB: int = 0x0200
    bDeviceClass: int = 0
    bDeviceSubClass: int = 0
    bDeviceProtocol: int = 0
    bMaxPacketSize0: int = 64
    bNumConfigurations: int = 1
    bLength: int = 18
    bDescriptorType: int = DESC_DEVICE
    bus: int | None = 1
    address: int | None = 1
    port_number: int | None = 1
    port_numbers: tuple[int, ...] | None = (1,)
    speed: int | None = 2  # usb.util.SPEED_FULL


@dataclass(slots=True)
class EndpointDesc:
    """Endpoint descriptor fields (``extra_descriptors``: bytes that follow it)."""

    bEndpointAddress: int
    bmAttributes: int
    wMaxPacketSize: int
    bInterval: int = 0
    bLength: int = 7
    bDescriptorType: int = DESC_ENDPOINT
    bRefresh: int = 0
    bSynchAddress: int = 0
    extra_descriptors: list[int] = field(default_factory=list)


@dataclass(slots=True)
class InterfaceDesc:
    """Interface descriptor fields (``extra_descriptors``: the class descriptor normally)."""

    bInterfaceNumber: int
    bInterfaceClass: int
    bInterfaceSubClass: int = 0
    bInterfaceProtocol: int = 0
    bAlternateSetting: int = 0
    iInterface: int = 0
    bLength: int = 9
    bDescriptorType: int = DESC_INTERFACE
    extra_descriptors: list[int] = field(default_factory=list)
    endpoints: list[EndpointDesc] = field(default_factory=list)

    @property
    def bNumEndpoints(self) -> int:
        return len(self.endpoints)


@dataclass(slots=True)
class ConfigDesc:
    """Configuration descriptor fields; ``interfaces`` in logical order (one alt setting each)."""

    interfaces: list[InterfaceDesc]
    bConfigurationValue: int = 1
    iConfiguration: int = 0
    bmAttributes: int = 0x80  # bus powered
    bMaxPower: int = 50  # 100 mA, in 2 mA units
    bLength: int = 9
    bDescriptorType: int = DESC_CONFIG
    extra_descriptors: list[int] = field(default_factory=list)

    @property
    def bNumInterfaces(self) -> int:
        return len({i.bInterfaceNumber for i in self.interfaces})

    @property
    def wTotalLength(self) -> int:
        return len(config_bytes(self))


def device_bytes(d: DeviceDesc) -> bytes:
    """The 18-byte device descriptor."""
    return struct.pack(
        "<BBHBBBBHHHBBBB", 18, DESC_DEVICE, d.bcdUSB, d.bDeviceClass, d.bDeviceSubClass,
        d.bDeviceProtocol, d.bMaxPacketSize0, d.idVendor, d.idProduct, d.bcdDevice,
        d.iManufacturer, d.iProduct, d.iSerialNumber, d.bNumConfigurations,
    )


def config_bytes(c: ConfigDesc) -> bytes:
    """The whole configuration: config, then each interface, its extras, its endpoints."""
    body = bytearray(bytes(c.extra_descriptors))
    for intf in c.interfaces:
        body += struct.pack(
            "<BBBBBBBBB", 9, DESC_INTERFACE, intf.bInterfaceNumber, intf.bAlternateSetting,
            intf.bNumEndpoints, intf.bInterfaceClass, intf.bInterfaceSubClass,
            intf.bInterfaceProtocol, intf.iInterface,
        )
        body += bytes(intf.extra_descriptors)
        for ep in intf.endpoints:
            body += struct.pack("<BBBBHB", 7, DESC_ENDPOINT, ep.bEndpointAddress,
                                ep.bmAttributes, ep.wMaxPacketSize, ep.bInterval)
            body += bytes(ep.extra_descriptors)
    total = 9 + len(body)
    head = struct.pack("<BBHBBBBB", 9, DESC_CONFIG, total, c.bNumInterfaces,
                       c.bConfigurationValue, c.iConfiguration, c.bmAttributes, c.bMaxPower)
    return head + bytes(body)


def string_bytes(text: str) -> bytes:
    """A string descriptor (UTF-16LE), cut to the 255-byte descriptor limit."""
    payload = text.encode("utf-16-le")[:252]
    return bytes((2 + len(payload), DESC_STRING)) + payload


def langid_bytes(langids: tuple[int, ...] = (LANGID_EN_US,)) -> bytes:
    """String descriptor 0: the supported LANGIDs."""
    payload = b"".join(struct.pack("<H", lang) for lang in langids)
    return bytes((2 + len(payload), DESC_STRING)) + payload
