"""The CCID class descriptor (CCID 1.1 section 5.1) and the clock/data-rate arrays."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ccid._args import as_bytes as _as_bytes
from ccid.constants import (
    CCID_DESCRIPTOR_LENGTH,
    CCID_DESCRIPTOR_TYPE,
    EXCHANGE_LEVEL_MASK,
    ExchangeLevel,
    Features,
    PINSupport,
    Protocols,
    Voltage,
)
from ccid.errors import DescriptorError, UsageError

__all__ = [
    "DESCRIPTOR_FIELDS",
    "CCIDDescriptor",
    "iccd_descriptor",
    "locate_ccid_descriptor",
    "parse_ccid_descriptor",
    "parse_clock_frequencies",
    "parse_data_rates",
]

# bLength .. bMaxCCIDBusySlots, little-endian, 54 bytes in all.
_LAYOUT = struct.Struct("<BBHBBIIIBIIBIIIIIBBHBB")
assert _LAYOUT.size == CCID_DESCRIPTOR_LENGTH

#: Descriptor types seen in the wild: 0x21 (CCID), 0xFF (pre-1.0 / proprietary readers).
_ACCEPTED_TYPES = (CCID_DESCRIPTOR_TYPE, 0xFF)


@dataclass(frozen=True, slots=True)
class CCIDDescriptor:
    """Every field of the 54-byte CCID class descriptor, with decoded views."""

    bLength: int
    bDescriptorType: int
    bcdCCID: int
    bMaxSlotIndex: int
    bVoltageSupport: int
    dwProtocols: int
    dwDefaultClock: int
    dwMaximumClock: int
    bNumClockSupported: int
    dwDataRate: int
    dwMaxDataRate: int
    bNumDataRatesSupported: int
    dwMaxIFSD: int
    dwSynchProtocols: int
    dwMechanical: int
    dwFeatures: int
    dwMaxCCIDMessageLength: int
    bClassGetResponse: int
    bClassEnvelope: int
    wLcdLayout: int
    bPINSupport: int
    bMaxCCIDBusySlots: int

    # --- construction -----------------------------------------------------------------

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> CCIDDescriptor:
        """Build from a mapping holding (at least) every field name; extra keys are ignored.

        bLength and bDescriptorType default to 54 and 0x21 when absent.
        """
        data = {"bLength": CCID_DESCRIPTOR_LENGTH, "bDescriptorType": CCID_DESCRIPTOR_TYPE}
        data.update({k: v for k, v in values.items() if k in DESCRIPTOR_FIELDS})
        missing = [name for name in DESCRIPTOR_FIELDS if name not in data]
        if missing:
            raise DescriptorError(f"descriptor fields missing: {', '.join(missing)}")
        return cls(**{name: int(data[name]) for name in DESCRIPTOR_FIELDS})

    def to_bytes(self) -> bytes:
        """The 54 bytes as a reader sends them."""
        try:
            return _LAYOUT.pack(*(getattr(self, name) for name in DESCRIPTOR_FIELDS))
        except struct.error as exc:
            raise DescriptorError(f"descriptor field out of range: {exc}") from exc

    def as_dict(self) -> dict[str, int]:
        """Raw fields by spec name."""
        return {name: getattr(self, name) for name in DESCRIPTOR_FIELDS}

    # --- decoded views ----------------------------------------------------------------

    @property
    def features(self) -> Features:
        """dwFeatures as flags (unknown bits are kept)."""
        return Features(self.dwFeatures)

    @property
    def exchange_level(self) -> ExchangeLevel:
        """Character, TPDU, short APDU or extended APDU.

        A reader that sets several level bits is taken at the highest it declares.
        """
        level = self.dwFeatures & EXCHANGE_LEVEL_MASK
        for candidate in (
            ExchangeLevel.EXTENDED_APDU,
            ExchangeLevel.SHORT_APDU,
            ExchangeLevel.TPDU,
        ):
            if level & candidate:
                return candidate
        return ExchangeLevel.CHARACTER

    @property
    def voltages(self) -> Voltage:
        """Supported ICC voltages."""
        return Voltage(self.bVoltageSupport & 0x07)

    @property
    def protocols(self) -> Protocols:
        """Supported asynchronous protocols (T=0, T=1)."""
        return Protocols(self.dwProtocols & 0x03)

    @property
    def pin_support(self) -> PINSupport:
        """PIN verification / modification on the reader's pinpad."""
        return PINSupport(self.bPINSupport & 0x03)

    @property
    def is_iccd(self) -> bool:
        """True for ICCD tokens (dwFeatures bit 0x800)."""
        return bool(self.dwFeatures & Features.ICCD_TOKEN)

    @property
    def lcd_layout(self) -> tuple[int, int] | None:
        """(lines, characters per line) of the reader's display, or None without one."""
        if self.wLcdLayout == 0:
            return None
        return (self.wLcdLayout >> 8) & 0xFF, self.wLcdLayout & 0xFF

    @property
    def slot_count(self) -> int:
        """Number of slots (bMaxSlotIndex + 1)."""
        return self.bMaxSlotIndex + 1

    @property
    def version(self) -> str:
        """bcdCCID as text, e.g. '1.10'."""
        return f"{self.bcdCCID >> 8:x}.{self.bcdCCID & 0xFF:02x}"


DESCRIPTOR_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CCIDDescriptor))


def parse_ccid_descriptor(raw: bytes) -> CCIDDescriptor:
    """Parse the 54-byte class descriptor; raise DescriptorError naming what was found."""
    raw = _as_bytes(raw, "the CCID descriptor")
    if len(raw) < 2:
        raise DescriptorError(f"CCID descriptor too short: {len(raw)} bytes, expected 54")
    if raw[0] != CCID_DESCRIPTOR_LENGTH:
        raise DescriptorError(
            f"CCID descriptor has bLength {raw[0]}, expected 54 ({len(raw)} bytes given)"
        )
    if raw[1] not in _ACCEPTED_TYPES:
        raise DescriptorError(
            f"CCID descriptor has bDescriptorType 0x{raw[1]:02X}, expected 0x21 (or 0xFF)"
        )
    if len(raw) != CCID_DESCRIPTOR_LENGTH:
        raise DescriptorError(f"CCID descriptor is {len(raw)} bytes long, expected 54")
    return CCIDDescriptor(*_LAYOUT.unpack(raw))


def _walk(extra: bytes) -> tuple[list[bytes], str | None]:
    """Split concatenated descriptors; stop at a malformed length (never read past the end).

    Returns the whole descriptors and, when the walk stopped early, what stopped it.
    """
    out: list[bytes] = []
    pos = 0
    while pos < len(extra):
        if pos + 2 > len(extra):
            return out, f"{len(extra) - pos} stray byte(s) at offset {pos}"
        length = extra[pos]
        if length < 2:
            return out, f"bLength {length} at offset {pos}"
        if pos + length > len(extra):
            return out, (
                f"type 0x{extra[pos + 1]:02X} bLength {length} truncated to"
                f" {len(extra) - pos} bytes at offset {pos}"
            )
        out.append(bytes(extra[pos : pos + length]))
        pos += length
    return out, None


def locate_ccid_descriptor(
    interface_extra: bytes,
    *,
    interface_class: int = 0x0B,
    endpoint_extras: Sequence[bytes] = (),
) -> bytes:
    """Find the raw 54-byte class descriptor where real devices put it.

    Looked for, in order: the interface's extra bytes (the normal place, type 0x21, or 0xFF
    on class-0xFF readers), then the extra bytes after the last endpoint (O2Micro OZ776
    puts it there). Raises DescriptorError naming what was found instead.
    """
    found: list[str] = []
    places = [_as_bytes(interface_extra, "the interface's extra descriptors")]
    if endpoint_extras:
        places.append(_as_bytes(endpoint_extras[-1], "the endpoint's extra descriptors"))
    for place in places:
        descs, stopped = _walk(place)
        for desc in descs:
            if len(desc) == CCID_DESCRIPTOR_LENGTH and desc[1] in _ACCEPTED_TYPES:
                return desc
            found.append(f"type 0x{desc[1]:02X} length {len(desc)}")
        if stopped:
            found.append(stopped)
    what = ", ".join(found) if found else "no class descriptor"
    raise DescriptorError(
        f"no 54-byte CCID class descriptor on interface class 0x{interface_class:02X} ({what})"
    )


def _parse_dword_array(payload: bytes, declared: int | None) -> tuple[int, ...]:
    # The rules of a careful driver, checked against the 773 dumps of the libccid corpus:
    # - a payload that is not whole DWORDs is not a table (readers answer 1 or 2 stray
    #   bytes): no list, so the caller falls back to the descriptor's range;
    # - bNum*Supported > 0 bounds the table: readers return 256 entries for 106 declared,
    #   the entries past the declared count are not trusted;
    # - a zero entry ends the table: readers that declare 0 answer zero-filled or garbage
    #   buffers, and a genuine table never holds a zero rate (zero-dropping instead would
    #   keep the garbage behind the zeros).
    # Entries outside dwDataRate..dwMaxDataRate are kept: many genuine tables exceed the
    # declared maximum, so only the caller can weigh them (e.g. against the card's Fi/Di).
    payload = _as_bytes(payload, "the class request answer")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)):
        raise UsageError(f"declared must be None or an integer, not {declared!r}")
    if not payload or len(payload) % 4:
        return ()
    count = len(payload) // 4
    if declared is not None and declared > 0:
        count = min(count, declared)
    values: list[int] = []
    for i in range(count):
        value = int.from_bytes(payload[4 * i : 4 * i + 4], "little")
        if value == 0:
            break
        values.append(value)
    return tuple(values)


def parse_data_rates(payload: bytes, declared: int | None = None) -> tuple[int, ...]:
    """Decode a GET_DATA_RATES answer: little-endian DWORDs in bps.

    A payload that is not whole DWORDs gives no list (); only the first ``declared``
    entries count (bNumDataRatesSupported, when non-zero); a zero entry ends the list.
    Order and duplicates are kept as the reader gave them.
    """
    return _parse_dword_array(payload, declared)


def parse_clock_frequencies(payload: bytes, declared: int | None = None) -> tuple[int, ...]:
    """Decode a GET_CLOCK_FREQUENCIES answer: little-endian DWORDs in kHz (same rules)."""
    return _parse_dword_array(payload, declared)


def iccd_descriptor(desc: CCIDDescriptor, version: int) -> CCIDDescriptor:
    """The descriptor the session drives for an ICCD token (``version``: the interface's
    bInterfaceProtocol, 1 = A, 2 = B): version A as a TPDU reader (T=0 unless the
    descriptor adds T=1), version B as an extended-APDU reader; one slot, one busy slot."""
    level = Features.LEVEL_TPDU if version == 1 else Features.LEVEL_EXTENDED_APDU
    mask = Features.LEVEL_TPDU | Features.LEVEL_SHORT_APDU | Features.LEVEL_EXTENDED_APDU
    features = (desc.dwFeatures & ~int(mask)) | int(level)
    protocols = desc.dwProtocols & 0x03 or 0x01
    if version == 1 and desc.exchange_level != ExchangeLevel.TPDU:
        protocols = 0x01  # character-level version A tokens run T=0 only
    return CCIDDescriptor.from_fields({
        **desc.as_dict(),
        "dwFeatures": features, "dwProtocols": protocols, "bMaxSlotIndex": 0,
        "bMaxCCIDBusySlots": 1, "bPINSupport": 0,
        "dwMaxCCIDMessageLength": max(desc.dwMaxCCIDMessageLength, 271),
    })
