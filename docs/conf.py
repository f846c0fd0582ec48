"""Sphinx configuration for the ccid documentation (plain Sphinx + myst-parser)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The docs describe the tree they sit in, installed or not.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))

import ccid  # noqa: E402

project = "ccid"
author = "the ccid authors"
copyright = "the ccid authors"
release = ccid.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
    "ccid_cli",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# Signatures read better with the annotations as written than with expanded aliases.
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False

html_theme = "alabaster"
html_title = f"ccid {release}"
html_static_path: list[str] = []
