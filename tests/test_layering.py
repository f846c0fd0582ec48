"""The import layering of ../shared/DESIGN.md, checked on the source (AST, nothing imported).

Rules (each import statement is seen: module level, inside a function, under
``if TYPE_CHECKING``):

* core: the sans-IO core never imports the session, the front doors, pyusb or libusb;
* testing: only ``ccid.testing`` and the CLI import ``ccid.testing``;
* engine: the engine never imports the quirks or the database;
* entry: only the CLI, ``ccid.__main__`` and the server import the CLI or the server;
* cycle: no cycle between modules. Module-level imports may never form one; an import
  inside a function that closes a cycle needs a reason in ``DEFERRED`` below.

``check`` is the checker; ``test_each_rule_is_enforced`` shows it failing on a synthetic
package with one violation of each rule.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CORE = ("ccid.messages", "ccid.descriptor", "ccid.framing", "ccid._fast", "ccid._framing_py",
        "ccid.engine", "ccid.protocol")
NOT_IN_CORE = ("ccid.transport", "ccid.reader", "ccid.events", "ccid.session", "ccid.aio",
               "ccid.serve", "ccid.cli", "usb", "libusb_package")
TESTING = "ccid.testing"
# ccid.serve.cli: ``ccid serve --virtual`` serves virtual readers (it is a CLI too).
MAY_IMPORT_TESTING = ("ccid.testing", "ccid.cli", "ccid.serve.cli")
ENTRY_POINTS = ("ccid.cli", "ccid.serve")
MAY_IMPORT_ENTRY_POINTS = ("ccid.cli", "ccid.__main__", "ccid.serve")
NOT_IN_ENGINE = ("ccid.quirks", "ccid.database")

#: Function-level imports allowed to close a cycle, (importer, imported) -> why.
DEFERRED: dict[tuple[str, str], str] = {}

#: Packages whose ``__init__`` imports its own submodules (at its end) so that they
#: register themselves, package -> why. Their submodules' imports of the package are no
#: cycle: Python always runs a package's ``__init__`` before any submodule of it.
REGISTRIES: dict[str, str] = {
    "ccid.quirks": "the vendor modules register their quirks with the package's registry",
}

#: Violations on main that other branches are removing: (rule, importer, imported).
#: A violation not listed here fails the suite.
KNOWN: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    imported: str  # a module of the package, or an outside name as written
    line: int
    where: str  # "module", "function" or "typing"


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    importer: str
    imported: str
    line: int
    where: str
    detail: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.importer, self.imported)

    def __str__(self) -> str:
        text = f"[{self.rule}] {self.importer}:{self.line} imports {self.imported} ({self.where})"
        return f"{text}: {self.detail}" if self.detail else text


def _under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules_of(package_dir: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package."""
    base = package_dir.name
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([base, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in one module, resolved to modules of ``known`` where it names one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def resolve(target: str) -> str:
        # "ccid.engine.Engine" is the module ccid.engine; outside names stay as written.
        probe = target
        while probe and probe not in known:
            probe = probe.rpartition(".")[0]
        return probe or target

    def add(target: str, line: int, where: str) -> None:
        imported = resolve(target)
        if imported != name:
            found.append(Import(name, imported, line, where))

    def record(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, where)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                # "from ccid import events" imports the module ccid.events
                full = f"{module}.{alias.name}"
                add(full if full in known else module, node.lineno, where)
        elif isinstance(node, ast.Call) and _literal_import_module(node):
            add(node.args[0].value, node.lineno, where)  # type: ignore[attr-defined]

    def walk(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    record(stmt, "typing")
                    walk(stmt, "typing")
                for stmt in child.orelse:
                    record(stmt, where)
                    walk(stmt, where)
                continue
            record(child, where)
            inner = where
            if where == "module" and isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "function"
            walk(child, inner)

    walk(tree, "module")
    return found


def _literal_import_module(node: ast.Call) -> bool:
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module")
    return named and len(node.args) >= 1 and isinstance(node.args[0], ast.Constant) and \
        isinstance(node.args[0].value, str)


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def check(package_dir: Path, deferred: dict[tuple[str, str], str] | None = None,
          registries: dict[str, str] | None = None) -> list[Violation]:
    """Every layering violation in the package at ``package_dir`` (named by its folder)."""
    deferred = DEFERRED if deferred is None else deferred
    registries = REGISTRIES if registries is None else registries
    mods = modules_of(package_dir)
    known = set(mods)
    base = package_dir.name

    def ours(prefixes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(p.replace("ccid", base, 1) if p.startswith("ccid") else p
                     for p in prefixes)

    core, not_in_core = ours(CORE), ours(NOT_IN_CORE)
    testing, may_testing = ours((TESTING,)), ours(MAY_IMPORT_TESTING)
    entry, may_entry = ours(ENTRY_POINTS), ours(MAY_IMPORT_ENTRY_POINTS)
    engine, not_in_engine = ours(("ccid.engine",)), ours(NOT_IN_ENGINE)

    out: list[Violation] = []
    runtime: dict[str, dict[str, Import]] = {}
    for name, path in mods.items():
        for imp in imports_of(name, path, known):
            def flag(rule: str, imp: Import = imp) -> None:
                out.append(Violation(rule, imp.importer, imp.imported, imp.line, imp.where))

            if _under(name, core) and _under(imp.imported, not_in_core):
                flag("core")
            if _under(name, engine) and _under(imp.imported, not_in_engine):
                flag("engine")
            if imp.where != "typing":
                if _under(imp.imported, testing) and not _under(name, may_testing):
                    flag("testing")
                if _under(imp.imported, entry) and not _under(name, may_entry):
                    flag("entry")
                if imp.imported in known:
                    kept = runtime.setdefault(name, {}).get(imp.imported)
                    if kept is None or (kept.where != "module" and imp.where == "module"):
                        runtime[name][imp.imported] = imp
    # A function-level import with a reason in ``deferred`` is a deliberate break.
    edges = {src: {dst: imp for dst, imp in out_edges.items()
                   if (imp.where == "module" or (src, dst) not in deferred)
                   and not (dst in registries and _under(src, dst))}
             for src, out_edges in runtime.items()}
    for component in _cycles(edges):
        members = set(component)
        inside = [imp for src in component for dst, imp in edges.get(src, {}).items()
                  if dst in members]
        kind = "module-level" if all(i.where == "module" for i in inside) else \
            "function-level"
        for imp in sorted(inside, key=lambda i: (i.importer, i.imported)):
            out.append(Violation("cycle", imp.importer, imp.imported, imp.line, imp.where,
                                 f"{kind} cycle {' <-> '.join(component)}"))
    return out


def _report(violations: list[Violation]) -> str:
    return "\n".join(str(v) for v in violations)


# --- the real package ------------------------------------------------------------------------


def test_ccid_keeps_its_layers() -> None:
    found = check(ROOT / "ccid")
    new = [v for v in found if v.key not in KNOWN]
    assert not new, "import layering broken:\n" + _report(new)


def test_fixed_known_violations_are_pointed_out() -> None:
    # KNOWN must shrink as the fixes land: an entry no longer found is reported (a
    # warning, not a failure, so that branches fixing them can land in any order).
    found = {v.key for v in check(ROOT / "ccid")}
    for key in KNOWN:
        if key not in found:
            warnings.warn(f"layering: {key} is fixed; delete it from KNOWN", stacklevel=1)


def test_deferred_reasons_name_real_imports() -> None:
    imports = {(i.importer, i.imported) for name, path in modules_of(ROOT / "ccid").items()
               for i in imports_of(name, path, set(modules_of(ROOT / "ccid")))
               if i.where == "function"}
    assert set(DEFERRED) <= imports


# --- the checker fails when a rule is broken -------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "ccid"
    for rel, text in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


CLEAN = {
    "engine.py": "from ccid import messages\nfrom ccid.protocol.atr import parse\n",
    "messages.py": "import struct\n",
    "protocol/__init__.py": "",
    "protocol/atr.py": "from ..messages import *\ndef parse(): pass\n",
    "reader.py": "import usb.core\nfrom ccid import engine, database\n"
                 "def f():\n    from ccid import quirks\n",
    "database.py": "",
    "quirks.py": "import ccid.database\n",
    "cli.py": "from ccid.testing import preset\nimport ccid.serve\n",
    "serve.py": "from ccid import reader\n",
    "transport/__init__.py": "import usb.core\n",
    "__main__.py": "from ccid.cli import main\n",
    "testing/__init__.py": "from ccid import reader\n",
}


def test_a_clean_synthetic_package_passes(tmp_path: Path) -> None:
    assert check(_package(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(("rule", "files", "expected"), [
    ("core", {"engine.py": "from ccid import messages\ndef f():\n    import usb.core\n"},
     ("core", "ccid.engine", "usb.core")),
    ("core", {"protocol/atr.py": "from ..transport import bulk\n"},
     ("core", "ccid.protocol.atr", "ccid.transport")),
    ("core", {"messages.py": "from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from ccid.transport import usb\n"},
     ("core", "ccid.messages", "ccid.transport")),
    ("testing", {"udev.py": "import importlib\n"
                 "def f():\n    importlib.import_module('ccid.testing')\n"},
     ("testing", "ccid.udev", "ccid.testing")),
    ("testing", {"trace.py": "from ccid.testing import preset\n"},
     ("testing", "ccid.trace", "ccid.testing")),
    ("engine", {"engine.py": "def f():\n    from ccid.quirks import x\n"},
     ("engine", "ccid.engine", "ccid.quirks")),
    ("engine", {"engine.py": "import ccid.database\n"},
     ("engine", "ccid.engine", "ccid.database")),
    ("entry", {"udev.py": "from ccid import cli\n"}, ("entry", "ccid.udev", "ccid.cli")),
    ("entry", {"report.py": "import ccid.serve\n"}, ("entry", "ccid.report", "ccid.serve")),
    ("cycle", {"database.py": "from ccid import quirks\n"},
     ("cycle", "ccid.database", "ccid.quirks")),
    ("cycle", {"database.py": "def f():\n    from ccid import quirks\n"},
     ("cycle", "ccid.database", "ccid.quirks")),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_rule_is_enforced(tmp_path: Path, rule: str, files: dict[str, str],
                               expected: tuple[str, str, str]) -> None:
    found = check(_package(tmp_path, {**CLEAN, **files}))
    assert expected in {v.key for v in found}, _report(found)
    assert {v.rule for v in found} == {rule}, _report(found)


def test_a_deferred_import_with_a_reason_excuses_its_cycle(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {**CLEAN, "database.py": "def f():\n    from ccid import quirks\n"})
    assert check(pkg, {("ccid.database", "ccid.quirks"): "lazy: keeps import cheap"}) == []
    # a module-level cycle is never excused
    pkg = _package(tmp_path, {**CLEAN, "database.py": "from ccid import quirks\n"})
    assert check(pkg, {("ccid.database", "ccid.quirks"): "no"}) != []


def test_a_registry_package_needs_its_entry(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {**CLEAN, "plugins/__init__.py": "from ccid.plugins import a\n",
                              "plugins/a.py": "from ccid.plugins import register\n"})
    assert {v.rule for v in check(pkg, registries={})} == {"cycle"}
    assert check(pkg, registries={"ccid.plugins": "plugins register themselves"}) == []


def test_known_violations_fail_without_their_entry(tmp_path: Path) -> None:
    # The same checker on a copy of the real offenders' imports: each is reported.
    pkg = _package(tmp_path, {
        **CLEAN,
        "trace.py": "def replay():\n    from ccid.testing import reader\n",
        "events.py": "def watch():\n    from ccid.reader import open_reader\n",
        "reader.py": "def notify():\n    from ccid import events\n",
    })
    keys = {v.key for v in check(pkg)}
    assert ("testing", "ccid.trace", "ccid.testing") in keys
    assert ("cycle", "ccid.events", "ccid.reader") in keys
    assert ("cycle", "ccid.reader", "ccid.events") in keys
