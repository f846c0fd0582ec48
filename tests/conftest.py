"""Shared fixtures: the test data in tests/data/ (rebuilt by tools/derive_test_data.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
#: The reference corpus as the suite reads it: the copy carried in the repository, so a clone
#: anywhere runs every test. tools/derive_test_data.py --check compares it with its source.
DATA = ROOT / "tests" / "data"
REFERENCE = DATA
#: The driver log of a Gemalto CT700 opening on OS X El Capitan (a seed article's log lines).
CT700_LOG = DATA / "ct700_el_capitan_log.txt"

# CI asks for a few thousand examples per parser; local runs may lower it.
settings.register_profile("ci", max_examples=2000, deadline=None)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def load_data(name: str) -> Any:
    """One JSON file of tests/data/. A missing file is a broken checkout: the test fails
    (everywhere, CI included) instead of skipping what it was meant to check."""
    path = DATA / name
    if not path.exists():
        pytest.fail(f"test data missing: {path} (run tools/derive_test_data.py)", pytrace=False)
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def descriptor_corpus() -> dict[str, Any]:
    """libccid 1.8.2's 691 descriptor dumps, parsed (773 interfaces)."""
    return load_data("libccid_reader_descriptors.json")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def supported_readers() -> dict[str, Any]:
    """libccid 1.8.2's supported_readers.txt, parsed."""
    return load_data("libccid_supported_readers.json")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def ct700_vectors() -> dict[str, Any]:
    """Real bytes from a Gemalto CT700, by vector name."""
    data = load_data("ct700_vectors.json")
    return {v["name"]: v for v in data["vectors"]}


def next_event(reader: Any, wait: float = 5.0, what: str = "no event arrived") -> Any:
    """The reader's next event, failing the test when none comes within ``wait`` seconds."""
    event = reader.wait_for_event(wait)
    assert event is not None, what
    return event


def drain(reader: Any, quiet: float = 0.2) -> list[Any]:
    """Every event already queued or arriving until ``quiet`` seconds pass without one."""
    out = []
    while (event := reader.wait_for_event(quiet)) is not None:
        out.append(event)
    return out


def in_child(body: Callable[[], int], seconds: int = 20) -> int:
    """Run ``body`` in a forked child; its exit status. A hang ends the child by SIGALRM;
    one stuck for good (SIGALRM handled, then a second deadlock) is killed: -SIGKILL."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            signal.alarm(seconds)
            code = body()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 98
        finally:
            os._exit(code)
    deadline = time.monotonic() + seconds + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.02)
