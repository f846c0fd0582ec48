"""The supported-reader database: ``ccid/readers.yaml`` (plus a compiled cache).

Answers "is my reader supported?", "what can it do?" and "what does its firmware get wrong?".

``readers.yaml`` has a generated part (``tools/gen_readers.py``, from libccid's list and
descriptor dumps) and a hand-written part after a marker line, which the generator keeps:

``lines``
    every line of libccid's ``supported_readers.txt``: ``line``, ``section`` (supported,
    shouldwork, unsupported, disabled, duplicates), ``vid``, ``pid``, ``vendor``, ``name``,
    and for duplicates the ``dump`` file the line describes.
``devices``
    ``"VVVV:PPPP"`` -> descriptor dumps (best match for the listed name first): ``dump``,
    ``bcd_device``, ``manufacturer``, ``product``, ``interface_count`` and ``interfaces``:
    one item per distinct CCID interface (``numbers``/``names`` list the USB interfaces
    sharing it) with ``class``, ``subclass``, ``interface_protocol``, ``endpoints``,
    ``interrupt``, ``ccid_version``, ``exchange_level``, ``protocols``, ``voltages``,
    ``slots``, ``max_message_length``, ``max_ifsd``, ``pin``, ``lcd``, ``features``,
    clocks and data rates (as dumped; ``*_error`` when the request failed) and the raw
    54-byte class ``descriptor`` in hex.
``rules`` (hand-written)
    ``quirks: [ids]``, ``match: [conditions]``, optional ``note``. A condition has any of
    ``vid``, ``pid`` (needs ``vid``), ``bcd_device: {min, max}`` (inclusive),
    ``interface``, ``interface_protocol``, ``atr`` and ``atr_mask`` (hex). A rule applies
    when any condition holds; a condition on a value the caller did not give never holds.
``minimum_firmware`` (hand-written)
    ``vid``, ``pid``, ``bcd_device`` (the first good firmware), ``name``, optional ``note``.
``notes`` (hand-written)
    ``"VVVV:PPPP"`` -> text shown with the support answer (why a reader has problems).

Loading: ``import ccid`` loads nothing. The first query reads the compiled cache
(``readers.cache``, valid only for the exact bytes of ``readers.yaml``: a hash check)
and decodes single readers on demand; without a valid cache the YAML is parsed with
pyyaml's C safe loader and validated against the schema above. Later queries are
dictionary lookups.

Cold-start budget: a first lookup must cost a few milliseconds, so the lookup path imports
none of ``dataclasses`` (it pulls in ``inspect``), ``json`` (``re``), ``ccid.constants``
(its IntFlag classes are slow to build) or ``ccid.errors``. Hence the hand-written frozen
value classes (``entries``), the JSON cache read with the C scanner alone, the capability flags
built on first access, and the exceptions imported where they are raised.
``tests/test_database_imports.py`` keeps it so.

The rooms: ``entries`` (the value classes), ``cache`` (writing and reading
``readers.cache``), ``lookups`` (``Database``, the rules' conditions, id parsing,
``load_database``), ``schema`` (the YAML, off the lookup path). This module holds the
packaged default database and the functions that query it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccid.database.cache import _json_loads as _json_loads
from ccid.database.cache import render_cache
from ccid.database.entries import ListedLine, ReaderEntry, SupportAnswer, SupportStatus
from ccid.database.lookups import (
    CACHE_PATH,
    YAML_PATH,
    Database,
    load_database,
    parse_vid_pid,
)

if TYPE_CHECKING:  # pragma: no cover
    from ccid.database.schema import parse_yaml
    from ccid.quirks import Quirk

__all__ = [
    "CACHE_PATH",
    "YAML_PATH",
    "Database",
    "ListedLine",
    "ReaderEntry",
    "SupportAnswer",
    "SupportStatus",
    "all_entries",
    "check_firmware",
    "default_database",
    "descriptor_bytes",
    "find_by_name",
    "is_supported",
    "load_database",
    "lookup",
    "min_firmware",
    "parse_vid_pid",
    "parse_yaml",
    "quirks_for",
    "render_cache",
    "support_status",
    "use_database",
]


def __getattr__(name: str) -> object:
    # The schema module is loaded on first use only: a lookup never needs it.
    if name == "parse_yaml":
        from ccid.database.schema import parse_yaml

        return parse_yaml
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_DEFAULT: Database | None = None


def default_database() -> Database:
    """The packaged database, loaded on first use.

    Two threads racing on the first load may both load it; one result wins and both are
    equal, so no lock (threading's import would cost more than it saves).
    """
    global _DEFAULT
    db = _DEFAULT
    if db is None:
        db = _DEFAULT = load_database()
    return db


def use_database(db: Database | None) -> None:
    """Make ``db`` the database behind the module functions (None: the packaged one)."""
    global _DEFAULT
    _DEFAULT = db


def lookup(
    vid: int | str,
    pid: int | None = None,
    bcd_device: int | None = None,
    interface: int | None = None,
) -> ReaderEntry | None:
    """The listed reader: ``lookup(0x08E6, 0x3478)`` or ``lookup("08E6:3478")``, or None."""
    return (_DEFAULT or default_database()).lookup(vid, pid, bcd_device, interface)


def is_supported(vid: int | str, pid: int | None = None) -> bool:
    """True when libccid lists the reader as supported or should-work."""
    return (_DEFAULT or default_database()).is_supported(vid, pid)


def support_status(
    vid: int | str,
    pid: int | None = None,
    *,
    bcd_device: int | None = None, interface_class: int | None = None
) -> SupportAnswer:
    """Supported / should work / known problems (why) / disabled / unlisted but compliant."""
    return (_DEFAULT or default_database()).support_status(
        vid, pid, bcd_device=bcd_device, interface_class=interface_class
    )


def find_by_name(pattern: str) -> list[ReaderEntry]:
    """Listed readers whose names match (substring, or glob with ``*?[``)."""
    return (_DEFAULT or default_database()).find_by_name(pattern)


def all_entries() -> list[ReaderEntry]:
    """One entry per listed VID:PID, in list order."""
    return (_DEFAULT or default_database()).all_entries()


def quirks_for(
    vid: int | str,
    pid: int | None = None,
    *,
    bcd_device: int | None = None,
    interface: int | None = None,
    interface_protocol: int | None = None,
    atr: bytes | None = None,
) -> list[Quirk]:
    """The quirks to apply to this reader (and card, with ``atr``), in order."""
    return (_DEFAULT or default_database()).quirks_for(
        vid, pid, bcd_device=bcd_device, interface=interface,
        interface_protocol=interface_protocol, atr=atr,
    )


def descriptor_bytes(
    vid: int | str, pid: int | None = None, interface: int | None = None
) -> bytes | None:
    """The dumped 54-byte class descriptor of a listed reader, or None."""
    return (_DEFAULT or default_database()).descriptor_bytes(vid, pid, interface)


def min_firmware(vid: int | str, pid: int | None = None) -> int | None:
    """The first good bcdDevice when older firmware is known to be broken, else None."""
    return (_DEFAULT or default_database()).min_firmware(vid, pid)


def check_firmware(
    vid: int | str,
    pid: int | None = None,
    bcd_device: int | None = None,
    *,
    allow_bad_firmware: bool = False,
    reader: str | None = None,
) -> str | None:
    """UnsupportedReaderError for known-bad firmware (the message names it and the fix)."""
    return (_DEFAULT or default_database()).check_firmware(
        vid, pid, bcd_device, allow_bad_firmware=allow_bad_firmware, reader=reader
    )
