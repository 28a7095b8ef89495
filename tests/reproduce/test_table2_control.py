"""Table 2 / Figure 2 analogs carry the fine-tuning control beside I-OBS (tiny random Llama, quick sizes)."""

from __future__ import annotations

import pytest

from iobs.reproduce import figure2, table2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2")
    cfg = table2.Table2Config(
        model="tiny-llama", patterns="0.5", settings=["finetune:lr=1e-3"], quick=True, out=str(out)
    )
    return cfg, table2.experiment(cfg)


def test_table2_shows_the_control_and_the_ratio(runs):
    cfg, rs = runs
    (run,) = rs
    ctl = run["control"]
    assert [h["label"] for h in ctl["history"]] == ["dense", "sparsegpt", "sparsegpt+FT(1)"]
    # iteration 1 of both is the same one-shot SparseGPT (same windows): identical perplexities
    one = {r["name"]: next(h for h in r["history"] if h["iteration"] == 1) for r in (run, ctl)}
    assert one[run["name"]]["metrics"] == one[ctl["name"]]["metrics"]
    main, tried = table2.summarize(rs, max_t=2)
    row = next(r for r in main if r["method"].startswith("I-OBS"))
    control_row = next(r for r in main if "control" in r["method"])
    for c in ("wiki-test", "news"):
        assert row[f"÷ control {c}"] == pytest.approx(row[c] / control_row[c])
    files = table2.render(rs, cfg, 1.0, {})
    assert "÷ control wiki-test" in files["table2.md"] and "control" in files["table2.md"]
    assert "control" in files["results.json"]["runs"][0]


def test_figure2_rows_carry_the_control(runs):
    cfg, rs = runs
    files = figure2.render(rs, cfg, 1.0, {})
    rows = files["figure2.json"]["rows"]
    second = next(r for r in rows if r["iteration"] == 2)
    assert second["÷ control news"] == pytest.approx(second["news"] / second["control news"])
    assert "mask changed" in second
