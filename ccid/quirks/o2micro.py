"""O2Micro OZ776 (0B97:7762, 0B97:7772).

Its class descriptor sits after the last endpoint (``ccid.descriptor.locate_ccid_descriptor``
finds it there); it cannot go faster than 9600 bps and does not handle PPS.
"""

from __future__ import annotations

from dataclasses import replace

from ccid.descriptor import CCIDDescriptor
from ccid.quirks import Quirk, register

__all__ = ["OZ776_MAX_DATA_RATE"]

OZ776_MAX_DATA_RATE = 9600


class OZ776(Quirk):
    id = "oz776-9600-no-pps"
    description = (
        "O2Micro OZ776: at most 9600 bps and no PPS exchange (the card's default protocol "
        "is used)"
    )

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        return replace(desc, dwMaxDataRate=min(desc.dwMaxDataRate, OZ776_MAX_DATA_RATE))

    def adjust_data_rates(self, rates: tuple[int, ...], *, slot: int = 0) -> tuple[int, ...]:
        return tuple(r for r in rates if r <= OZ776_MAX_DATA_RATE)

    def max_data_rate(self, default: int, *, slot: int = 0) -> int:
        return min(default, OZ776_MAX_DATA_RATE)

    def skip_pps(self, default: bool) -> bool:
        return True


register(OZ776())
