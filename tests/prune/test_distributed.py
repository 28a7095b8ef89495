"""torch.distributed: 2 gloo processes on loopback give the single-process masks (weights: float sums)."""

import json

import pytest
import torch

from iobs.config import to_dict
from iobs.data.calibration import random_ids
from iobs.models.tiny import tiny_model
from iobs.prune import distributed
from iobs.prune.config import PruneConfig
from iobs.prune.decoder import prune_decoder
from iobs.prune.dense_step import finetune_step, newton_step
from iobs.prune.layers import find_layers, get_weight
from iobs.prune.solve import LayerSolver

D = torch.float64


def _walk_worker(arch: str, sequential: str, pattern: str | None) -> dict:
    """One rank: the decoder walk and a Newton dense step of a tiny float64 model; weights back."""
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    model, ids = tiny_model(arch, dtype=D), random_ids(5, 10, vocab=256, seed=2)
    solver = LayerSolver("sparsegpt", None if pattern else 0.5, pattern)
    records = prune_decoder(model, ids, solver, sequential=sequential, progress=False, device="cpu")
    walked = {n: get_weight(m).clone() for n, m in find_layers(model).items()}
    batches = list(random_ids(3, 10, vocab=256, seed=3).split(1))
    group = distributed.active()
    step = newton_step(model, batches, _lm_loss, lr=0.1, group=group)
    stepped = {n: get_weight(m).clone() for n, m in find_layers(model).items()}
    # fine-tuning, data-parallel: one step on the mean gradient of R batches = one step on their union
    pair = list(random_ids(2, 10, vocab=256, seed=5).split(1))
    finetune_step(model, pair if group else [torch.cat(pair)], _lm_loss, lr=1e-3, group=group)
    tuned = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {
        "records": records,
        "walked": walked,
        "stepped": stepped,
        "loss": step["loss_before"],
        "tuned": tuned,
    }


def _lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def _single(arch: str, sequential: str, pattern: str | None) -> dict:
    n = torch.get_num_threads()
    try:
        return _walk_worker(arch, sequential, pattern)
    finally:
        torch.set_num_threads(n)


def _compare(one: dict, two: dict, tol: float) -> None:
    for name, W in one["walked"].items():
        W2 = two["walked"][name]
        assert torch.equal(W != 0, W2 != 0), f"{name}: masks differ"
        assert float((W - W2).abs().max()) <= tol * float(W.abs().max()), name
        torch.testing.assert_close(two["stepped"][name], one["stepped"][name], rtol=1e-9, atol=1e-11)
    keys = ("name", "block", "group", "tokens", "kept")
    assert [{k: r[k] for k in keys} for r in one["records"]] == [
        {k: r[k] for k in keys} for r in two["records"]
    ]
    for r1, r2 in zip(one["records"], two["records"]):
        assert r2["error"] == pytest.approx(r1["error"], rel=1e-9)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-12)
    for name, p in one["tuned"].items():
        torch.testing.assert_close(two["tuned"][name], p, rtol=1e-9, atol=1e-11)


CASES = {"llama": ("llama", "block", None), "opt": ("opt", "true", "2:4")}
CLI = dict(model="tiny-llama", calib="random", nsamples=4, seqlen=16)


def _ranks_worker(out: str) -> dict:
    """One rank of the 2-process run: every walk case, then `iobs prune --nproc 2`'s worker (to ``out``)."""
    from iobs.commands.prune import worker

    res = {case: _walk_worker(*args) for case, args in CASES.items()}
    res["cli"] = worker(to_dict(PruneConfig(**CLI, nproc=2, out=out)), 1, False)
    return res


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results of one 2-process gloo launch (one launch: spawning costs seconds)."""
    out = tmp_path_factory.mktemp("dist") / "two"
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        return out, distributed.launch(_ranks_worker, 2, (str(out),))
    finally:
        mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_processes_match_one_process(case, ranks):
    one = _single(*CASES[case])
    _, res = ranks
    assert sorted(res) == [0, 1]
    for r in (0, 1):  # both ranks hold the same pruned model
        _compare(one, res[r][case], tol=1e-12)
    assert {rec["rank"] for rec in res[0][case]["records"]} == {0, 1}  # the solves were spread over both


@pytest.mark.slow
def test_nproc_cli_worker_writes_once_and_matches(ranks, tmp_path):
    """`iobs prune --nproc 2`'s workers (float32 tiny-llama): rank 0 alone writes the checkpoint; the masks
    are the single-process masks and weights differ by float32 summation order only."""
    from safetensors.torch import load_file

    from iobs.prune.api import prune

    out, res = ranks
    assert res[1]["cli"] is None and res[0]["cli"]["processes"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["two"]  # no state or tmp folder left
    prune(PruneConfig(**CLI, out=str(tmp_path / "one")), progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["key"] == PruneConfig(**CLI).key()  # nproc is not part of the resume key
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(out / "model.safetensors")
    for k in a:
        assert torch.equal(a[k] != 0, b[k] != 0), k
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)


def test_shard_covers_every_sample_once():
    for n in (2, 5, 7):
        for world in (1, 2, 3):
            if n < world:
                continue
            idx = [j for r in range(world) for j in range(n)[distributed.Group(r, world).shard(n)]]
            assert idx == list(range(n))
    with pytest.raises(ValueError, match="nsamples"):
        distributed.Group(0, 3).shard(2)


def test_owners_balance_solve_cost_and_agree_across_ranks():
    model = tiny_model("llama")
    layers = {n: m for n, m in find_layers(model).items() if ".0." in n}
    cost = {n: distributed.solve_cost(m) for n, m in layers.items()}
    owners = distributed.Group(0, 2).owners(layers)
    assert owners == distributed.Group(1, 2).owners(layers)
    load = [sum(c for n, c in cost.items() if owners[n] == r) for r in (0, 1)]
    # longest-first greedy is within 4/3 of the best split; here check against brute force over all splits
    names = list(cost)
    best = min(
        max(sum(cost[n] for k, n in enumerate(names) if (s >> k) & 1 == r) for r in (0, 1))
        for s in range(2 ** len(names))
    )
    assert max(load) <= 4 / 3 * best


def test_nproc_option_is_checked_and_outside_the_key():
    assert PruneConfig(model="m", nproc=2).key() == PruneConfig(model="m").key()
    with pytest.raises(ValueError, match="nproc"):
        PruneConfig(model="m", nproc=0)
    with pytest.raises(ValueError, match="nproc .* nsamples"):
        PruneConfig(model="m", nproc=4, nsamples=3)


def test_nproc_without_launcher_is_a_clear_error(monkeypatch):
    from iobs.prune.api import prune

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="nproc=2 needs 2 processes"):
        prune(PruneConfig(model="tiny-llama", calib="random", nsamples=2, seqlen=8, nproc=2), progress=False)


def test_reduce_hook_runs_once_on_exit_and_not_after_an_error():
    from iobs.prune.hessian import accumulate_hessians

    model = tiny_model("llama", dtype=D)
    layers = find_layers(model)
    ids = random_ids(1, 8, vocab=256, seed=4)
    seen = []

    def reduce(acc):  # sees the finished sums, hooks already removed
        seen.append({n: a.tokens for n, a in acc.items()})
        model(ids)

    with accumulate_hessians(layers, reduce=reduce):
        model(ids)
    assert seen == [{n: 8 for n in layers}]
    with pytest.raises(RuntimeError, match="boom"):
        with accumulate_hessians(layers, reduce=reduce):
            raise RuntimeError("boom")
    assert len(seen) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_walk_matches_cpu():
    """The decoder walk with blocks visiting the GPU (model offloaded on the CPU) gives the CPU masks."""
    ids = random_ids(3, 12, vocab=256, seed=1)
    cpu, gpu = tiny_model("llama", dtype=D), tiny_model("llama", dtype=D)
    solver = LayerSolver("sparsegpt", 0.5)
    rc = prune_decoder(cpu, ids, solver, progress=False, device="cpu")
    rg = prune_decoder(gpu, ids, solver, progress=False, device="cuda")
    assert next(gpu.parameters()).device.type == "cpu"  # offload: the model stays where it was
    for (name, a), b in zip(find_layers(cpu).items(), find_layers(gpu).values()):
        assert torch.equal(get_weight(a) != 0, get_weight(b) != 0), name
        torch.testing.assert_close(get_weight(b), get_weight(a), rtol=1e-8, atol=1e-10)
    assert [r["error"] for r in rg] == pytest.approx([r["error"] for r in rc], rel=1e-8)


def test_stream_with_several_processes_is_refused(monkeypatch, tmp_path):
    from iobs.prune.api import prune

    with pytest.raises(ValueError, match="stream runs in one process"):
        PruneConfig(model="m", nproc=2, stream=True, out=str(tmp_path / "o"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    cfg = PruneConfig(
        model="tiny-llama", stream=True, calib="random", nsamples=2, seqlen=8, out=str(tmp_path / "o")
    )
    with pytest.raises(ValueError, match="2 processes were started"):
        prune(cfg, progress=False)
    assert not (tmp_path / "o").exists()
