"""SafeNet / Aladdin eToken (VID 0529)."""

from __future__ import annotations

from dataclasses import replace

from ccid.constants import Features
from ccid.descriptor import CCIDDescriptor
from ccid.quirks import Quirk, register

__all__: list[str] = []


class NoIFSDNegotiation(Quirk):
    id = "etoken-no-ifsd"
    description = (
        "SafeNet eToken 5100/5110 (firmware 0.12, 0.13): the token breaks on the T=1 IFSD "
        "request; it is not sent (the reader is treated as doing automatic IFSD)"
    )

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        return replace(desc, dwFeatures=desc.dwFeatures | int(Features.AUTO_IFSD))

    def negotiate_ifsd(self, default: bool) -> bool:
        return False


register(NoIFSDNegotiation())
