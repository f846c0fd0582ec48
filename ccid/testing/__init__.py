"""Virtual CCID readers and smart cards behind a pyusb backend: test without hardware.

    from ccid.testing import preset
    backend = preset("gemalto-pc-twin")          # a reader with a card in it
    dev = usb.core.find(backend=backend)         # plain pyusb sees a real-looking device

Names are loaded on first use, so ``import ccid.testing`` stays cheap and the reader side
works even where the card modules are not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "VirtualBackend": "ccid.testing.backend",
    "VirtualDevice": "ccid.testing.backend",
    "VirtualReader": "ccid.testing.reader",
    "PinEntry": "ccid.testing.reader",
    "PRESETS": "ccid.testing.presets",
    "preset": "ccid.testing.presets",
    "preset_reader": "ccid.testing.presets",
    "VirtualCard": "ccid.testing.card",
    "CardFaults": "ccid.testing.card",
}
_FAULTS = (
    "BadLength", "CardRemoved", "ChainByte", "ClaimedElsewhere", "Fault", "Garbage",
    "NoAnswer", "PinCancelled", "PinTimeout", "Refuse", "RefuseUntilEscape", "SlowCard",
    "StaleFrame", "Stall", "TimeExtension", "Truncate", "Unplug", "WrongSeq", "WrongSlot",
    "WrongType",
)
_LAZY.update({name: "ccid.testing.faults" for name in _FAULTS})
_APPS_MODULE = "ccid.testing.apps"

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # The card helper's application classes, whatever their names.
        try:
            apps = importlib.import_module(_APPS_MODULE)
        except ImportError:
            apps = None
        if apps is not None and name in getattr(apps, "__all__", ()):
            return getattr(apps, name)
        raise AttributeError(f"module 'ccid.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
