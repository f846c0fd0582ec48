"""Alcor Micro readers (VID 058F)."""

from __future__ import annotations

from dataclasses import replace

from ccid.descriptor import CCIDDescriptor
from ccid.quirks import Quirk, register

__all__ = ["AU9540_MAX_DATA_RATE"]

AU9540_MAX_DATA_RATE = 200000


class AU9540(Quirk):
    id = "au9540-rates"
    description = (
        "Alcor Micro AU9540: data rates above 200000 bps fail and SetParameters may be "
        "refused; faster rates are dropped and a SetParameters failure is not fatal"
    )

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        return replace(desc, dwMaxDataRate=min(desc.dwMaxDataRate, AU9540_MAX_DATA_RATE))

    def adjust_data_rates(self, rates: tuple[int, ...], *, slot: int = 0) -> tuple[int, ...]:
        return tuple(r for r in rates if r <= AU9540_MAX_DATA_RATE)

    def max_data_rate(self, default: int, *, slot: int = 0) -> int:
        return min(default, AU9540_MAX_DATA_RATE)

    def tolerate_set_parameters_failure(self) -> bool:
        return True


register(AU9540())
