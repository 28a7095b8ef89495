"""table1 argument checks on the reference path that fail before any training or data loading."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from iobs.reproduce import table1


def _args(argv):
    p = argparse.ArgumentParser()
    table1.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--sparsity", "-0.1"], "--sparsity must be in"),
        (["--sparsity", "nan"], "--sparsity must be in"),
        (["--val-size", "6000"], r"--val-size must be in \[1, 5000\]"),
        (["--iterations", "0"], "--iterations must be >= 1"),
        (["--ft-epochs", "0"], "--ft-epochs must be >= 1"),
        (["--images", "/nonexistent"], "--images needs --model"),
    ],
)
def test_reference_bad_input(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        table1.run(_args([*argv, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")]))
    assert not (tmp_path / "c").exists()  # rejected before the reference is trained or loaded


def test_defaults_are_the_settings_of_the_committed_table1_result():
    """The defaults produced benchmarks/results/vision_table1/table.md (rerun it when they change)."""
    a = _args([])
    md = (Path(__file__).parents[2] / "benchmarks/results/vision_table1/table.md").read_text()
    assert f"{100 * a.sparsity:g}% uniform sparsity" in md
    assert f"{a.nsamples} calibration images per iteration, dense step {a.dense_step} " in md
    assert f"(lr {a.lr:g}, damping {a.damping:g})" in md
    assert f"| I-OBS({a.iterations}) |" in md and f"| I-OBS({a.iterations + 1}) |" not in md
