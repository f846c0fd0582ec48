#!/usr/bin/env python3
"""Rebuild the test data in tests/data/ from the reference corpus and the seed articles.

The suite reads only tests/data/, so a clone runs every test wherever it lives. This tool
is how that data is refreshed when the reference changes:

    python tools/derive_test_data.py            # rewrite tests/data/ from ../shared
    python tools/derive_test_data.py --check    # exit 1 if tests/data/ differs from it

The sources are ``../shared/reference`` and ``../shared/seeds`` beside the clone, or
``$CCID_REFERENCE`` and the ``seeds`` directory beside it (or ``--reference``/``--seeds``).

The JSON files keep every value of their sources (``json.load`` gives equal objects) in a
compact layout: one record per line, so a changed reader shows as one changed line in a
diff. The CT700 log is the driver-log lines of the seed article that published it, without
the article's prose.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
#: Where the sources live: $CCID_REFERENCE, else the workspace's shared/ beside the clone;
#: the seed articles sit beside the reference directory (its README points at ../seeds/).
DEFAULT_REFERENCE = Path(os.environ.get("CCID_REFERENCE") or ROOT.parent / "shared" / "reference")
DEFAULT_SEEDS = DEFAULT_REFERENCE.parent / "seeds"

#: JSON files copied from the reference directory, by name.
JSON_FILES = (
    "libccid_reader_descriptors.json",
    "libccid_supported_readers.json",
    "ct700_vectors.json",
)
CT700_SEED = "000_666070f5a73daebe.txt"
CT700_LOG = "ct700_el_capitan_log.txt"
#: Every line the macOS CCID driver logged carries this process tag.
_LOG_TAG = "com.apple.ifdreader["


def render_json(data: Any) -> str:
    """``data`` as compact JSON, each element of a top-level list of objects on its own line."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    if not isinstance(data, dict):
        return one(data) + "\n"
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            body = "[\n" + ",\n".join(one(v) for v in value) + "\n]"
        else:
            body = one(value)
        parts.append(f"{one(key)}:{body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def extract_log(article: str) -> str:
    """The driver-log lines of a seed article, in order, without the prose around them."""
    lines = [line.rstrip() for line in article.splitlines() if _LOG_TAG in line]
    if not lines:
        raise ValueError("no driver-log line in the article")
    return "\n".join(lines) + "\n"


def derive(reference: Path, seeds: Path) -> dict[str, str]:
    """Every file of tests/data/ that this tool owns, by name, with its text."""
    out: dict[str, str] = {}
    for name in JSON_FILES:
        with (reference / name).open(encoding="utf-8") as fh:
            out[name] = render_json(json.load(fh))
    out[CT700_LOG] = extract_log((seeds / CT700_SEED).read_text(encoding="utf-8"))
    return out


def _first_difference(old: str, new: str) -> str:
    for number, (a, b) in enumerate(zip(old.splitlines(), new.splitlines()), 1):
        if a != b:
            return f"line {number} differs"
    return "lengths differ"


def check(files: dict[str, str], data: Path, say: Callable[[str], None]) -> bool:
    """Whether ``data`` holds exactly ``files``; each difference is reported through ``say``."""
    ok = True
    for name, text in files.items():
        path = data / name
        if not path.exists():
            say(f"{path}: missing")
            ok = False
            continue
        old = path.read_text(encoding="utf-8")
        if old != text:
            say(f"{path}: {_first_difference(old, text)}")
            ok = False
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help="the reference corpus directory (default: %(default)s)")
    parser.add_argument("--seeds", type=Path, default=DEFAULT_SEEDS,
                        help="the seed articles directory (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="where the test data lives (default: %(default)s)")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"derive_test_data: {text}", file=sys.stderr)

    try:
        files = derive(args.reference, args.seeds)
    except (OSError, ValueError) as exc:
        say(f"cannot read the sources: {exc}")
        return 2
    if args.check:
        if check(files, args.data, say):
            return 0
        say("run tools/derive_test_data.py to refresh tests/data/")
        return 1
    args.data.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.data / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.data / name} ({len(text.encode())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
