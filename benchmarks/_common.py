"""What the benchmark scripts share: the machine line they print first, and a virtual
reader's bulk endpoints claimed through plain pyusb (the bare loops the library is
measured against)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import usb.core
import usb.util


def machine() -> str:
    """CPU count and model, Python version and implementation, OS and architecture."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "?"
    return (f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()} "
            f"({platform.python_implementation()}) on {platform.system()} "
            f"{platform.machine()}")


def bulk_endpoints(backend: Any) -> tuple[Any, Any, Any]:
    """(device, bulk-OUT, bulk-IN) of the backend's first reader, configured and claimed."""
    dev = usb.core.find(backend=backend)
    dev.set_configuration()
    intf = dev.get_active_configuration()[(0, 0)]
    usb.util.claim_interface(dev, intf.bInterfaceNumber)
    eps = list(intf)
    out = next(e for e in eps if not e.bEndpointAddress & 0x80)
    inp = next(e for e in eps if e.bEndpointAddress & 0x80 and e.bmAttributes == 2)
    return dev, out, inp
