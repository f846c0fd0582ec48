"""SCM Microsystems / Identiv readers (VID 04E6) and others built on the same chips."""

from __future__ import annotations

from dataclasses import replace

from ccid.descriptor import CCIDDescriptor
from ccid.quirks import Quirk, register

__all__ = ["BOGUS_MAX_MESSAGE_LENGTH", "FIXED_MAX_MESSAGE_LENGTH"]

#: Value some SCM firmware declares for dwMaxCCIDMessageLength: 7 bytes short of a full
#: short APDU (10-byte header + 5-byte command header + 255 data bytes = 270).
BOGUS_MAX_MESSAGE_LENGTH = 263
#: What correct firmware of the same family declares.
FIXED_MAX_MESSAGE_LENGTH = 271


class MaxMessageLength263(Quirk):
    id = "scm-max-message-263"
    description = (
        "declares dwMaxCCIDMessageLength 263, which would refuse full-length short APDUs "
        "the reader actually accepts: taken as 271"
    )

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        if desc.dwMaxCCIDMessageLength == BOGUS_MAX_MESSAGE_LENGTH:
            return replace(desc, dwMaxCCIDMessageLength=FIXED_MAX_MESSAGE_LENGTH)
        return desc


register(MaxMessageLength263())
