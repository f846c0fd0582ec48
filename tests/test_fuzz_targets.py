"""The fuzz targets of tools/fuzz.py at a CI-sized budget (the full run is documented in
benchmarks/FUZZ.md): every parser raises only ccid.errors exceptions, and the C framing
agrees with its pure-Python twin."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest
from conftest import ROOT

from ccid.errors import ProtocolError


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("ccid_fuzz", ROOT / "tools" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


fuzz = _load()
TARGETS = fuzz.targets()
#: Inputs per target here: about a second each on a loaded machine.
BUDGET = 10_000


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_has_no_findings(name: str) -> None:
    target = TARGETS[name]
    if target.needs_c and fuzz.c is None:
        pytest.skip("ccid._fast not built: nothing to compare the twin with")
    result = fuzz.run_target(target, BUDGET, seed=2024)
    assert result.inputs == BUDGET
    assert not result.findings, "\n".join(
        f"{key}: {message} (input {data.hex()})"
        for key, (message, data) in result.findings.items())


def test_the_driver_reports_what_is_not_a_ccid_error() -> None:
    def parser(data: bytes) -> None:
        if len(data) > 3 and data[0] == 0x3B:
            raise ProtocolError("typed: fine")
        if len(data) > 3 and data[1] == 0x00:
            raise IndexError("untyped: a finding")

    target = fuzz.Target("planted", parser, [b"\x3b\x01\x02\x03", b"\x00\x00\x00\x00"])
    result = fuzz.run_target(target, 500, seed=1)
    assert list(result.findings) == [
        f"IndexError at test_fuzz_targets.py:{parser.__code__.co_firstlineno + 4}"]


def test_the_driver_reports_a_twin_disagreement() -> None:
    def twins(data: bytes) -> None:
        fuzz.agree("lrc", fuzz.py.lrc(data), fuzz.py.lrc(data) ^ (len(data) == 7))

    result = fuzz.run_target(fuzz.Target("twins", twins, [bytes(7)]), 50, seed=1)
    assert [k.split(" at ")[0] for k in result.findings] == ["Disagreement"]


def test_mutations_stay_within_bounds() -> None:
    import random

    rng = random.Random(5)
    for _ in range(2000):
        out = fuzz.mutate(rng, bytes(range(40)), 60)
        assert isinstance(out, bytes) and len(out) <= 104
