"""The database's value classes: ``ReaderEntry``, ``SupportAnswer``, ``ListedLine``.

Hand-written frozen slotted classes that behave as ``@dataclass(frozen=True, slots=True)``
(``dataclasses.fields``, ``asdict``, ``replace``, copy, pickle and ``match`` all work):
importing ``dataclasses`` costs more than a whole cold lookup. The capability flags of a
``ReaderEntry`` are built from ``ccid.constants`` on first access, for the same reason.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    # Type checkers see the value classes as frozen dataclasses (read-only fields); at run
    # time they are the hand-written _Frozen classes (see the module docstring).
    from dataclasses import dataclass as _frozen_for_type_checkers

    from ccid.constants import ExchangeLevel, Features, PINSupport, Protocols, Voltage
    from ccid.descriptor import CCIDDescriptor
else:

    def _frozen_for_type_checkers(**_: object) -> Callable[[type[Any]], type[Any]]:
        return lambda cls: cls


# the YAML spellings of the capability flags (their values: _flag_tables)
_LEVEL_NAMES = ("character", "tpdu", "short_apdu", "extended_apdu")
_PROTOCOL_NAMES = ("T=0", "T=1")
_VOLTAGE_NAMES = ("5.0V", "3.0V", "1.8V")
_PIN_NAMES = ("verify", "modify")


def _key(vid: int, pid: int) -> str:
    return f"{vid:04X}:{pid:04X}"



class SupportStatus(enum.Enum):
    """How well a reader is expected to work."""

    __module__ = "ccid.database"  # its public home: pickles and help() name it

    SUPPORTED = "supported"
    SHOULD_WORK = "should_work"
    KNOWN_PROBLEMS = "known_problems"
    DISABLED = "disabled"
    UNLISTED_CLASS_COMPLIANT = "unlisted_class_compliant"
    UNKNOWN = "unknown"


_SECTION_STATUS = {
    "supported": SupportStatus.SUPPORTED,
    "shouldwork": SupportStatus.SHOULD_WORK,
    "unsupported": SupportStatus.KNOWN_PROBLEMS,
    "disabled": SupportStatus.DISABLED,
}


class _DataclassFields:
    """``__dataclass_fields__`` made on first use, from a twin dataclass.

    So ``dataclasses.fields()``, ``asdict()``, ``replace()`` and ``is_dataclass()`` work on
    the value classes as they did when these were dataclasses, while the lookup path never
    imports ``dataclasses``.
    """

    def __get__(self, instance: object, owner: type[_Frozen]) -> dict[str, Any]:
        made = owner.__dict__.get("_dataclass_twin_fields")
        if made is None:
            from dataclasses import make_dataclass

            twin = make_dataclass(owner.__name__, [(name, Any) for name in owner._fields])
            made = twin.__dataclass_fields__  # type: ignore[attr-defined]
            owner._dataclass_twin_fields = made
        return made  # type: ignore[no-any-return]


class _Frozen:
    """Base of the value classes: behaves as a ``@dataclass(frozen=True, slots=True)``.

    Equality and hash compare the fields (``_fields``, in constructor order), the repr lists
    them, assignment raises ``dataclasses.FrozenInstanceError``, copies and pickles rebuild
    through the constructor. Written by hand because importing ``dataclasses`` costs more
    than a whole cold lookup.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _dataclass_twin_fields: ClassVar[dict[str, Any] | None] = None
    __dataclass_fields__: ClassVar[Any] = _DataclassFields()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            assert isinstance(other, _Frozen)
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({fields})"

    def __setattr__(self, name: str, value: Any) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, self._values())


@_frozen_for_type_checkers(frozen=True, init=False, repr=False, eq=False)
class ListedLine(_Frozen):
    """One line of libccid's supported_readers.txt."""

    __module__ = "ccid.database"  # its public home: pickles and help() name it

    _fields = ("line", "section", "vid", "pid", "vendor", "name", "dump")
    __slots__ = _fields
    if not TYPE_CHECKING:
        __match_args__ = _fields

    line: int
    section: str
    vid: int
    pid: int
    vendor: str | None
    name: str
    dump: str | None

    def __init__(
        self,
        line: int,
        section: str,
        vid: int,
        pid: int,
        vendor: str | None,
        name: str,
        dump: str | None = None,
    ) -> None:
        values = locals()
        for field in self._fields:
            object.__setattr__(self, field, values[field])


# ReaderEntry fields built from ccid.constants on first access (see _resolve_flags)
_FLAG_FIELDS = ("exchange_level", "protocols", "voltages", "pin_support", "features")


@_frozen_for_type_checkers(frozen=True, init=False, repr=False, eq=False)
class ReaderEntry(_Frozen):
    """A listed reader: libccid's verdict, and what its descriptor dump says it can do.

    The capability fields are None (or empty) when libccid has no dump for the reader or
    none for the interface asked for.
    """

    __module__ = "ccid.database"  # its public home: pickles and help() name it

    _fields = (
        "vid", "pid", "name", "vendor", "section", "line", "aliases", "note", "quirks",
        "min_firmware", "dump", "bcd_device", "manufacturer", "product", "interface_count",
        "interface_numbers", "interface_names", "interface_class", "interface_subclass",
        "interface_protocol", "has_interrupt", "ccid_version", "exchange_level", "protocols",
        "voltages", "slots", "max_message_length", "max_ifsd", "pin_support", "lcd_layout",
        "features", "default_clock_khz", "max_clock_khz", "clocks_khz", "default_data_rate",
        "max_data_rate", "data_rates", "raw_descriptor",
    )
    if not TYPE_CHECKING:
        __match_args__ = _fields
    # the flag fields live in private slots behind properties; _raw_flags holds the YAML
    # interface group they are built from until the first access
    __slots__ = (
        *(f"_{name}" if name in _FLAG_FIELDS else name for name in _fields), "_raw_flags"
    )
    _slot_of: ClassVar[tuple[tuple[str, str], ...]] = tuple(
        (name, f"_{name}" if name in _FLAG_FIELDS else name) for name in _fields
    )

    vid: int
    pid: int
    name: str
    vendor: str | None
    #: libccid section of the main line: supported, shouldwork, unsupported, disabled.
    section: str
    line: int
    #: Other names libccid lists for this VID:PID.
    aliases: tuple[str, ...]
    note: str | None
    #: Ids of the quirks matching this VID:PID (and the bcdDevice / interface asked for);
    #: quirks depending on the card come from ``quirks_for(..., atr=...)``.
    quirks: tuple[str, ...]
    min_firmware: int | None
    dump: str | None
    bcd_device: int | None
    manufacturer: str | None
    product: str | None
    interface_count: int | None
    interface_numbers: tuple[int, ...]
    interface_names: tuple[str | None, ...]
    interface_class: int | None
    interface_subclass: int | None
    interface_protocol: int | None
    has_interrupt: bool | None
    ccid_version: str | None
    slots: int | None
    max_message_length: int | None
    max_ifsd: int | None
    lcd_layout: tuple[int, int] | None
    default_clock_khz: int | None
    max_clock_khz: int | None
    clocks_khz: tuple[int, ...]
    default_data_rate: int | None
    max_data_rate: int | None
    data_rates: tuple[int, ...]
    raw_descriptor: bytes | None
    _exchange_level: ExchangeLevel | None
    _protocols: Protocols | None
    _voltages: Voltage | None
    _pin_support: PINSupport | None
    _features: Features | None
    _raw_flags: Mapping[str, Any] | None

    def __init__(
        self,
        vid: int,
        pid: int,
        name: str,
        vendor: str | None,
        section: str,
        line: int,
        aliases: tuple[str, ...],
        note: str | None,
        quirks: tuple[str, ...],
        min_firmware: int | None,
        dump: str | None = None,
        bcd_device: int | None = None,
        manufacturer: str | None = None,
        product: str | None = None,
        interface_count: int | None = None,
        interface_numbers: tuple[int, ...] = (),
        interface_names: tuple[str | None, ...] = (),
        interface_class: int | None = None,
        interface_subclass: int | None = None,
        interface_protocol: int | None = None,
        has_interrupt: bool | None = None,
        ccid_version: str | None = None,
        exchange_level: ExchangeLevel | None = None,
        protocols: Protocols | None = None,
        voltages: Voltage | None = None,
        slots: int | None = None,
        max_message_length: int | None = None,
        max_ifsd: int | None = None,
        pin_support: PINSupport | None = None,
        lcd_layout: tuple[int, int] | None = None,
        features: Features | None = None,
        default_clock_khz: int | None = None,
        max_clock_khz: int | None = None,
        clocks_khz: tuple[int, ...] = (),
        default_data_rate: int | None = None,
        max_data_rate: int | None = None,
        data_rates: tuple[int, ...] = (),
        raw_descriptor: bytes | None = None,
    ) -> None:
        values = locals()
        for field, slot in self._slot_of:
            object.__setattr__(self, slot, values[field])
        object.__setattr__(self, "_raw_flags", None)

    def _resolve_flags(self) -> None:
        group = self._raw_flags
        if group is None:
            return
        levels, protocols, voltages, pins, constants = _flag_tables()
        set_ = object.__setattr__
        set_(self, "_exchange_level", levels[group["exchange_level"]])
        set_(self, "_protocols", _flags(group["protocols"], protocols, constants.Protocols.NONE))
        set_(self, "_voltages", _flags(group["voltages"], voltages, constants.Voltage.NONE))
        set_(self, "_pin_support", _flags(group["pin"], pins, constants.PINSupport.NONE))
        set_(self, "_features", constants.Features(group["features"]))
        set_(self, "_raw_flags", None)

    @property
    def exchange_level(self) -> ExchangeLevel | None:
        if self._raw_flags is not None:
            self._resolve_flags()
        return self._exchange_level

    @property
    def protocols(self) -> Protocols | None:
        if self._raw_flags is not None:
            self._resolve_flags()
        return self._protocols

    @property
    def voltages(self) -> Voltage | None:
        if self._raw_flags is not None:
            self._resolve_flags()
        return self._voltages

    @property
    def pin_support(self) -> PINSupport | None:
        if self._raw_flags is not None:
            self._resolve_flags()
        return self._pin_support

    @property
    def features(self) -> Features | None:
        if self._raw_flags is not None:
            self._resolve_flags()
        return self._features

    @property
    def id(self) -> str:
        """'VVVV:PPPP'."""
        return _key(self.vid, self.pid)

    @property
    def status(self) -> SupportStatus:
        """libccid's verdict as a status (firmware not considered: see support_status)."""
        return _SECTION_STATUS[self.section]

    @property
    def supported(self) -> bool:
        """Listed as supported or should-work."""
        return self.section in ("supported", "shouldwork")

    def descriptor(self) -> CCIDDescriptor | None:
        """The dumped class descriptor, parsed (before any quirk)."""
        if self.raw_descriptor is None:
            return None
        # imported here: lookups do not need the descriptor module (cold-start cost)
        from ccid.descriptor import parse_ccid_descriptor

        return parse_ccid_descriptor(self.raw_descriptor)


_FLAG_TABLES: tuple[Any, ...] | None = None


def _flag_tables() -> tuple[Any, ...]:
    """YAML spelling -> flag, for levels, protocols, voltages, PIN; and ccid.constants."""
    global _FLAG_TABLES
    if _FLAG_TABLES is None:
        from ccid import constants as c

        _FLAG_TABLES = (
            dict(zip(_LEVEL_NAMES, (c.ExchangeLevel.CHARACTER, c.ExchangeLevel.TPDU,
                                    c.ExchangeLevel.SHORT_APDU, c.ExchangeLevel.EXTENDED_APDU))),
            dict(zip(_PROTOCOL_NAMES, (c.Protocols.T0, c.Protocols.T1))),
            dict(zip(_VOLTAGE_NAMES, (c.Voltage.V5_0, c.Voltage.V3_0, c.Voltage.V1_8))),
            dict(zip(_PIN_NAMES, (c.PINSupport.VERIFY, c.PINSupport.MODIFY))),
            c,
        )
    return _FLAG_TABLES


@_frozen_for_type_checkers(frozen=True, init=False, repr=False, eq=False)
class SupportAnswer(_Frozen):
    """The answer to "is my reader supported?"."""

    __module__ = "ccid.database"  # its public home: pickles and help() name it

    _fields = ("status", "vid", "pid", "entry", "reason")
    __slots__ = _fields
    if not TYPE_CHECKING:
        __match_args__ = _fields

    status: SupportStatus
    vid: int
    pid: int
    entry: ReaderEntry | None
    reason: str | None

    def __init__(
        self,
        status: SupportStatus,
        vid: int,
        pid: int,
        entry: ReaderEntry | None,
        reason: str | None,
    ) -> None:
        values = locals()
        for field in self._fields:
            object.__setattr__(self, field, values[field])

    @property
    def name(self) -> str | None:
        return None if self.entry is None else self.entry.name

    @property
    def message(self) -> str:
        """One readable sentence."""
        who = f"{_key(self.vid, self.pid)}" + (f" ({self.name})" if self.name else "")
        text = {
            SupportStatus.SUPPORTED: "is supported",
            SupportStatus.SHOULD_WORK: "should work (listed by libccid, not tested by it)",
            SupportStatus.KNOWN_PROBLEMS: "has known problems",
            SupportStatus.DISABLED: "is disabled in libccid's list",
            SupportStatus.UNLISTED_CLASS_COMPLIANT: (
                "is not listed, but declares the CCID class: ccid opens it anyway "
                "(libccid would refuse it)"
            ),
            SupportStatus.UNKNOWN: "is not listed",
        }[self.status]
        return f"{who} {text}" + (f": {self.reason}" if self.reason else "")

    def __str__(self) -> str:
        return self.message



def _flags(names: Iterable[str], table: Mapping[str, Any], empty: Any) -> Any:
    value = empty
    for name in names:
        value |= table[name]
    return value

