"""What reader firmware gets wrong, as small named objects with hooks.

``readers.yaml`` says which quirk ids apply to which readers (VID:PID, optionally a
bcdDevice range, an interface number or protocol, a card ATR); ``ccid.database.quirks_for``
returns the matching objects. The reader layer calls the hooks at fixed points:

* open: ``check_firmware`` (refuse known-bad firmware), ``adjust_descriptor``,
  ``adjust_data_rates`` / ``max_data_rate`` (per slot), ``open_timeout`` (timeouts while
  opening only, restored afterwards), then ``after_open`` (extra escapes; may warn, never
  fails the open);
* power-on: ``before_power_on``, and ``retry_power_on`` when IccPowerOn fails (retry once);
* protocol set-up: ``skip_pps``, ``negotiate_ifsd``, ``adjust_bwi``, ``extra_card_time``,
  ``tolerate_set_parameters_failure``;
* PIN: ``adjust_pin_structure``.

Every hook's default leaves the value alone, so the reader layer can call all hooks of all
matching quirks in order. Quirks that depend on the card (ATR) are returned by
``quirks_for(..., atr=...)`` only.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Protocol

from ccid.descriptor import CCIDDescriptor
from ccid.errors import UsageError

__all__ = [
    "QUIRKS",
    "Quirk",
    "QuirkContext",
    "format_bcd",
    "get_quirk",
    "register",
]


class QuirkContext(Protocol):
    """What a quirk may use of an opened reader (implemented by the reader layer)."""

    reader_name: str
    vid: int
    pid: int
    bcd_device: int
    interface: int
    #: Results of quirks (e.g. ``gemalto.firmware_features``), readable by the reader layer.
    state: MutableMapping[str, object]

    def escape(self, data: bytes, timeout: float) -> bytes:
        """Send PC_to_RDR_Escape; raise ReaderTimeoutError when the reader does not answer."""
        ...

    def warn(self, message: str) -> None:
        """Report something the user should know (the open goes on)."""
        ...


def format_bcd(value: int) -> str:
    """bcdDevice as libccid and vendors print it: 0x0516 -> '5.16'."""
    return f"{value >> 8:X}.{value & 0xFF:02X}"


class Quirk:
    """One firmware problem and its workaround. Subclasses override the hooks they need."""

    id: str = ""
    description: str = ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r}>"

    def adjust_descriptor(self, desc: CCIDDescriptor) -> CCIDDescriptor:
        """Fix what the class descriptor claims."""
        return desc

    def adjust_data_rates(self, rates: tuple[int, ...], *, slot: int = 0) -> tuple[int, ...]:
        """Fix the GET_DATA_RATES list (per slot: some secondary slots are slower)."""
        return rates

    def open_timeout(self, default: float) -> float:
        """Timeout for commands sent while opening (slow readers need more)."""
        return default

    def after_open(self, ctx: QuirkContext) -> None:
        """Extra steps once the reader answers (escapes); failures only warn."""

    def before_power_on(self, ctx: QuirkContext) -> None:
        """Steps before each IccPowerOn."""

    def retry_power_on(self, ctx: QuirkContext, bError: int) -> bool:
        """IccPowerOn failed with bError: return True to retry once (after a fix)."""
        return False

    def tolerate_set_parameters_failure(self) -> bool:
        """True: a failed SetParameters is not fatal (the reader keeps its defaults)."""
        return False

    def negotiate_ifsd(self, default: bool) -> bool:
        """Whether to send the T=1 IFSD request."""
        return default

    def max_data_rate(self, default: int, *, slot: int = 0) -> int:
        """Highest data rate to negotiate, in bps."""
        return default

    def skip_pps(self, default: bool) -> bool:
        """True: never send a PPS (use the card's default protocol and speed)."""
        return default

    def adjust_pin_structure(self, structure: bytes) -> bytes:
        """Fix a PIN verify/modify structure before it goes to the reader."""
        return structure

    def extra_card_time(self, atr: bytes) -> float:
        """Seconds added to the T=1 / BWT-based timeout (slow on-card operations)."""
        return 0.0

    def adjust_bwi(self, bwi: int, atr: bytes) -> int:
        """The T=1 BWI to put in SetParameters."""
        return bwi

    def check_firmware(self, bcd_device: int) -> str | None:
        """A reason to refuse this firmware, or None."""
        return None


#: Every registered quirk by id (parameterised ones such as ``minimum-firmware`` are
#: built by the database from its data and are not listed here).
QUIRKS: dict[str, Quirk] = {}


def register(quirk: Quirk) -> Quirk:
    """Add a quirk instance to the registry (ids are unique)."""
    if not quirk.id or not quirk.description:
        raise ValueError(f"quirk {quirk!r} needs an id and a description")
    if quirk.id in QUIRKS:
        raise ValueError(f"quirk id {quirk.id!r} registered twice")
    QUIRKS[quirk.id] = quirk
    return quirk


def get_quirk(quirk_id: str) -> Quirk:
    """The registered quirk with this id; UsageError naming the known ids otherwise."""
    try:
        return QUIRKS[quirk_id]
    except KeyError:
        known = ", ".join(sorted(QUIRKS))
        raise UsageError(f"unknown quirk id {quirk_id!r} (known: {known})") from None


# The vendor modules register their quirks on import.
from ccid.quirks import alcor as alcor  # noqa: E402
from ccid.quirks import gemalto as gemalto  # noqa: E402
from ccid.quirks import generic as generic  # noqa: E402
from ccid.quirks import mysmartpad as mysmartpad  # noqa: E402
from ccid.quirks import o2micro as o2micro  # noqa: E402
from ccid.quirks import safenet as safenet  # noqa: E402
from ccid.quirks import scm as scm  # noqa: E402
