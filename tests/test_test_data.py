"""The test data carried in tests/data/: complete, canonical, and equal to its source."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CT700_LOG, DATA, ROOT, load_data

TOOL = ROOT / "tools" / "derive_test_data.py"


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("derive_test_data", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


derive = _load_tool()


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args],
                          capture_output=True, text=True, timeout=60)


def test_every_file_is_there_in_canonical_form() -> None:
    for name in derive.JSON_FILES:
        text = (DATA / name).read_text(encoding="utf-8")
        assert derive.render_json(json.loads(text)) == text, f"{name} was edited by hand"
    log = CT700_LOG.read_text(encoding="utf-8")
    assert derive.extract_log(log) == log


def test_data_matches_its_source() -> None:
    corpus = load_data("libccid_reader_descriptors.json")
    readers = load_data("libccid_supported_readers.json")
    vectors = load_data("ct700_vectors.json")
    # The counts the reference README gives for libccid 1.8.2.
    assert corpus["files_total"] == len(corpus["readers"]) == 691
    assert corpus["interface_dumps_total"] == 773
    assert sum(len(r["interfaces"]) for r in corpus["readers"]) == 773
    assert readers["total"] == len(readers["entries"]) == 716
    rates = next(v for v in vectors["vectors"] if v["name"] == "get_data_rates_response")
    assert len(rates["expect"]["rates_bps"]) == 41
    if derive.DEFAULT_REFERENCE.is_dir():
        # In the workspace the sources sit beside the clone: tests/data/ must be their image.
        result = run_tool("--check")
        assert result.returncode == 0, result.stderr


def _sources(tmp_path: Path) -> tuple[Path, Path]:
    """A reference and a seeds directory rebuilt from tests/data/, laid out as the originals."""
    reference, seeds = tmp_path / "reference", tmp_path / "seeds"
    reference.mkdir()
    seeds.mkdir()
    for name in derive.JSON_FILES:
        (reference / name).write_text(json.dumps(load_data(name), indent=1), encoding="utf-8")
    article = "A title\n\nSome prose.\n" + CT700_LOG.read_text(encoding="utf-8") + "\nMore prose.\n"
    (seeds / derive.CT700_SEED).write_text(article, encoding="utf-8")
    return reference, seeds


def test_check_passes_on_equal_sources_and_fails_on_a_change(tmp_path: Path) -> None:
    reference, seeds = _sources(tmp_path)
    where = ["--reference", str(reference), "--seeds", str(seeds)]
    assert run_tool("--check", *where).returncode == 0

    corpus = json.loads((reference / "libccid_reader_descriptors.json").read_text())
    corpus["readers"][5]["dwMaxIFSD"] += 1
    (reference / "libccid_reader_descriptors.json").write_text(json.dumps(corpus))
    result = run_tool("--check", *where)
    assert result.returncode == 1
    changed = corpus["readers"][5]["file"]
    lines = (DATA / "libccid_reader_descriptors.json").read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith(f'{{"file":"{changed}"'))
    assert f"libccid_reader_descriptors.json: line {number} differs" in result.stderr

    out = tmp_path / "out"
    assert run_tool(*where, "--data", str(out)).returncode == 0
    assert run_tool("--check", *where, "--data", str(out)).returncode == 0
    assert (out / "ct700_vectors.json").read_bytes() == (DATA / "ct700_vectors.json").read_bytes()


def test_missing_sources_are_an_error_not_a_pass(tmp_path: Path) -> None:
    result = run_tool("--check", "--reference", str(tmp_path / "nowhere"),
                      "--seeds", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "cannot read the sources" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_data_file_fails_the_test_instead_of_skipping() -> None:
    with pytest.raises(pytest.fail.Exception, match="test data missing"):
        load_data("no_such_file.json")
