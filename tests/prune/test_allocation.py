"""Layer-wise sparsity allocation: exact global budgets, OWL's ratios, the error-driven optimum, wiring."""

import copy
import itertools
import json
import random
from dataclasses import replace

import pytest
import torch

from iobs._validate import n_pruned
from iobs.data.calibration import random_ids
from iobs.models.tiny import tiny_model
from iobs.prune.allocation import (
    MAX_SPARSITY,
    allocate,
    counts_from_sparsities,
    dense_stats,
    error_counts,
    global_budget,
    lower_hull,
    outlier_density,
    owl_sparsities,
    plan,
    round_to_total,
)
from iobs.prune.config import PruneConfig
from iobs.prune.decoder import prune_decoder
from iobs.prune.layers import find_layers, get_weight
from iobs.prune.solve import LayerSolver

D = torch.float64


def test_round_to_total_is_exact_bounded_and_nearest():
    rng = random.Random(0)
    for _ in range(200):
        L = rng.randint(1, 8)
        n = [rng.randint(1, 50) for _ in range(L)]
        x = [rng.uniform(0, m) for m in n]
        total = rng.randint(0, sum(n))
        k = round_to_total(x, total, [0] * L, n)
        assert sum(k) == total and all(0 <= a <= m for a, m in zip(k, n))
        if total == round(sum(x)):  # a consistent target moves no count by a whole unit or more
            assert all(abs(a - v) < 1 + 1e-12 for a, v in zip(k, x))
    with pytest.raises(ValueError, match="cannot be met"):
        round_to_total([1.0, 1.0], 5, [0, 0], [2, 2])


def test_owl_sparsities_keep_the_weighted_budget_and_order():
    rng = random.Random(1)
    for _ in range(100):
        U = rng.randint(2, 12)
        dens = [rng.random() for _ in range(U)]
        n = [rng.randint(100, 10_000) for _ in range(U)]
        s, lam = rng.uniform(0.05, 0.95), rng.uniform(0, 0.5)
        su = owl_sparsities(dens, n, s, lam)
        assert sum(a * b for a, b in zip(su, n)) == pytest.approx(s * sum(n), rel=1e-9)
        assert all(0 <= v <= MAX_SPARSITY for v in su)
        for i, j in itertools.combinations(range(U), 2):  # more outliers -> pruned no more
            if dens[i] > dens[j]:
                assert su[i] <= su[j] + 1e-12
        if max(dens) > min(dens) and 2 * lam <= min(s, MAX_SPARSITY - s):  # no clipping: spread is 2λ
            assert max(su) - min(su) == pytest.approx(2 * lam)
    assert owl_sparsities([0.3, 0.3], [5, 7], 0.6, 0.2) == pytest.approx([0.6, 0.6])  # no spread: uniform
    with pytest.raises(ValueError, match="owl_lambda"):
        owl_sparsities([0.1, 0.2], [5, 7], 0.6, 0.7)


def test_counts_meet_the_global_budget_exactly():
    rng = random.Random(2)
    for _ in range(100):
        n = [rng.randint(1, 5000) for _ in range(rng.randint(1, 30))]
        s = rng.choice([0.5, 0.6, 0.7, 0.29, rng.random() * MAX_SPARSITY])
        su = owl_sparsities([rng.random() for _ in n], n, s, 0.1)
        k = counts_from_sparsities(su, n, s)
        assert sum(k) == global_budget(s, n) == n_pruned(s, sum(n))
        # the solver's own count of the fraction handed to it is exactly k
        assert all(n_pruned(a / m, m) == a for a, m in zip(k, n))


def test_outlier_density_counts_scores_above_m_times_mean():
    a, b = torch.tensor([1.0, 1.0, 1.0, 9.0]), torch.tensor([0.0, 20.0])  # pooled mean = 32 / 6
    assert outlier_density([a, b], 1.5) == pytest.approx(2 / 6)  # 9 and 20 exceed 8
    assert outlier_density([a, b], 3.0) == pytest.approx(1 / 6)


def test_lower_hull_lies_below_every_point():
    rng = random.Random(3)
    for _ in range(50):
        pts = [(k, rng.random()) for k in sorted(rng.sample(range(100), rng.randint(2, 9)))]
        hull = lower_hull(pts)
        assert hull[0] == pts[0] and hull[-1][0] == pts[-1][0] and set(hull) <= set(pts)
        slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in zip(hull, hull[1:])]
        assert all(a < b for a, b in zip(slopes, slopes[1:]))
        for k, e in pts:  # every point on or above the hull's interpolation
            assert e >= _interp(hull, k) - 1e-12


def _interp(pts, k):
    for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
        if x1 <= k <= x2:
            return y1 + (y2 - y1) * (k - x1) / (x2 - x1)
    raise AssertionError(k)


def test_error_counts_reach_the_brute_force_optimum():
    rng = random.Random(4)
    for _ in range(40):
        L = 3
        curves = []
        for _ in range(L):
            grid = sorted(rng.sample(range(0, 9), 4))
            a, b = rng.uniform(0, 2), rng.uniform(0, 1)
            curves.append([(k, a * k * k + b * k) for k in grid])  # convex, like layer errors
        lo, hi = sum(c[0][0] for c in curves), sum(c[-1][0] for c in curves)
        total = rng.randint(lo, hi)
        k = error_counts(curves, total)
        assert sum(k) == total
        best = min(
            sum(_interp(c, x) for c, x in zip(curves, ks))
            for ks in itertools.product(*[range(c[0][0], c[-1][0] + 1) for c in curves])
            if sum(ks) == total
        )
        assert sum(_interp(c, x) for c, x in zip(curves, k)) == pytest.approx(best, abs=1e-9)
    with pytest.raises(ValueError, match="alloc_step or alloc_points"):
        error_counts([[(2, 0.1), (4, 0.3)], [(2, 0.1), (4, 0.2)]], 9)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", dtype=D), random_ids(3, 12, vocab=256, seed=1)


@pytest.mark.parametrize("allocation", ["owl", "error"])
def test_walk_with_allocation_prunes_exactly_the_global_budget(tiny, allocation):
    dense, ids = tiny
    s = 0.6
    solver = LayerSolver("sparsegpt", s)
    fractions, info = plan(copy.deepcopy(dense), ids, solver, allocation, s, owl_lambda=0.1, owl_m=2.0)
    model = copy.deepcopy(dense)
    records = prune_decoder(model, ids, replace(solver, layer_sparsity=fractions), progress=False)
    layers = find_layers(model)
    N = sum(get_weight(m).numel() for m in layers.values())
    zeros = sum(int((get_weight(m) == 0).sum()) for m in layers.values())  # random weights: zeros = pruned
    assert zeros == sum(r["numel"] - r["kept"] for r in records) == n_pruned(s, N) == info["pruned"]
    spars = {r["name"]: r["sparsity"] for r in records}
    assert spars == pytest.approx(info["layer_sparsity"]) and max(spars.values()) - min(spars.values()) > 0.05
    if allocation == "owl":  # every layer of a block near the block's sparsity (integer rounding only)
        assert set(info["density"]) == {"0", "1"}
        json.dumps(info)
    else:
        for r in records:  # within the measured grid s ± 2 · 0.1 (in whole weights)
            assert n_pruned(s - 0.2, r["numel"]) <= r["numel"] - r["kept"] <= n_pruned(s + 0.2, r["numel"])


def test_error_allocation_lowers_the_summed_relative_error_of_its_curves(tiny):
    dense, ids = tiny
    s = 0.6
    st = dense_stats(
        copy.deepcopy(dense), ids, solver=LayerSolver("sparsegpt", s), grid=[0.4, 0.5, 0.6, 0.7, 0.8]
    )
    _, info = allocate(st, "error", s)
    cost = sum(
        _interp(info["curves"][n], round(f * m))
        for (n, f), m in zip(info["layer_sparsity"].items(), st.numels)
    )
    at_s = sum(_interp(info["curves"][n], n_pruned(s, m)) for n, m in zip(st.names, st.numels))
    assert cost <= at_s + 1e-12


def test_layer_sparsity_map_equal_to_uniform_is_bit_identical_and_must_cover_every_layer(tiny):
    dense, ids = tiny
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_decoder(a, ids, LayerSolver("sparsegpt", 0.5), progress=False)
    full = tuple((n, 0.5) for n in find_layers(b))
    prune_decoder(b, ids, LayerSolver("sparsegpt", 0.5, layer_sparsity=full), progress=False)
    for (n, m1), m2 in zip(find_layers(a).items(), find_layers(b).values()):
        assert torch.equal(get_weight(m1), get_weight(m2)), n
    hash(LayerSolver(layer_sparsity=full))
    with pytest.raises(ValueError, match="no entry in layer_sparsity"):
        prune_decoder(copy.deepcopy(dense), ids, LayerSolver(layer_sparsity=full[1:]), progress=False)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"allocation": "owl", "pattern": "2:4"}, "needs a sparsity fraction"),
        ({"allocation": "error", "per_row": True}, "per_row"),
        ({"allocation": "owl", "owl_lambda": 0.6}, "owl_lambda"),
        ({"allocation": "owl", "owl_lambda": -0.1}, "owl_lambda"),
        ({"owl_m": 0.0}, "owl_m"),
        ({"allocation": "error", "alloc_points": 0}, "alloc_points"),
        ({"allocation": "error", "alloc_step": 0.0}, "alloc_step"),
        ({"allocation": "error", "alloc_error": "l1"}, "alloc_error"),
        ({"allocation": "error", "alloc_curves": "obc"}, "alloc_curves"),
        ({"allocation": "owl", "sparsity": 0.995}, "cannot meet"),
        ({"allocation": "best"}, "allocation must be one of"),
    ],
)
def test_config_rejects_bad_allocation_input(kw, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(model="tiny-llama", **kw)


def test_config_key_and_cli(tmp_path):
    from iobs.cli import main

    assert PruneConfig(model="m", sparsity=0.995).allocation == "uniform"  # uniform: every fraction as before
    base = PruneConfig(model="m").key()
    assert PruneConfig(model="m", allocation="owl").key() != base
    assert (
        PruneConfig(model="m", allocation="owl", owl_lambda=0.1).key()
        != PruneConfig(model="m", allocation="owl").key()
    )
    out = tmp_path / "o"
    argv = [
        "prune",
        "tiny-llama",
        "--sparsity",
        "0.7",
        "--allocation",
        "owl",
        "--owl-m",
        "2",
        "--calib",
        "random",
    ]
    argv += ["--nsamples", "2", "--seqlen", "16", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    N = sum(r["numel"] for r in report["layers"])
    assert report["summary"]["kept"] == N - n_pruned(0.7, N) and report["allocation"]["allocation"] == "owl"
    assert {r["name"]: r["sparsity"] for r in report["layers"]} == pytest.approx(
        report["allocation"]["layer_sparsity"]
    )


def test_iobs_uses_the_allocation_in_its_projections():
    from iobs.prune.api import prune

    cfg = PruneConfig(
        model="tiny-llama",
        method="iobs",
        sparsity=0.6,
        allocation="error",
        iterations=1,
        dense_step="none",
        calib="wiki",
        nsamples=2,
        seqlen=16,
        device="cpu",
        val_max_windows=1,
    )
    report = prune(cfg, progress=False)
    N = report["summary"]["params"]
    assert N - report["summary"]["kept"] == n_pruned(0.6, N) == report["allocation"]["pruned"]
    spars = {r["name"]: r["sparsity"] for r in report["layers"]}
    assert spars == pytest.approx(report["allocation"]["layer_sparsity"]) and len(set(spars.values())) > 1


def test_allocation_cannot_stream(tmp_path):
    """--stream prunes block by block: a non-uniform allocation (dense pre-pass) is refused, and the
    automatic choice of streaming keeps such a run in memory instead of silently going uniform."""
    from iobs.prune import stream

    with pytest.raises(ValueError, match="allocation='owl'"):
        PruneConfig(model="m", allocation="owl", stream=True, out=str(tmp_path / "o"))
    cfg = PruneConfig(model="m", allocation="owl", out=str(tmp_path / "o"))
    assert "allocation" in stream._cannot_stream(cfg)
    assert stream._cannot_stream(PruneConfig(model="m", out=str(tmp_path / "o"))) == ""
