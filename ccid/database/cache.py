"""The compiled cache ``readers.cache``: written from parsed YAML, read without ``json``.

One header line (format and the hash of the YAML bytes it was compiled from), one line of
metadata (source, rules, minimum firmware, notes), then one ``VVVV:PPPP<TAB>json`` line per
reader, decoded only when that reader is asked for.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

from ccid.database.entries import _key

_CACHE_FORMAT = "ccid-readers-cache/1"


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



def read_cache(blob: bytes, yaml_raw: bytes | None) -> tuple[dict[str, Any], bytes] | None:
    """(metadata, record lines) from cache bytes; None when they do not fit ``yaml_raw``.

    The record lines start with the newline that ends the metadata line, so that one
    ``find(b"\\n" + key)`` finds any reader.
    """
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
    return meta, blob[meta_end:]
