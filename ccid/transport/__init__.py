"""Transports: how CCID frames reach a reader. Only USB (through pyusb) for now."""

from __future__ import annotations

__all__ = ["usb"]
