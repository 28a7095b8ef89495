"""Each target's config: the CLI is generated from it, and --quick is applied once with today's semantics."""

from __future__ import annotations

import argparse

import pytest

from iobs.config import from_args, from_dict, to_dict
from iobs.reproduce import figure1, figure2, table1, table2, table5


def _config(mod, cls, argv):
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    args = p.parse_args(argv)
    if mod in (table2, figure2):
        return table2.config_from_args(args, cls)
    return from_args(cls, args)


def test_figure1_quick_fills_only_unset_counts():
    out = ["--out", "o"]
    cfg = _config(figure1, figure1.Figure1Config, out)
    assert (cfg.runs, cfg.digits, cfg.max_iter) == (20, 5, 500)
    cfg = _config(figure1, figure1.Figure1Config, [*out, "--quick"])
    assert (cfg.runs, cfg.digits, cfg.max_iter) == (3, 1, 250)
    cfg = _config(figure1, figure1.Figure1Config, [*out, "--quick", "--runs", "20", "--max-iter", "7"])
    assert (cfg.runs, cfg.digits, cfg.max_iter) == (20, 1, 7)  # an explicit value wins, even the default
    assert from_dict(figure1.Figure1Config, to_dict(cfg)) == cfg


def test_table5_quick_replaces_values_left_at_their_default():
    cfg = _config(table5, table5.Table5Config, ["--quick", "--grads", "60", "--val-size", "5000"])
    assert cfg.grads == 60  # explicit and not the default: kept
    assert cfg.val_size == 1000  # equal to the default: replaced, as before
    assert (cfg.block_size, cfg.test_limit, cfg.line_search_size) == (200, 2000, 1000)
    assert cfg.sparsity_lists == {"mlpnet": [0.5, 0.7, 0.9]}
    assert _config(table5, table5.Table5Config, []).sparsity_lists["mlpnet"][-1] == 0.98
    assert cfg.sparsities is None
    assert cfg.fisher_damping() == table5.DEFAULT_DAMPING
    assert _config(table5, table5.Table5Config, ["--damping-mode", "relative"]).fisher_damping() == 1e-2


def test_table1_quick_caps_the_iterations():
    assert _config(table1, table1.Table1Config, ["--quick"]).iterations == 5
    assert _config(table1, table1.Table1Config, ["--quick", "--iterations", "3"]).iterations == 3
    cfg = _config(table1, table1.Table1Config, ["--include", "a.*,re:b", "--exclude", "c"])
    assert (cfg.include, cfg.exclude, cfg.iterations) == (["a.*", "re:b"], ["c"], 10)


@pytest.mark.parametrize(
    "mod, cls, cap", [(table2, table2.Table2Config, 2), (figure2, figure2.Figure2Config, 3)]
)
def test_table2_and_figure2_quick_override_the_windows(mod, cls, cap):
    full = _config(mod, cls, [])
    assert (full.nsamples, full.seqlen, full.windows) == (16, 512, 24)
    assert full.iterations == (3 if mod is table2 else 8)
    assert full.settings == (list(table2.DEFAULT_SETTINGS) if mod is table2 else [table2.DEFAULT_SETTINGS[0]])
    cfg = _config(mod, cls, ["--quick", "--nsamples", "64", "--settings", "newton:lr=1", "finetune"])
    assert (cfg.nsamples, cfg.seqlen, cfg.windows, cfg.iterations) == (2, 128, 2, cap)
    assert cfg.settings == ["newton:lr=1", "finetune"]
    with pytest.raises(ValueError):
        _config(mod, cls, ["--patterns", "half"])
