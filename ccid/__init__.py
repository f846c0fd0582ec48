"""ccid: drive USB CCID smart-card readers in-process, without pcscd.

``import ccid`` does no I/O and loads no YAML: the public names below are
imported on first use (PEP 562), so start-up stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "list_readers": "ccid.reader",
    "open_reader": "ccid.reader",
    "Reader": "ccid.reader",
    "Card": "ccid.reader",
    "ReaderInfo": "ccid.reader",
    "watch": "ccid.events",
    "parse_atr": "ccid.protocol.atr",
    "ATR": "ccid.protocol.atr",
    "lookup": "ccid.database",
    "is_supported": "ccid.database",
    "support_status": "ccid.database",
    "parse_vid_pid": "ccid.database",
    "CardError": "ccid.errors",
    "CCIDError": "ccid.errors",
    "StatusWordError": "ccid.errors",
    "UsageError": "ccid.errors",
}

# submodules reachable as attributes after a bare `import ccid` (ccid.trace.enable(...))
_SUBMODULES = ("errors", "trace", "testing", "database", "events", "sw")

__all__ = [
    "ATR", "CCIDError", "Card", "CardError", "Reader", "ReaderInfo", "StatusWordError",
    "UsageError", "__version__", "database", "errors", "events", "is_supported",
    "list_readers", "lookup", "open_reader", "parse_atr", "parse_vid_pid", "support_status",
    "sw", "testing", "trace", "watch",
]

if TYPE_CHECKING:  # pragma: no cover
    from ccid import database, errors, events, sw, testing, trace


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"ccid.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ccid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
