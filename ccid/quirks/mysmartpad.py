"""MySmartPad (09BE:0002)."""

from __future__ import annotations

from dataclasses import replace

from ccid.descriptor import CCIDDescriptor
from ccid.quirks import Quirk, register

__all__: list[str] = []

MYSMARTPAD_MAX_IFSD = 254


class MaxIFSD254(Quirk):
    id = "mysmartpad-ifsd-254"
    description = "MySmartPad: the descriptor's dwMaxIFSD is wrong; 254 is used"

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        return replace(desc, dwMaxIFSD=MYSMARTPAD_MAX_IFSD)


register(MaxIFSD254())
