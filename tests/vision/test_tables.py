"""Smoke runs of ``iobs reproduce table5`` / ``table1`` on tiny settings: files written, records valid."""

from __future__ import annotations

import argparse
import json

import pytest

from iobs.reproduce import table1, table5


def _args(mod, argv):
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.slow
def test_table5_smoke(tmp_path):
    out = tmp_path / "t5"
    argv = ["--quick", "--sparsities", "0.7", "--grads", "20", "--iterations", "2", "--block-size", "2000"]
    argv += ["--cbs-swaps", "5", "--val-size", "200", "--test-limit", "200", "--train-limit", "300"]
    argv += ["--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert table5.run(_args(table5, argv)) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in records} == {"dense", "magnitude", "woodfisher", "cbs", "cbs@n", "iobs"}
    assert all(
        r["gradients"] == (10 if r["method"] == "cbs@n" else 20) for r in records if "cbs" in r["method"]
    )
    for r in records:
        assert set(r) >= {"model", "method", "sparsity", "iteration", "accuracy"}
        assert 0.0 <= r["accuracy"] <= 1.0
        assert (r["iteration"] is None) == (r["method"] != "iobs")
    assert sorted(r["iteration"] for r in records if r["method"] == "iobs") == [1, 2]
    assert sum(bool(r.get("selected")) for r in records) == 1
    md = (out / "table.md").read_text()
    assert "| mlpnet | 70% |" in md and ("PASS" in md or "MISS" in md)
    assert (out / "table5.png").stat().st_size > 5000
    best = next(r for r in records if r.get("selected"))
    cbs = next(r for r in records if r["method"] == "cbs")
    n = 200  # --test-limit: the McNemar counts explain the accuracy difference exactly
    assert best["vs_cbs"]["only_a"] - best["vs_cbs"]["only_b"] == round(
        n * (best["accuracy"] - cbs["accuracy"])
    )

    # per-iteration budget into the same folder: the baselines are reused, iteration 1 is WoodFisher itself
    base_cell = out / "cells" / "mlpnet-0.7-baselines.json"
    stamp = base_cell.stat().st_mtime_ns
    assert table5.run(_args(table5, argv + ["--budget", "per-iteration"])) == 0
    assert base_cell.stat().st_mtime_ns == stamp
    records = json.loads((out / "results.json").read_text())
    assert "cbs@n" not in {r["method"] for r in records}
    wf = next(r for r in records if r["method"] == "woodfisher")
    its = {r["iteration"]: r for r in records if r["method"] == "iobs"}
    assert its[1]["accuracy"] == wf["accuracy"]
    assert [its[1]["gradients"], its[2]["gradients"]] == [20, 40]


def test_table5_bad_input(tmp_path):
    with pytest.raises(ValueError, match="sparsities"):
        table5.run(_args(table5, ["--sparsities", "0.5,1.0", "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="models"):
        table5.run(_args(table5, ["--models", "resnet", "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="first-share"):
        table5.run(_args(table5, ["--first-share", "1.5", "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="first-share applies to --budget total"):
        table5.run(
            _args(table5, ["--first-share", "0.5", "--budget", "per-iteration", "--out", str(tmp_path)])
        )
    with pytest.raises(ValueError, match="val-size"):  # raised before any reference network is loaded/trained
        table5.run(
            _args(table5, ["--val-size", "5001", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path)])
        )
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.slow
def test_table1_smoke(tmp_path):
    out = tmp_path / "t1"
    argv = ["--nsamples", "32", "--iterations", "2", "--val-size", "100", "--test-limit", "100"]
    argv += [
        "--train-limit",
        "200",
        "--epochs",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    assert table1.run(_args(table1, argv)) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["iteration"] for r in records] == [None, 1, 2]
    assert records[0]["method"] == "dense" and records[0]["sparsity"] == 0.0
    assert all(r["method"] == "iobs" and r["sparsity"] == 0.5 for r in records[1:])
    assert sum(r["selected"] for r in records) == 1
    assert "SparseGPT = I-OBS(1)" in (out / "table.md").read_text()
    assert (out / "table1.png").stat().st_size > 5000
    # the fine-tuning control: same one-shot start, mask held in its dense step, reported beside I-OBS
    report = json.loads((out / "report.json").read_text())
    ctl, loop = report["control"]["history"], report["loop"]["history"]
    assert ctl[1]["metrics"] == loop[1]["metrics"] and ctl[2]["mask_changed"] == 0.0
    assert "I-OBS − control" in (out / "table.md").read_text()
    with pytest.raises(ValueError, match="sparsity"):
        table1.run(_args(table1, ["--sparsity", "1.5", "--out", str(tmp_path)]))


@pytest.mark.parametrize(
    "N,T,share",
    [
        (2400, 4, None),
        (10, 3, None),
        (2400, 4, 0.5),
        (2400, 4, 0.25),
        (20, 2, 0.5),
        (7, 3, 0.9),
        (100, 1, 0.5),
    ],
)
def test_table5_budget_split_spends_at_most_the_budget(N, T, share):
    n1, m = table5.budget_split(N, T, share)
    assert n1 >= 1 and (T == 1 or m >= 1)
    assert n1 + (T - 1) * m <= N
    assert N - (n1 + (T - 1) * m) < max(T - 1, 1)  # at most a rounding remainder left unspent
    if T == 1:
        assert n1 == N


@pytest.mark.parametrize("budget", ["total", "per-iteration"])
@pytest.mark.parametrize("N,T,L", [(2400, 4, 2000), (20, 2, 5), (7, 3, 1), (100, 1, 10)])
def test_table5_calibration_ranges_are_disjoint(budget, N, T, L):
    its, line = table5.calibration_starts(N, T, L, budget)
    assert len(its) == T and its[0][0] == 0 and line == (N, N + L)
    used = [set(range(lo, hi)) for lo, hi in its + [line]]
    assert all(u for u in used)
    assert sum(map(len, used)) == len(set().union(*used))  # no image in two ranges
    spent = sum(hi - lo for lo, hi in its)
    if budget == "total":
        assert spent <= N
    else:
        assert its[0] == (0, N) and spent == T * N
    with pytest.raises(ValueError, match="budget"):
        table5.calibration_starts(N, T, L, "both")


def test_table5_verdict_names_misses_and_their_significance():
    rows = [
        {"model": "m", "sparsity": "50%", "target": "-", "p": "0.01"},
        {"model": "m", "sparsity": "60%", "target": "MISS", "p": "0.3"},
        {"model": "m", "sparsity": "70%", "target": "MISS", "p": "0.001"},
        {"model": "m", "sparsity": "80%", "target": "PASS", "p": "1e-9"},
    ]
    text = table5.verdict_text(rows)
    assert text.startswith("Target overall: MISS (1 of 3 cells)")
    assert "misses at m 60%, m 70%, of which 1 significant" in text and text.endswith(": m 70%")
    assert table5.verdict_text([rows[3]]) == "Target overall: PASS (1 of 1 cells)"
    assert table5.verdict_text(rows[:1]).startswith("Target overall: -")
    assert table5._p_text(0.0) == "<1e-300" and table5._p_text(0.0123) == "0.012"
    rows[2]["p"] = table5._p_text(0.0)  # an underflowed p is the most significant, not unparsable
    assert table5.verdict_text(rows).endswith(": m 70%")
