"""The documentation in docs/: it builds without a warning, covers every public name, and
its examples run.

The Sphinx build needs the ``sphinx`` and ``myst-parser`` packages: without them the build
tests skip, except under ``CI`` where a missing tool must fail the run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = ROOT / "docs"
#: The pages whose ```python blocks are run, in order, each page in one namespace. Blocks
#: that need hardware or a test runner are written as ```{code-block} python instead.
EXAMPLE_PAGES = ("quickstart.md", "testing.md")
#: Modules whose ``__all__`` the API reference must cover, and the page that covers it.
PUBLIC = {"ccid": "api/ccid.html", "ccid.errors": "api/errors.html",
          "ccid.testing": "api/testing.html", "ccid.trace": "api/trace.html",
          "ccid.sw": "api/sw.html"}


def _sphinx_missing() -> str | None:
    for module in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built once with every warning an error."""
    missing = _sphinx_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is not installed: the documentation cannot be checked")
        pytest.skip(f"{missing} is not installed (pip install sphinx myst-parser)")
    out = tmp_path_factory.mktemp("html")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stderr[-4000:]}"
    return out


def test_site_builds_without_warnings(html: Path) -> None:
    for page in ("index", "quickstart", "testing", "architecture", "api/index", "api/cli"):
        assert (html / f"{page}.html").is_file(), page


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_is_in_the_reference(html: Path, module: str) -> None:
    page = (html / PUBLIC[module]).read_text(encoding="utf-8")
    documented = set(re.findall(r'<dt class="sig sig-object py" id="([\w.]+)"', page))
    mod = importlib.import_module(module)
    names = [n for n in mod.__all__ if not n.startswith("__")
             and not isinstance(getattr(mod, n), type(sys))]  # submodules have their pages
    missing = [n for n in names if f"{module}.{n}" not in documented]
    assert not missing, f"{PUBLIC[module]} does not document {missing}"


def test_cli_page_has_every_subcommand(html: Path) -> None:
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        ccid_cli = importlib.import_module("ccid_cli")
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    from ccid.cli import build_parser

    page = (html / "api" / "cli.html").read_text(encoding="utf-8")
    names = list(ccid_cli.subcommands(build_parser()))
    assert "send" in names and "udev-rules" in names
    for name in names:
        assert f"usage: ccid {name}" in page, name


def _examples(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_examples_run(page: str) -> None:
    blocks = _examples(page)
    assert blocks, f"no runnable example in {page}"
    namespace: dict[str, object] = {"__name__": f"docs_{page}"}
    with contextlib.redirect_stdout(io.StringIO()):
        for number, block in enumerate(blocks, 1):
            code = compile(block, f"docs/{page} (python block {number})", "exec")
            exec(code, namespace)
