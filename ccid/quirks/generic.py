"""Quirks shared by several vendors: wrong exchange level, fake pinpads, slow opening,
known-bad firmware, and cards that need more time than their ATR says."""

from __future__ import annotations

from dataclasses import replace

from ccid.constants import EXCHANGE_LEVEL_MASK, ExchangeLevel
from ccid.descriptor import CCIDDescriptor
from ccid.errors import UnsupportedReaderError
from ccid.quirks import Quirk, format_bcd, register

__all__ = [
    "OPENPGP_BWI",
    "ForceExchangeLevel",
    "MinimumFirmware",
    "NoPinpad",
    "OpenPGPCardBWI",
    "ShortAPDUIsChained",
    "SlowOpen",
    "firmware_refusal",
    "with_exchange_level",
]


def with_exchange_level(desc: CCIDDescriptor, level: ExchangeLevel) -> CCIDDescriptor:
    """The descriptor with dwFeatures' exchange-level bits replaced by ``level``."""
    features = (desc.dwFeatures & ~EXCHANGE_LEVEL_MASK) | int(level)
    return replace(desc, dwFeatures=features)


class ForceExchangeLevel(Quirk):
    """The firmware works at another exchange level than its descriptor declares."""

    def __init__(self, quirk_id: str, level: ExchangeLevel, description: str) -> None:
        self.id = quirk_id
        self.level = level
        self.description = description

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        return with_exchange_level(desc, self.level)


class ShortAPDUIsChained(Quirk):
    """Declares short APDU but answers long responses in chained blocks: use extended."""

    def __init__(self, quirk_id: str, description: str) -> None:
        self.id = quirk_id
        self.description = description

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        if desc.exchange_level == ExchangeLevel.SHORT_APDU:
            return with_exchange_level(desc, ExchangeLevel.EXTENDED_APDU)
        return desc


class NoPinpad(Quirk):
    """Declares PIN verify/modify it cannot do safely (or at all): bPINSupport 0."""

    id = "no-pinpad"
    description = (
        "the descriptor announces a pinpad that is absent or unsafe (on some keyboards the "
        "PIN typed for the card also reaches the host): PIN support is turned off"
    )

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        return replace(desc, bPINSupport=0)


class SlowOpen(Quirk):
    """Answers the first commands slowly: longer timeouts while opening only."""

    def __init__(self, quirk_id: str, factor: float, description: str) -> None:
        self.id = quirk_id
        self.factor = factor
        self.description = description

    def open_timeout(self, default: float) -> float:
        return default * self.factor


#: The OpenPGP card (v1/v2 family) asks for BWI 4 (about 1.4 s) but generates keys on board
#: for far longer; BWI 7 gives about 11 s.
OPENPGP_BWI = 7


class OpenPGPCardBWI(Quirk):
    """The card's ATR announces a block waiting time too short for on-card key generation.

    Matched on the card's ATR in readers.yaml, so it applies with any reader.
    """

    id = "openpgp-card-bwi"
    description = (
        "OpenPGP card: the ATR's BWI (block waiting time) is too short for on-board key "
        f"generation; BWI {OPENPGP_BWI} is used instead"
    )

    def adjust_bwi(self, bwi: int, atr: bytes) -> int:
        return max(bwi, OPENPGP_BWI)


def firmware_refusal(problem: str, reader: str | None = None) -> UnsupportedReaderError:
    """The error for firmware known to be broken (``problem`` names it and the fix)."""
    return UnsupportedReaderError(f"{problem}; pass allow_bad_firmware=True to open it anyway",
                                  reader=reader)


class MinimumFirmware(Quirk):
    """Firmware older than ``minimum`` is known to be broken (built from readers.yaml)."""

    id = "minimum-firmware"

    def __init__(self, minimum: int, reader: str, note: str | None = None) -> None:
        self.minimum = minimum
        self.reader = reader
        self.note = note
        self.description = (
            f"{reader}: firmware older than {format_bcd(minimum)} is known to be broken"
        )

    def __repr__(self) -> str:
        return f"<MinimumFirmware {self.reader!r} >= {format_bcd(self.minimum)}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MinimumFirmware):
            return NotImplemented
        return (self.minimum, self.reader, self.note) == (other.minimum, other.reader, other.note)

    def __hash__(self) -> int:
        return hash((self.minimum, self.reader, self.note))

    def check_firmware(self, bcd_device: int) -> str | None:
        if bcd_device >= self.minimum:
            return None
        why = f" ({self.note})" if self.note else ""
        return (
            f"{self.reader} firmware {format_bcd(bcd_device)} is known to be broken{why}; "
            f"upgrade the reader firmware to {format_bcd(self.minimum)} or later, or use "
            "another reader"
        )


register(
    ForceExchangeLevel(
        "force-extended-apdu",
        ExchangeLevel.EXTENDED_APDU,
        "the firmware chains long APDUs (extended APDU level) whatever the descriptor says",
    )
)
register(
    ForceExchangeLevel(
        "force-short-apdu",
        ExchangeLevel.SHORT_APDU,
        "the descriptor claims extended APDUs the firmware does not handle: short APDU level",
    )
)
register(
    ShortAPDUIsChained(
        "iccd-b-extended-apdu",
        "ICCD version B token declaring short APDU level: driven at extended APDU level, as "
        "ICCD-B tokens chain responses",
    )
)
register(
    ShortAPDUIsChained(
        "short-apdu-chaining",
        "the firmware declares short APDU level but returns long T=1 responses in chained "
        "128-byte parts: driven at extended APDU level",
    )
)
register(NoPinpad())
register(
    SlowOpen(
        "slow-open-x4",
        4.0,
        "answers the first commands after plug-in late (about 350 ms): open timeouts x4",
    )
)
register(
    SlowOpen(
        "slow-open-x10",
        10.0,
        "answers GetSlotStatus only after up to 1 s when no tag is present: open timeouts x10",
    )
)
register(
    SlowOpen(
        "slow-open-x20",
        20.0,
        "the firmware needs about a second to initialise after plug-in: open timeouts x20",
    )
)
register(OpenPGPCardBWI())
