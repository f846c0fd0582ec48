"""The package surface: lazy names resolve, `import ccid` stays cheap."""

from __future__ import annotations

import subprocess
import sys

import ccid


def test_all_lists_every_lazy_name_and_submodule() -> None:
    assert set(ccid.__all__) == set(ccid._LAZY) | set(ccid._SUBMODULES) | {"__version__"}


def test_every_public_name_resolves() -> None:
    for name in ccid.__all__:
        assert getattr(ccid, name) is not None, name


def test_import_ccid_loads_no_usb_yaml_or_construct() -> None:
    code = ("import sys, ccid; bad = [m for m in ('usb', 'yaml', 'construct', 'cffi', "
            "'ccid.reader', 'ccid.database') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"


def test_submodule_attribute_after_bare_import() -> None:
    code = "import ccid; print(ccid.trace.enabled, ccid.errors.CCIDError.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "False CCIDError"
