"""``.. ccid-cli::``: the command-line reference, generated from ccid.cli's argparse parser.

Each subcommand gets a section with its ``--help`` text, so the page can never disagree with
what ``ccid COMMAND --help`` prints.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

#: Help text is wrapped to this width whatever the terminal building the docs.
WIDTH = "88"


def _help(parser: argparse.ArgumentParser) -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, aliases left out, in the order they were added."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse offers no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub not in found.values():
                    found[name] = sub
    return found


class CliReference(SphinxDirective):
    """Renders ``ccid --help`` and one section per subcommand."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from ccid.cli import build_parser

        parser = build_parser()
        out: list[nodes.Node] = [nodes.literal_block(text=_help(parser), language="text")]
        for name, sub in subcommands(parser).items():
            section_id = nodes.make_id(f"ccid-{name}")
            section = nodes.section(ids=[section_id], names=[section_id])
            section += nodes.title(text=f"ccid {name}")
            section += nodes.literal_block(text=_help(sub), language="text")
            out.append(section)
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("ccid-cli", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
