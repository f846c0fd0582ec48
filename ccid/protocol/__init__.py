"""Sans-IO smart-card protocol layers: ATR, PPS and parameters, T=0, T=1.

Nothing here touches USB: functions take bytes and return bytes, structures or events.
"""

from __future__ import annotations

__all__ = ["atr", "params", "t0", "t1"]
