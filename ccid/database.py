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
value classes below, the JSON cache read with the C scanner alone, the capability flags
built on first access, and the exceptions imported where they are raised.
``tests/test_database_imports.py`` keeps it so.
"""

from __future__ import annotations

import enum
import os
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    # Type checkers see the value classes as frozen dataclasses (read-only fields); at run
    # time they are the hand-written _Frozen classes (see the module docstring).
    from dataclasses import dataclass as _frozen_for_type_checkers
    from pathlib import Path

    import yaml

    from ccid.constants import ExchangeLevel, Features, PINSupport, Protocols, Voltage
    from ccid.descriptor import CCIDDescriptor
    from ccid.errors import DatabaseError
    from ccid.quirks import Quirk
else:

    def _frozen_for_type_checkers(**_: object) -> Callable[[type[Any]], type[Any]]:
        return lambda cls: cls


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

# os.path rather than pathlib: pathlib's import alone costs more than a cold lookup.
YAML_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "readers.yaml")
CACHE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "readers.cache")
_CACHE_FORMAT = "ccid-readers-cache/1"

SECTIONS = ("supported", "shouldwork", "unsupported", "disabled", "duplicates")
# the YAML spellings of the capability flags (their values: _flag_tables)
_LEVEL_NAMES = ("character", "tpdu", "short_apdu", "extended_apdu")
_PROTOCOL_NAMES = ("T=0", "T=1")
_VOLTAGE_NAMES = ("5.0V", "3.0V", "1.8V")
_PIN_NAMES = ("verify", "modify")
_HEX = frozenset("0123456789ABCDEF")


def _key(vid: int, pid: int) -> str:
    return f"{vid:04X}:{pid:04X}"


# --- public data types -------------------------------------------------------------------


class SupportStatus(enum.Enum):
    """How well a reader is expected to work."""

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


# --- YAML parsing and schema validation --------------------------------------------------


class _Schema:
    """Validates composed YAML nodes and turns them into plain Python values."""

    def __init__(self, filename: str) -> None:
        import yaml

        self.yaml = yaml
        self.filename = filename
        self.constructor = yaml.constructor.SafeConstructor()

    # errors name the file, the line (from the node's mark) and the entry
    def error(self, node: yaml.Node, where: str, message: str) -> DatabaseError:
        from ccid.errors import DatabaseError

        line = node.start_mark.line + 1
        return DatabaseError(f"{self.filename}:{line}: {where}: {message}")

    def scalar(self, node: yaml.Node, where: str, tag: str, what: str) -> Any:
        if not isinstance(node, self.yaml.ScalarNode) or node.tag != f"tag:yaml.org,2002:{tag}":
            found = self._kind(node)
            raise self.error(node, where, f"expected {what}, found {found}")
        return self.constructor.construct_object(node)

    def check_container(
        self, node: yaml.Node, where: str, kind: type[yaml.Node], tag: str, what: str
    ) -> None:
        if not isinstance(node, kind):
            raise self.error(node, where, f"expected {what}, found {self._kind(node)}")
        if node.tag != f"tag:yaml.org,2002:{tag}":
            # safe-loader semantics: explicit tags (!!python/...) are not data
            raise self.error(node, where, f"tag {node.tag!r} not allowed")

    def _kind(self, node: yaml.Node) -> str:
        if isinstance(node, self.yaml.MappingNode):
            return "a mapping"
        if isinstance(node, self.yaml.SequenceNode):
            return "a list"
        return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"

    def integer(self, node: yaml.Node, where: str, lo: int = 0, hi: int = 0xFFFFFFFF) -> int:
        value = self.scalar(node, where, "int", "an integer")
        if not lo <= value <= hi:
            raise self.error(node, where, f"{value} out of range {lo}..{hi}")
        return int(value)

    def u16(self, node: yaml.Node, where: str) -> int:
        return self.integer(node, where, 0, 0xFFFF)

    def u8(self, node: yaml.Node, where: str) -> int:
        return self.integer(node, where, 0, 0xFF)

    def text(self, node: yaml.Node, where: str) -> str:
        return str(self.scalar(node, where, "str", "a string"))

    def opt_text(self, node: yaml.Node, where: str) -> str | None:
        if isinstance(node, self.yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        return self.text(node, where)

    def boolean(self, node: yaml.Node, where: str) -> bool:
        return bool(self.scalar(node, where, "bool", "true or false"))

    def hexbytes(self, node: yaml.Node, where: str) -> str:
        value = self.text(node, where)
        try:
            bytes.fromhex(value)
        except ValueError:
            raise self.error(node, where, f"{value!r} is not hex bytes") from None
        return "".join(value.split()).lower()

    def choice(self, options: Iterable[str]) -> Callable[[yaml.Node, str], str]:
        allowed = tuple(options)

        def check(node: yaml.Node, where: str) -> str:
            value = self.text(node, where)
            if value not in allowed:
                raise self.error(node, where, f"{value!r} is not one of {', '.join(allowed)}")
            return value

        return check

    def seq(
        self, node: yaml.Node, where: str, item: Callable[[yaml.Node, str], Any]
    ) -> list[Any]:
        self.check_container(node, where, self.yaml.SequenceNode, "seq", "a list")
        return [item(child, f"{where}[{i}]") for i, child in enumerate(node.value)]

    def list_of(
        self, item: Callable[[yaml.Node, str], Any]
    ) -> Callable[[yaml.Node, str], list[Any]]:
        return lambda node, where: self.seq(node, where, item)

    def mapping(
        self,
        node: yaml.Node,
        where: str,
        fields: Mapping[str, tuple[Callable[[yaml.Node, str], Any], bool]],
    ) -> dict[str, Any]:
        self.check_container(node, where, self.yaml.MappingNode, "map", "a mapping")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.text(key_node, where)
            if key not in fields:
                known = ", ".join(fields)
                raise self.error(key_node, where, f"unknown key {key!r} (known: {known})")
            if key in out:
                raise self.error(key_node, where, f"key {key!r} given twice")
            out[key] = fields[key][0](value_node, f"{where}.{key}")
        missing = [k for k, (_, required) in fields.items() if required and k not in out]
        if missing:
            raise self.error(node, where, f"missing key(s): {', '.join(missing)}")
        return out

    def peek(self, node: yaml.Node, *keys: str) -> str:
        """A label for an entry from a few of its scalar values (for error messages)."""
        if not isinstance(node, self.yaml.MappingNode):
            return ""
        found = {
            k.value: v.value
            for k, v in node.value
            if isinstance(k, self.yaml.ScalarNode) and isinstance(v, self.yaml.ScalarNode)
        }
        parts = [f"{k} {found[k]}" for k in keys if k in found]
        return f" ({', '.join(parts)})" if parts else ""

    # --- the schema ----------------------------------------------------------------------

    def line(self, node: yaml.Node, where: str) -> dict[str, Any]:
        label = where + self.peek(node, "line", "vid", "pid", "name")
        return self.mapping(
            node,
            label,
            {
                "line": (self.integer, True),
                "section": (self.choice(SECTIONS), True),
                "vid": (self.u16, True),
                "pid": (self.u16, True),
                "vendor": (self.opt_text, True),
                "name": (self.text, True),
                "dump": (self.text, False),
            },
        )

    def interface(self, node: yaml.Node, where: str) -> dict[str, Any]:
        ints = self.list_of(self.integer)
        return self.mapping(
            node,
            where,
            {
                "numbers": (self.list_of(self.u8), True),
                "names": (self.list_of(self.opt_text), True),
                "class": (self.u8, True),
                "subclass": (self.u8, True),
                "interface_protocol": (self.u8, True),
                "endpoints": (self.u8, True),
                "interrupt": (self.boolean, True),
                "ccid_version": (self.text, True),
                "exchange_level": (self.choice(_LEVEL_NAMES), True),
                "protocols": (self.list_of(self.choice(_PROTOCOL_NAMES)), True),
                "voltages": (self.list_of(self.choice(_VOLTAGE_NAMES)), True),
                "slots": (self.integer, True),
                "max_message_length": (self.integer, True),
                "max_ifsd": (self.integer, True),
                "pin": (self.list_of(self.choice(_PIN_NAMES)), True),
                "lcd": (self.lcd, True),
                "features": (self.integer, True),
                "default_clock_khz": (self.integer, True),
                "max_clock_khz": (self.integer, True),
                "clocks_khz": (ints, True),
                "clocks_error": (self.text, False),
                "default_data_rate": (self.integer, True),
                "max_data_rate": (self.integer, True),
                "data_rates": (ints, True),
                "data_rates_error": (self.text, False),
                "descriptor": (self.descriptor, True),
            },
        )

    def lcd(self, node: yaml.Node, where: str) -> list[int] | None:
        if isinstance(node, self.yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        value = self.seq(node, where, self.u8)
        if len(value) != 2:
            raise self.error(node, where, "lcd is [lines, characters per line] or null")
        return value

    def descriptor(self, node: yaml.Node, where: str) -> str:
        from ccid.descriptor import parse_ccid_descriptor

        value = self.hexbytes(node, where)
        try:
            parse_ccid_descriptor(bytes.fromhex(value))
        except Exception as exc:  # DescriptorError: say where it came from
            raise self.error(node, where, str(exc)) from None
        return value

    def dump(self, node: yaml.Node, where: str) -> dict[str, Any]:
        label = where + self.peek(node, "dump")
        return self.mapping(
            node,
            label,
            {
                "dump": (self.text, True),
                "bcd_device": (self.u16, True),
                "manufacturer": (self.opt_text, True),
                "product": (self.opt_text, True),
                "interface_count": (self.integer, True),
                "interfaces": (self.list_of(self.interface), True),
            },
        )

    def devices(self, node: yaml.Node, where: str) -> dict[str, list[dict[str, Any]]]:
        self.check_container(node, where, self.yaml.MappingNode, "map", "a mapping")
        out: dict[str, list[dict[str, Any]]] = {}
        for key_node, value_node in node.value:
            key = self.vid_pid_key(key_node, where)
            if key in out:
                raise self.error(key_node, where, f"{key} given twice")
            out[key] = self.seq(value_node, f"{where}[{key}]", self.dump)
        return out

    def vid_pid_key(self, node: yaml.Node, where: str) -> str:
        key = self.text(node, where)
        if len(key) != 9 or key[4] != ":" or not _HEX.issuperset(key[:4] + key[5:]):
            raise self.error(node, where, f"{key!r} is not 'VVVV:PPPP' (uppercase hex)")
        return key

    def bcd_range(self, node: yaml.Node, where: str) -> dict[str, int]:
        value = self.mapping(node, where, {"min": (self.u16, False), "max": (self.u16, False)})
        if not value:
            raise self.error(node, where, "bcd_device needs min and/or max")
        if value.get("min", 0) > value.get("max", 0xFFFF):
            raise self.error(node, where, "bcd_device min is above max")
        return value

    def condition(self, node: yaml.Node, where: str) -> dict[str, Any]:
        value = self.mapping(
            node,
            where,
            {
                "vid": (self.u16, False),
                "pid": (self.u16, False),
                "bcd_device": (self.bcd_range, False),
                "interface": (self.u8, False),
                "interface_protocol": (self.u8, False),
                "atr": (self.hexbytes, False),
                "atr_mask": (self.hexbytes, False),
            },
        )
        if not value:
            raise self.error(node, where, "an empty condition would match every reader")
        if "pid" in value and "vid" not in value:
            raise self.error(node, where, "pid needs vid")
        if "atr_mask" in value:
            if "atr" not in value:
                raise self.error(node, where, "atr_mask needs atr")
            if len(value["atr_mask"]) != len(value["atr"]):
                raise self.error(node, where, "atr_mask and atr differ in length")
        return value

    def quirk_id(self, node: yaml.Node, where: str) -> str:
        from ccid.quirks import QUIRKS

        value = self.text(node, where)
        if value not in QUIRKS:
            known = ", ".join(sorted(QUIRKS))
            raise self.error(node, where, f"unknown quirk id {value!r} (known: {known})")
        return value

    def rule(self, node: yaml.Node, where: str) -> dict[str, Any]:
        value = self.mapping(
            node,
            where + self.peek(node, "note"),
            {
                "quirks": (self.list_of(self.quirk_id), True),
                "match": (self.list_of(self.condition), True),
                "note": (self.text, False),
            },
        )
        if not value["match"] or not value["quirks"]:
            raise self.error(node, where, "a rule needs at least one quirk and one condition")
        return value

    def firmware(self, node: yaml.Node, where: str) -> dict[str, Any]:
        return self.mapping(
            node,
            where + self.peek(node, "vid", "pid", "name"),
            {
                "vid": (self.u16, True),
                "pid": (self.u16, True),
                "bcd_device": (self.u16, True),
                "name": (self.text, True),
                "note": (self.text, False),
            },
        )

    def notes(self, node: yaml.Node, where: str) -> dict[str, str]:
        self.check_container(node, where, self.yaml.MappingNode, "map", "a mapping")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.vid_pid_key(key_node, where)
            if key in out:
                raise self.error(key_node, where, f"{key} given twice")
            out[key] = self.text(value_node, f"{where}[{key}]")
        return out

    def source(self, node: yaml.Node, where: str) -> dict[str, str]:
        return self.mapping(
            node,
            where,
            {
                "repository": (self.text, True),
                "commit": (self.text, True),
                "commit_date": (self.text, True),
                "release": (self.text, True),
            },
        )

    def top(self, node: yaml.Node) -> dict[str, Any]:
        value = self.mapping(
            node,
            "top level",
            {
                "schema": (self.integer, True),
                "source": (self.source, True),
                "lines": (self.list_of(self.line), True),
                "devices": (self.devices, True),
                "rules": (self.list_of(self.rule), True),
                "minimum_firmware": (self.list_of(self.firmware), True),
                "notes": (self.notes, True),
            },
        )
        if value["schema"] != 1:
            from ccid.errors import DatabaseError

            raise DatabaseError(f"{self.filename}: schema {value['schema']} not understood")
        return value


def parse_yaml(text: str, filename: str = "readers.yaml") -> dict[str, Any]:
    """Parse and validate a reader database; DatabaseError names the entry and line.

    Only plain data is built (safe loader semantics: no Python objects from YAML).
    """
    import yaml

    from ccid.errors import DatabaseError

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.compose(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DatabaseError(f"{filename}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise DatabaseError(f"{filename}: not valid YAML: {exc}") from None
    if node is None:
        raise DatabaseError(f"{filename}: empty database")
    _refuse_aliases(node, filename)
    return _Schema(filename).top(node)


def _refuse_aliases(root: yaml.Node, filename: str) -> None:
    """DatabaseError at the first node reached twice: an alias of an anchored node.

    The composer shares an aliased node instead of copying it, so nested aliases make a
    small file describe an exponentially large tree that validation would walk in full.
    Reader entries never need them; one pass over the distinct nodes finds them.
    """
    import yaml

    from ccid.errors import DatabaseError

    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            line = node.start_mark.line + 1
            raise DatabaseError(f"{filename}:{line}: YAML anchors and aliases are not "
                                "allowed (the node anchored here is used again)")
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += (value, key)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))


# --- the compiled cache ------------------------------------------------------------------


def _records(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for line in data["lines"]:
        records.setdefault(_key(line["vid"], line["pid"]), {"lines": [], "devices": []})
        records[_key(line["vid"], line["pid"])]["lines"].append(line)
    for key, dumps in data["devices"].items():
        records.setdefault(key, {"lines": [], "devices": []})["devices"] = dumps
    return records


def _meta(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("schema", "source", "rules", "minimum_firmware", "notes")}


def _digest(raw: bytes) -> str:
    # Detects a cache compiled from other YAML bytes (an edit, a partial copy); not a
    # security check. zlib is already loaded where hashlib's OpenSSL import is not.
    return f"{len(raw)}:{zlib.crc32(raw):08x}"


def render_cache(yaml_text: str, data: Mapping[str, Any]) -> str:
    """The cache text: a header with the YAML's hash, the metadata, one line per VID:PID."""
    import json

    dumps = json.dumps
    out = [
        dumps({"format": _CACHE_FORMAT, "yaml_digest": _digest(yaml_text.encode("utf-8"))}),
        dumps(_meta(data), separators=(",", ":"), ensure_ascii=True),
    ]
    for key, record in sorted(_records(data).items()):
        out.append(f"{key}\t{dumps(record, separators=(',', ':'), ensure_ascii=True)}")
    return "\n".join(out) + "\n"


# --- the database ------------------------------------------------------------------------


class _Condition:
    """One ``match`` condition of a rule (a plain class: see the module docstring)."""

    __slots__ = (
        "atr", "atr_mask", "bcd_max", "bcd_min", "interface", "interface_protocol", "pid", "vid"
    )

    def __init__(
        self,
        vid: int | None,
        pid: int | None,
        bcd_min: int | None,
        bcd_max: int | None,
        interface: int | None,
        interface_protocol: int | None,
        atr: bytes | None,
        atr_mask: bytes | None,
    ) -> None:
        self.vid = vid
        self.pid = pid
        self.bcd_min = bcd_min
        self.bcd_max = bcd_max
        self.interface = interface
        self.interface_protocol = interface_protocol
        self.atr = atr
        self.atr_mask = atr_mask

    def holds(
        self,
        vid: int,
        pid: int,
        bcd_device: int | None,
        interface: int | None,
        interface_protocol: int | None,
        atr: bytes | None,
    ) -> bool:
        if self.vid is not None and vid != self.vid:
            return False
        if self.pid is not None and pid != self.pid:
            return False
        if self.bcd_min is not None or self.bcd_max is not None:
            if bcd_device is None:
                return False
            if self.bcd_min is not None and bcd_device < self.bcd_min:
                return False
            if self.bcd_max is not None and bcd_device > self.bcd_max:
                return False
        if self.interface is not None and interface != self.interface:
            return False
        if self.interface_protocol is not None and interface_protocol != self.interface_protocol:
            return False
        if self.atr is not None:
            if atr is None or len(atr) != len(self.atr):
                return False
            mask = self.atr_mask or b"\xff" * len(self.atr)
            if any((a ^ b) & m for a, b, m in zip(atr, self.atr, mask)):
                return False
        return True


def _condition(raw: Mapping[str, Any]) -> _Condition:
    bcd = raw.get("bcd_device", {})
    return _Condition(
        vid=raw.get("vid"),
        pid=raw.get("pid"),
        bcd_min=bcd.get("min"),
        bcd_max=bcd.get("max"),
        interface=raw.get("interface"),
        interface_protocol=raw.get("interface_protocol"),
        atr=bytes.fromhex(raw["atr"]) if "atr" in raw else None,
        atr_mask=bytes.fromhex(raw["atr_mask"]) if "atr_mask" in raw else None,
    )


def _flags(names: Iterable[str], table: Mapping[str, Any], empty: Any) -> Any:
    value = empty
    for name in names:
        value |= table[name]
    return value


class _ScanContext:
    """What ``_json.make_scanner`` reads from a JSONDecoder: plain JSON, nothing else."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")


_LOADS: Callable[[str], Any] | None = None


def _json_loads() -> Callable[[str], Any]:
    """``json.loads`` for one cache line, without importing ``json``.

    The cache is read with the C scanner the json package itself uses: importing ``json``
    (its decoder compiles regular expressions) would cost more than the rest of a cold
    lookup. Where ``_json`` is missing (not CPython) this is ``json.loads``.
    """
    global _LOADS
    if _LOADS is None:
        try:
            from _json import make_scanner
        except ImportError:  # pragma: no cover - CPython always has it
            import json

            _LOADS = json.loads
            return _LOADS
        context: Any = _ScanContext
        scan = make_scanner(context)

        def loads(text: str) -> Any:
            try:
                value, end = scan(text, 0)
            except StopIteration:
                raise ValueError("no JSON value") from None
            if end != len(text):
                raise ValueError(f"extra data after JSON value at {end}")
            return value

        _LOADS = loads
    return _LOADS


class Database:
    """A loaded reader database. Query results are memoised: later calls are dict lookups."""

    def __init__(
        self,
        meta: Mapping[str, Any],
        records: Mapping[str, str | dict[str, Any]],
        origin: str,
    ) -> None:
        self.origin = origin
        self.source: dict[str, str] = dict(meta["source"])
        # VID:PID -> decoded record, or its JSON text until first use
        self._records: dict[str, str | dict[str, Any]] = dict(records)
        self._notes: dict[str, str] = dict(meta["notes"])
        self._firmware: dict[str, dict[str, Any]] = {
            _key(f["vid"], f["pid"]): f for f in meta["minimum_firmware"]
        }
        self._rules: list[tuple[tuple[str, ...], tuple[_Condition, ...]]] = [
            (tuple(r["quirks"]), tuple(_condition(c) for c in r["match"]))
            for r in meta["rules"]
        ]
        self._entries: dict[tuple[int, int, int | None, int | None], ReaderEntry | None] = {}
        self._quirks: dict[tuple[Any, ...], list[Quirk]] = {}
        # From a cache, the record lines stay in the cache bytes until asked for: a single
        # reader is found with one bytes.find, every reader is split out when one iterates
        # (_index). Splitting 640 lines up front would double a cold lookup.
        self._blob = b""
        self._complete = True

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_data(cls, data: Mapping[str, Any], origin: str) -> Database:
        return cls(_meta(data), _records(data), origin)

    @classmethod
    def from_cache(
        cls, text: str | bytes, yaml_raw: bytes | None, origin: str
    ) -> Database | None:
        """The database from cache text, or None when the cache does not fit the YAML."""
        blob = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if b"\r" in blob:  # a checkout with CRLF line ends
            blob = blob.replace(b"\r\n", b"\n")
        header_end = blob.find(b"\n")
        meta_end = blob.find(b"\n", header_end + 1)
        if header_end < 0 or meta_end < 0:
            return None
        loads = _json_loads()
        try:
            header = loads(blob[:header_end].decode("utf-8"))
            if header.get("format") != _CACHE_FORMAT:
                return None
            if yaml_raw is not None and header.get("yaml_digest") != _digest(yaml_raw):
                return None
            meta = loads(blob[header_end + 1 : meta_end].decode("utf-8"))
        except (ValueError, AttributeError):  # UnicodeDecodeError is a ValueError
            return None
        db = cls(meta, {}, origin)
        db._blob = blob[meta_end:]  # starts with the newline ending the metadata line
        db._complete = False
        return db

    # --- records -------------------------------------------------------------------------

    def _find(self, key: str) -> str | None:
        """The JSON text of one record, straight from the cache bytes."""
        needle = f"\n{key}\t".encode("ascii")
        start = self._blob.find(needle)
        if start < 0:
            return None
        start += len(needle)
        end = self._blob.find(b"\n", start)
        return self._blob[start : end if end >= 0 else len(self._blob)].decode("utf-8")

    def _index(self) -> dict[str, str | dict[str, Any]]:
        """Every record (JSON text until decoded), keyed by VID:PID."""
        if not self._complete:
            for line in self._blob.decode("utf-8").split("\n"):
                if line:
                    key, _, text = line.partition("\t")
                    self._records.setdefault(key, text)
            self._complete = True
        return self._records

    def _record(self, key: str) -> dict[str, Any] | None:
        record = self._records.get(key)
        if record is None:
            # re-read after the flag: another thread may have completed the index meanwhile
            record = self._records.get(key) if self._complete else self._find(key)
        if isinstance(record, str):
            record = _json_loads()(record)
            assert isinstance(record, dict)
            self._records[key] = record
        return record

    def ids(self) -> list[str]:
        """Every VID:PID the database knows ('VVVV:PPPP'), sorted."""
        return sorted(self._index())

    def lines(self) -> list[ListedLine]:
        """Every line of libccid's list, in file order."""
        out: list[ListedLine] = []
        for key in self._index():
            record = self._record(key)
            assert record is not None
            out.extend(ListedLine(**line) for line in record["lines"])
        return sorted(out, key=lambda item: item.line)

    # --- entries -------------------------------------------------------------------------

    def lookup(
        self,
        vid: int | str,
        pid: int | None = None,
        bcd_device: int | None = None,
        interface: int | None = None,
    ) -> ReaderEntry | None:
        """The listed reader with this VID:PID, or None when libccid does not list it.

        The reader is two ints (``0x08E6, 0x3478``) or one string (``"08E6:3478"``, any
        spelling ``parse_vid_pid`` accepts). ``bcd_device`` picks the dump of that firmware
        (else the closest older one); ``interface`` picks that USB interface of a
        multi-interface reader.
        """
        if type(vid) is not int or pid is None:
            vid, pid = _ids(vid, pid)
        memo = (vid, pid, bcd_device, interface)
        try:
            return self._entries[memo]
        except KeyError:
            pass
        _check_ids(vid, pid, bcd_device, interface)
        entries = self._build(vid, pid, bcd_device, interface, every=False)
        entry = entries[0] if entries else None
        self._entries[memo] = entry
        return entry

    def variants(self, vid: int | str, pid: int | None = None) -> list[ReaderEntry]:
        """One entry per descriptor dump and distinct interface of this VID:PID."""
        vid, pid = _ids(vid, pid)
        _check_ids(vid, pid, None, None)
        return self._build(vid, pid, None, None, every=True)

    def _build(
        self, vid: int, pid: int, bcd_device: int | None, interface: int | None, *, every: bool
    ) -> list[ReaderEntry]:
        key = _key(vid, pid)
        record = self._record(key)
        if record is None or not record["lines"]:
            return []
        lines = record["lines"]
        main = next((ln for ln in lines if ln["section"] != "duplicates"), lines[0])
        aliases: list[str] = []
        for ln in lines:
            if ln["name"] != main["name"] and ln["name"] not in aliases:
                aliases.append(ln["name"])
        firmware = self._firmware.get(key)
        base: dict[str, Any] = {
            "vid": vid,
            "pid": pid,
            "name": main["name"],
            "vendor": main["vendor"],
            "section": main["section"],
            "line": main["line"],
            "aliases": tuple(aliases),
            "note": self._notes.get(key),
            "min_firmware": None if firmware is None else firmware["bcd_device"],
        }
        dumps = _order_dumps(record["devices"], bcd_device)
        choices = [(d, g) for d in dumps for g in d["interfaces"]]
        if interface is not None:
            choices = [(d, g) for d, g in choices if interface in g["numbers"]]
        if not every:
            choices = choices[:1]
        out: list[ReaderEntry] = []
        for dump, group in choices:
            fields = dict(base)
            fields.update(_capabilities(dump, group, interface))
            fields["quirks"] = self._quirk_ids(
                vid, pid, bcd_device, interface, group["interface_protocol"]
            )
            entry = ReaderEntry(**fields)
            # the flag fields are built from the group on first access (cold-start cost)
            object.__setattr__(entry, "_raw_flags", group)
            out.append(entry)
        if not out:
            out.append(
                ReaderEntry(
                    **base, quirks=self._quirk_ids(vid, pid, bcd_device, interface, None)
                )
            )
        return out

    def all_entries(self) -> list[ReaderEntry]:
        """One entry per listed VID:PID (its preferred dump), in list order."""
        entries = [self.lookup(*_split(key)) for key in self._index()]
        return sorted((e for e in entries if e is not None), key=lambda e: e.line)

    def find_by_name(self, pattern: str) -> list[ReaderEntry]:
        """Entries whose name, other names, or USB strings match ``pattern``.

        Case-insensitive; a substring unless the pattern has ``*?[`` (then a glob).
        """
        if not isinstance(pattern, str) or not pattern.strip():
            from ccid.errors import UsageError

            raise UsageError("find_by_name needs a non-empty pattern")
        from fnmatch import fnmatchcase

        needle = pattern.strip().lower()
        glob = any(c in needle for c in "*?[")
        found: list[ReaderEntry] = []
        for entry in self.all_entries():
            texts = [entry.name, *entry.aliases]
            for variant in self.variants(entry.vid, entry.pid):
                texts += [variant.product or "", f"{variant.manufacturer} {variant.product}"]
            for text in texts:
                low = text.lower()
                if (fnmatchcase(low, needle) if glob else needle in low):
                    found.append(entry)
                    break
        return found

    # --- support -------------------------------------------------------------------------

    def is_supported(self, vid: int | str, pid: int | None = None) -> bool:
        """True when libccid lists the reader as supported or should-work."""
        vid, pid = _ids(vid, pid)
        entry = self.lookup(vid, pid)
        return entry is not None and entry.supported

    def support_status(
        self,
        vid: int | str,
        pid: int | None = None,
        *,
        bcd_device: int | None = None,
        interface_class: int | None = None,
    ) -> SupportAnswer:
        """The rich answer: status and, for problems, the reason."""
        vid, pid = _ids(vid, pid)
        entry = self.lookup(vid, pid, bcd_device)
        if entry is None:
            if interface_class == 0x0B:
                return SupportAnswer(SupportStatus.UNLISTED_CLASS_COMPLIANT, vid, pid, None, None)
            unknown = (
                "unknown to libccid's list; ccid opens it if it declares the CCID class "
                "(USB interface class 0x0B)"
                if interface_class is None
                else f"its interface class is 0x{interface_class:02X}, not CCID (0x0B)"
            )
            return SupportAnswer(SupportStatus.UNKNOWN, vid, pid, None, unknown)
        if bcd_device is not None:
            refusal = self.firmware_problem(vid, pid, bcd_device)
            if refusal is not None:
                return SupportAnswer(SupportStatus.KNOWN_PROBLEMS, vid, pid, entry, refusal)
        status = entry.status
        reason = entry.note
        if status is SupportStatus.KNOWN_PROBLEMS and reason is None:
            reason = "libccid lists it as not working"
        elif status is SupportStatus.DISABLED and reason is None:
            reason = "commented out of libccid's list"
        return SupportAnswer(status, vid, pid, entry, reason)

    # --- firmware ------------------------------------------------------------------------

    def min_firmware(self, vid: int | str, pid: int | None = None) -> int | None:
        """The first good bcdDevice of a reader with known-bad older firmware, or None."""
        vid, pid = _ids(vid, pid)
        _check_ids(vid, pid, None, None)
        firmware = self._firmware.get(_key(vid, pid))
        return None if firmware is None else int(firmware["bcd_device"])

    def firmware_problem(
        self, vid: int | str, pid: int | None = None, bcd_device: int | None = None
    ) -> str | None:
        """Why this firmware is refused (naming it and the fix), or None when it is fine."""
        vid, pid = _ids(vid, pid)
        bcd_device = _required_bcd(bcd_device)
        _check_ids(vid, pid, bcd_device, None)
        firmware = self._firmware.get(_key(vid, pid))
        if firmware is None:
            return None
        return _minimum_firmware_quirk(firmware).check_firmware(bcd_device)

    def check_firmware(
        self,
        vid: int | str,
        pid: int | None = None,
        bcd_device: int | None = None,
        *,
        allow_bad_firmware: bool = False,
        reader: str | None = None,
    ) -> str | None:
        """Raise UnsupportedReaderError for known-bad firmware unless allowed.

        With ``allow_bad_firmware`` the reason is returned (for a warning) instead.
        """
        vid, pid = _ids(vid, pid)
        problem = self.firmware_problem(vid, pid, bcd_device)
        if problem is None or allow_bad_firmware:
            return problem
        from ccid.quirks.generic import firmware_refusal

        raise firmware_refusal(problem, reader)

    # --- quirks --------------------------------------------------------------------------

    def _quirk_ids(
        self,
        vid: int,
        pid: int,
        bcd_device: int | None,
        interface: int | None,
        interface_protocol: int | None,
        atr: bytes | None = None,
    ) -> tuple[str, ...]:
        ids: list[str] = []
        if _key(vid, pid) in self._firmware:
            ids.append("minimum-firmware")
        for quirk_ids, conditions in self._rules:
            if any(
                c.holds(vid, pid, bcd_device, interface, interface_protocol, atr)
                for c in conditions
            ):
                ids.extend(q for q in quirk_ids if q not in ids)
        return tuple(ids)

    def quirks_for(
        self,
        vid: int | str,
        pid: int | None = None,
        *,
        bcd_device: int | None = None,
        interface: int | None = None,
        interface_protocol: int | None = None,
        atr: bytes | None = None,
    ) -> list[Quirk]:
        """The quirk objects to apply, in order (minimum firmware first).

        ``interface_protocol`` (bInterfaceProtocol: 1 ICCD-A, 2 ICCD-B) defaults to the
        dumped value for a listed reader. Card quirks need ``atr``.
        """
        if type(vid) is not int or pid is None:
            vid, pid = _ids(vid, pid)
        memo = (vid, pid, bcd_device, interface, interface_protocol, atr)
        try:
            return list(self._quirks[memo])
        except KeyError:
            pass
        _check_ids(vid, pid, bcd_device, interface)
        if atr is not None:
            atr = bytes(atr)
        if interface_protocol is None:
            entry = self.lookup(vid, pid, bcd_device, interface)
            if entry is not None:
                interface_protocol = entry.interface_protocol
        quirks: list[Quirk] = []
        for quirk_id in self._quirk_ids(vid, pid, bcd_device, interface, interface_protocol, atr):
            if quirk_id == "minimum-firmware":
                quirks.append(_minimum_firmware_quirk(self._firmware[_key(vid, pid)]))
            else:
                # imported only when a quirk applies: ccid.quirks needs the descriptor module
                from ccid.quirks import get_quirk

                quirks.append(get_quirk(quirk_id))
        self._quirks[memo] = quirks
        return list(quirks)

    def descriptor_bytes(
        self, vid: int | str, pid: int | None = None, interface: int | None = None
    ) -> bytes | None:
        """The dumped 54-byte class descriptor (to build a virtual reader), or None."""
        vid, pid = _ids(vid, pid)
        entry = self.lookup(vid, pid, None, interface)
        return None if entry is None else entry.raw_descriptor


def _minimum_firmware_quirk(firmware: Mapping[str, Any]) -> Quirk:
    from ccid.quirks.generic import MinimumFirmware

    return MinimumFirmware(firmware["bcd_device"], firmware["name"], firmware.get("note"))


def _order_dumps(dumps: Sequence[dict[str, Any]], bcd_device: int | None) -> list[dict[str, Any]]:
    """Dumps in preference order for a firmware: exact, then newest older, then the rest."""
    if bcd_device is None:
        return list(dumps)

    def rank(item: tuple[int, dict[str, Any]]) -> tuple[int, int, int]:
        index, dump = item
        bcd = dump["bcd_device"]
        if bcd == bcd_device:
            return (0, 0, index)
        if bcd < bcd_device:
            return (1, bcd_device - bcd, index)
        return (2, 0, index)

    return [dump for _, dump in sorted(enumerate(dumps), key=rank)]


def _capabilities(
    dump: Mapping[str, Any], group: Mapping[str, Any], interface: int | None
) -> dict[str, Any]:
    numbers = tuple(group["numbers"])
    names = tuple(group["names"])
    lcd = group["lcd"]
    return {
        "dump": dump["dump"],
        "bcd_device": dump["bcd_device"],
        "manufacturer": dump["manufacturer"],
        "product": dump["product"],
        "interface_count": dump["interface_count"],
        "interface_numbers": numbers,
        "interface_names": names,
        "interface_class": group["class"],
        "interface_subclass": group["subclass"],
        "interface_protocol": group["interface_protocol"],
        "has_interrupt": group["interrupt"],
        "ccid_version": group["ccid_version"],
        "slots": group["slots"],
        "max_message_length": group["max_message_length"],
        "max_ifsd": group["max_ifsd"],
        "lcd_layout": None if lcd is None else (lcd[0], lcd[1]),
        "default_clock_khz": group["default_clock_khz"],
        "max_clock_khz": group["max_clock_khz"],
        "clocks_khz": tuple(group["clocks_khz"]),
        "default_data_rate": group["default_data_rate"],
        "max_data_rate": group["max_data_rate"],
        "data_rates": tuple(group["data_rates"]),
        "raw_descriptor": bytes.fromhex(group["descriptor"]),
    }


def _split(key: str) -> tuple[int, int]:
    vid, pid = key.split(":")
    return int(vid, 16), int(pid, 16)


def _check_ids(vid: Any, pid: Any, bcd_device: Any, interface: Any) -> None:
    problem = _id_problem(vid, pid, bcd_device, interface)
    if problem is not None:
        from ccid.errors import UsageError

        raise UsageError(problem)


def _id_problem(vid: Any, pid: Any, bcd_device: Any, interface: Any) -> str | None:
    for name, value, hi in (("vid", vid, 0xFFFF), ("pid", pid, 0xFFFF)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            return f"{name} must be an integer 0..0x{hi:X}, got {value!r}"
    if bcd_device is not None and (
        isinstance(bcd_device, bool) or not isinstance(bcd_device, int)
        or not 0 <= bcd_device <= 0xFFFF
    ):
        return f"bcd_device must be an integer 0..0xFFFF, got {bcd_device!r}"
    if interface is not None and (
        isinstance(interface, bool) or not isinstance(interface, int) or not 0 <= interface <= 0xFF
    ):
        return f"interface must be an integer 0..255, got {interface!r}"
    return None


def parse_vid_pid(text: str) -> tuple[int, int]:
    """A reader's USB ids from text: ``"08E6:3478"`` -> ``(0x08E6, 0x3478)``.

    The one parser behind every selector (``open_reader``, ``lookup``, the CLI). Accepted
    spellings, case-insensitive, with optional spaces: ``08E6:3478``, ``0x08E6:0x3478``,
    ``8e6:3478``, ``08e6/3478``, ``08e6 3478`` and Windows' ``VID_08E6&PID_3478``.
    ``UsageError`` for anything else.
    """
    import re

    from ccid.errors import UsageError

    if not isinstance(text, str):
        raise UsageError(f"VID:PID must be a str such as '08E6:3478', not {type(text).__name__}")
    match = re.fullmatch(
        r"\s*(?:0x)?([0-9a-f]{1,4})\s*[:/ ]\s*(?:0x)?([0-9a-f]{1,4})\s*"
        r"|\s*vid_([0-9a-f]{1,4})\s*&\s*pid_([0-9a-f]{1,4})\s*",
        text,
        re.IGNORECASE,
    )
    if match is None:
        raise UsageError(f"expected VID:PID in hex such as 08E6:3478, got {text[:40]!r}")
    vid, pid = (g for g in match.groups() if g is not None)
    return int(vid, 16), int(pid, 16)


def _ids(vid: Any, pid: Any) -> tuple[int, int]:
    """(vid, pid) from two ints, or from one "VID:PID" string with pid left out."""
    if isinstance(vid, str):
        if pid is not None:
            from ccid.errors import UsageError

            raise UsageError(f"give the reader as one string ({vid!r}) or as two ints, not both")
        return parse_vid_pid(vid)
    if pid is None:
        from ccid.errors import UsageError

        raise UsageError(f"pid missing: give two ints (0x08E6, 0x3478) or one string "
                         f"('08E6:3478'), got vid={vid!r} alone")
    _check_ids(vid, pid, None, None)
    return vid, pid


def _required_bcd(bcd_device: int | None) -> int:
    if bcd_device is None:
        from ccid.errors import UsageError

        raise UsageError("bcd_device is required (the reader's firmware version, e.g. 0x0100)")
    return bcd_device


# --- loading and the default database ----------------------------------------------------


def load_database(
    path: str | Path | None = None, *, cache: str | Path | None = None, use_cache: bool = True
) -> Database:
    """Load a reader database (the packaged one by default).

    The cache is used only when it was compiled from these exact YAML bytes.
    """
    yaml_path = os.fspath(path) if path is not None else YAML_PATH
    try:
        with open(yaml_path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        from ccid.errors import DatabaseError

        raise DatabaseError(f"cannot read the reader database {yaml_path}: {exc}") from None
    if use_cache:
        cache_path = os.fspath(cache) if cache is not None else _cache_beside(yaml_path)
        try:
            # bytes: text mode (newline translation, incremental decoding) costs 1 ms here
            with open(cache_path, "rb") as fh:
                cache_text: bytes | None = fh.read()
        except OSError:
            cache_text = None
        if cache_text is not None:
            db = Database.from_cache(cache_text, raw, str(cache_path))
            if db is not None:
                return db
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        from ccid.errors import DatabaseError

        raise DatabaseError(f"{yaml_path}: not UTF-8 text ({exc})") from None
    return Database.from_data(parse_yaml(text, str(yaml_path)), str(yaml_path))


def _cache_beside(yaml_path: str) -> str:
    return os.path.splitext(yaml_path)[0] + ".cache"


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
