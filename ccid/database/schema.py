"""``readers.yaml`` parsed and validated: the schema of the ``ccid.database`` docstring.

Only imported when there is no valid compiled cache (or to build one): pyyaml and the
descriptor parser stay off the lookup path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ccid.database.entries import _LEVEL_NAMES, _PIN_NAMES, _PROTOCOL_NAMES, _VOLTAGE_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import yaml

    from ccid.errors import DatabaseError

SECTIONS = ("supported", "shouldwork", "unsupported", "disabled", "duplicates")
_HEX = frozenset("0123456789ABCDEF")


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

