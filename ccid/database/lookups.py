"""The database itself: ``Database`` (lookups, support answers, firmware, quirks), loading.

A ``Database`` comes from the compiled cache (``Database.from_cache``: records stay cache
bytes until a reader is asked for) or from validated YAML (``Database.from_data``); every
query is memoised. ``load_database`` picks the cache when it matches the YAML bytes.

The hand-written rules live here too (``_Condition``: when a rule's quirks apply;
``minimum_firmware`` as a quirk): they are built on the cold lookup path, where one more
module to import would cost more than these few lines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ccid.database.cache import _json_loads, _meta, _records, read_cache
from ccid.database.entries import ListedLine, ReaderEntry, SupportAnswer, SupportStatus, _key

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from ccid.quirks import Quirk

# The data files stay in the ccid package (package-data), beside this package.
# os.path rather than pathlib: pathlib's import alone costs more than a cold lookup.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML_PATH = os.path.join(_PACKAGE_DIR, "readers.yaml")
CACHE_PATH = os.path.join(_PACKAGE_DIR, "readers.cache")


# --- rules ------------------------------------------------------------------------------


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


def _minimum_firmware_quirk(firmware: Mapping[str, Any]) -> Quirk:
    from ccid.quirks.generic import MinimumFirmware

    return MinimumFirmware(firmware["bcd_device"], firmware["name"], firmware.get("note"))


# --- the database -----------------------------------------------------------------------


class Database:
    """A loaded reader database. Query results are memoised: later calls are dict lookups."""

    __module__ = "ccid.database"  # its public home: pickles and help() name it

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
        read = read_cache(blob, yaml_raw)
        if read is None:
            return None
        meta, records = read
        db = cls(meta, {}, origin)
        db._blob = records
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
    # imported only without a valid cache: pyyaml and the schema are off the lookup path
    from ccid.database.schema import parse_yaml

    return Database.from_data(parse_yaml(text, str(yaml_path)), str(yaml_path))


def _cache_beside(yaml_path: str) -> str:
    return os.path.splitext(yaml_path)[0] + ".cache"

