"""One typed configuration shared by ``iobs prune``, :func:`iobs.prune.api.prune` and report.json.

Every field is declared with :func:`iobs.config.option`: its default here is the default of the command
line (generated from these fields), of the library and of what report.json records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from iobs._validate import check_int_range, check_sparsity, parse_nm
from iobs.config import csv_list, option
from iobs.data.calibration import CALIB_SOURCES
from iobs.obs.layer import METHODS as LAYER_SOLVERS
from iobs.obs.mask_search import WARM_STARTS
from iobs.prune.allocation import ALLOCATIONS, CURVES, ERROR_NORMS, PARAMS, check_params
from iobs.prune.decoder import SEQUENTIAL
from iobs.prune.dense_step import DENSE_STEPS
from iobs.prune.solve import LayerSolver
from iobs.utils import DTYPES

METHODS = (*LAYER_SOLVERS, "iobs")
_IOBS = "I-OBS (--method iobs); defaults = the best setting of the Table 2 search"

# fields that join the resume key only when set (added after runs were saved under the older keys)
_KEY_IF_SET = ("refit", "warm", "allocation", *PARAMS, "finetune_after", "schedule", "pruned_scale")
_ALLOC = "layer-wise sparsity allocation (--allocation owl|error); the global budget stays floor(s·Σn)"
_CONTROL = (
    "fine-tuning control of I-OBS: one-shot --method, then --finetune-after N rounds of the dense step "
    "with the mask fixed (the budget of I-OBS(N+1))"
)

# fields that do not change the pruned weights (left out of the resume key)
_NOT_IN_KEY = (
    "out",
    "overwrite",
    "eval",
    "eval_seqlen",
    "eval_max_windows",
    "eval_dense",
    "device",
    "resume",
    "nproc",  # like device: changes H only by the order of its float sums
    "stream",  # streaming gives the in-memory path's weights bit for bit
    "auto_stream",
    "diag_windows",
)


@dataclass
class PruneConfig:
    """Everything that defines a pruning run.

    Exactly one of ``sparsity`` (fraction pruned per layer, or per row with ``per_row``) and ``pattern``
    (N:M, keep N of every M consecutive inputs) is set; ``sparsity`` is 0.5 when neither is given.
    ``sequential="block"`` solves all layers of a block from one pass of the block's (pruned-upstream)
    inputs; ``"true"`` re-runs the block after each group of layers that share an input, so later layers
    see the already-pruned earlier ones.
    """

    model: str = option(
        help="smollm2-135m, tiny-llama|tiny-opt|tiny-gpt2|tiny-qwen2|tiny-phi, a folder or a hub id",
        positional=True,
        metavar="MODEL",
    )
    method: str = option("sparsegpt", choices=METHODS)
    sparsity: float | None = option(
        None, "fraction of weights pruned (default 0.5 unless --pattern)", exclusive="target", parse=float
    )
    pattern: str | None = option(None, "N:M semi-structured pattern, e.g. 2:4", exclusive="target", parse=str)
    calib: str = option("wiki", "calibration source: wiki, news, a text file, or random")
    nsamples: int = option(32, "calibration sequences")
    seqlen: int = option(512, "tokens per calibration sequence")
    seed: int = option(0)
    blocksize: int = option(128, "SparseGPT column block size")
    percdamp: float = option(0.01, "damping as a fraction of mean(diag H)")
    per_row: bool = option(False, "apply --sparsity in every row")
    refit: bool = option(False, "re-fit each layer's kept weights exactly on its mask after the solver")
    warm: str = option("sparsegpt", "warm start of --method/--layer-solver mask-search", choices=WARM_STARTS)
    allocation: str = option(
        "uniform",
        "uniform: every layer at --sparsity; owl: outlier-weighted (dense Wanda scores); error: equal "
        "marginal layer error per removed weight",
        choices=ALLOCATIONS,
        group=_ALLOC,
    )
    owl_lambda: float = option(PARAMS["owl_lambda"], "owl: block sparsities within s ± λ", group=_ALLOC)
    owl_m: float = option(PARAMS["owl_m"], "owl: an outlier is a Wanda score above M · mean", group=_ALLOC)
    alloc_step: float = option(
        PARAMS["alloc_step"], "error: grid spacing of the measured sparsities", group=_ALLOC
    )
    alloc_points: int = option(PARAMS["alloc_points"], "error: grid points on each side of s", group=_ALLOC)
    alloc_error: str = option(
        PARAMS["alloc_error"],
        "error: layer error as ‖(W−Ŵ)X‖²/‖WX‖² or absolute",
        choices=ERROR_NORMS,
        group=_ALLOC,
    )
    alloc_curves: str = option(
        PARAMS["alloc_curves"],
        "error: layer errors of the walk's solver, or of SparseGPT (cheaper for alps/mask-search)",
        choices=CURVES,
        group=_ALLOC,
    )
    sequential: str = option(
        "block",
        "block: all layers of a block from one pass; true: re-run after each group",
        choices=SEQUENTIAL,
    )
    include: list[str] | None = option(None, "comma-separated globs or re:REGEX", parse=csv_list)
    exclude: list[str] | None = option(None, "comma-separated globs or re:REGEX", parse=csv_list)
    device: str | None = option("auto", "auto, cpu, cuda, cuda:1 ...")
    nproc: int = option(1, "processes (torch.distributed: gloo on CPU, NCCL on CUDA) sharing the calibration")
    dtype: str = option("float32", choices=tuple(DTYPES))
    out: str | None = option(None, "output folder for the pruned checkpoint and report.json", parse=str)
    overwrite: bool = option(False, "replace an existing --out folder")
    resume: bool = option(True, "ignore finished blocks of an interrupted run of the same configuration")
    stream: bool = option(
        False, "load, prune and write one decoder block at a time from the checkpoint on disk"
    )
    auto_stream: bool = option(True, "stream when the checkpoint would not fit in the available memory")
    eval: list[str] = option(
        default_factory=list, help="comma-separated: wiki-test, news, FILE", parse=csv_list
    )
    eval_seqlen: int | None = option(None, "perplexity window (default --seqlen)", parse=int)
    eval_max_windows: int | None = option(None, parse=int)
    eval_dense: bool = option(False, "also evaluate the dense model (same windows)")
    iterations: int = option(3, "outer iterations (1 = one-shot)", group=_IOBS)
    dense_step: str = option("finetune", choices=DENSE_STEPS, group=_IOBS)
    lr: float = option(5e-5, "dense-step learning rate (Adam / Newton step size)", group=_IOBS)
    damping: float = option(0.01, "newton: λ as a fraction of mean(diag H)", group=_IOBS)
    epochs: int = option(1, "finetune: passes over the calibration batch", group=_IOBS)
    layer_solver: str = option("sparsegpt", choices=LAYER_SOLVERS, group=_IOBS)
    validation: list[str] = option(
        default_factory=lambda: ["wiki-val"],
        help="corpora to select the best on",
        parse=csv_list,
        group=_IOBS,
    )
    val_max_windows: int | None = option(16, "windows per validation corpus", parse=int, group=_IOBS)
    schedule: list[str] | None = option(
        None,
        "per-iteration targets t=1..T, e.g. 0.3,0.4,0.5 or 0.3,0.4,2:4 (the last = --sparsity/--pattern)",
        parse=csv_list,
        group=_IOBS,
    )
    pruned_scale: float = option(
        1.0, "dense step: movement of the currently pruned weights x this (1 = plain)", group=_IOBS
    )
    diag_windows: int = option(
        4, "windows of each iteration's batch for the diagnostic losses (0 = none)", group=_IOBS
    )
    finetune_after: int = option(
        0,
        "N rounds; round r = I-OBS iteration r+1's windows and dense step, mask held (0 = off)",
        group=_CONTROL,
    )

    def __post_init__(self):
        self.validate()

    def validate(self) -> PruneConfig:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty name or path, got {self.model!r}")
        _check_choice("method", self.method, METHODS)
        self._check_target()
        if not isinstance(self.calib, str) or not self.calib:
            raise ValueError(f"calib must be a calibration source name or file, got {self.calib!r}")
        check_int_range("nsamples", self.nsamples, 1, 10**6)
        check_int_range("seqlen", self.seqlen, 1, 10**7)
        check_int_range("seed", self.seed, 0, 2**63 - 1)
        check_int_range("blocksize", self.blocksize, 1, 10**7)
        check_int_range("nproc", self.nproc, 1, 4096)
        if self.nproc > self.nsamples:
            raise ValueError(
                f"nproc ({self.nproc}) must be at most nsamples ({self.nsamples}): each process takes its "
                "own share of the calibration samples"
            )
        if not isinstance(self.percdamp, (int, float)) or not 0 <= self.percdamp < 1e6:
            raise ValueError(
                f"percdamp must be a number >= 0 (a fraction of mean(diag H)), got {self.percdamp!r}"
            )
        _check_choice("sequential", self.sequential, SEQUENTIAL)
        _check_choice("warm", self.warm, WARM_STARTS)
        _check_choice("dtype", self.dtype, tuple(DTYPES))
        self.include, self.exclude = _patterns("include", self.include), _patterns("exclude", self.exclude)
        if isinstance(self.eval, str):
            self.eval = csv_list(self.eval)
        for name in ("eval_seqlen", "eval_max_windows"):
            if getattr(self, name) is not None:
                check_int_range(name, getattr(self, name), 1, 10**9)
        check_int_range("finetune_after", self.finetune_after, 0, 10**4)
        check_int_range("diag_windows", self.diag_windows, 0, 10**6)
        if self.method == "iobs" and self.finetune_after:
            raise ValueError(
                f"finetune_after={self.finetune_after} is the control of one-shot methods; the control of "
                "I-OBS(T) is --method <its --layer-solver> --finetune-after T-1"
            )
        if self.method == "iobs" or self.finetune_after:
            self._check_iobs()
        if self.stream:
            self._check_stream()
        self._check_allocation()
        self._check_variants()
        return self

    def _check_stream(self) -> None:
        if self.method == "iobs" or self.finetune_after:
            raise ValueError(
                "stream works with the one-shot layer solvers, not method='iobs' or finetune_after (a dense "
                f"step trains the whole model at once); choose one of {', '.join(LAYER_SOLVERS)} or drop "
                "--stream"
            )
        if not self.out:
            raise ValueError("stream writes each pruned block to the output checkpoint: give out (--out)")
        if self.nproc > 1:
            raise ValueError(
                f"stream runs in one process: nproc={self.nproc} with stream is not supported yet (every "
                "rank would write the checkpoint); drop --stream or --nproc"
            )
        if self.allocation != "uniform":
            raise ValueError(
                f"stream prunes one block at a time: allocation={self.allocation!r} needs a dense pre-pass "
                "over the whole model first; use allocation='uniform' with --stream"
            )

    def _check_allocation(self) -> None:
        check_params(
            self.allocation, 0.5 if self.sparsity is None else self.sparsity, self.allocation_params()
        )
        if self.allocation == "uniform":
            return
        if self.pattern is not None:
            raise ValueError(
                f"allocation {self.allocation!r} needs a sparsity fraction; with pattern {self.pattern!r} "
                "every layer keeps N of every M (use allocation='uniform')"
            )
        if self.per_row:
            raise ValueError(
                f"allocation {self.allocation!r} sets per-layer budgets; it cannot combine with per_row"
            )
        if self.schedule is not None:
            raise ValueError(
                f"allocation {self.allocation!r} plans the final target's per-layer budgets; it cannot "
                "combine with a sparsity schedule (use allocation='uniform' with --schedule)"
            )

    def allocation_params(self) -> dict:
        """The allocation's parameters (iobs.prune.allocation.PARAMS) as set here."""
        return {k: getattr(self, k) for k in PARAMS}

    def _check_variants(self) -> None:
        """schedule (I-OBS only, one target per iteration, ending at the target) and pruned_scale."""
        v = self.pruned_scale
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"pruned_scale must be a finite number >= 0, got {v!r}")
        if v != 1 and self.method != "iobs":
            raise ValueError(
                f"pruned_scale={v} applies to I-OBS's dense step (--method iobs); the control always "
                "keeps its mask"
            )
        if isinstance(self.schedule, str):
            self.schedule = csv_list(self.schedule)
        if self.schedule is None:
            return
        if self.method != "iobs":
            raise ValueError(f"schedule applies to --method iobs, got method={self.method!r}")
        if len(self.schedule) != self.iterations:
            raise ValueError(
                f"schedule must give one target per iteration ({self.iterations}), got {len(self.schedule)}: "
                f"{self.schedule}"
            )
        self.schedule = [_target_text(t) for t in self.schedule]
        if _parse_target(self.schedule[-1]) != (self.sparsity, self.pattern):
            raise ValueError(f"schedule must end at the target {self.target}, got {self.schedule[-1]!r}")

    def _check_target(self) -> None:
        if self.pattern is not None and self.sparsity is not None:
            raise ValueError(
                f"give either sparsity ({self.sparsity}) or pattern ({self.pattern!r}), not both"
            )
        if self.pattern is None:
            self.sparsity = check_sparsity(0.5 if self.sparsity is None else self.sparsity)
            return
        n, m = parse_nm(self.pattern)
        self.pattern = f"{n}:{m}"
        if self.per_row:
            raise ValueError("per_row applies to a sparsity fraction, not to an N:M pattern")

    def _check_iobs(self) -> None:
        check_int_range("iterations", self.iterations, 1, 10**4)
        check_int_range("epochs", self.epochs, 1, 10**4)
        _check_choice("dense_step", self.dense_step, DENSE_STEPS)
        _check_choice("layer_solver", self.layer_solver, LAYER_SOLVERS)
        for name in ("lr", "damping"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if isinstance(self.validation, str):
            self.validation = csv_list(self.validation)
        if not self.validation:
            raise ValueError("validation must name at least one corpus (e.g. wiki-val)")
        calib_text = CALIB_SOURCES.get(self.calib, self.calib)
        for v in self.validation:  # the loop selects on validation: it must be held out
            if v in (self.calib, calib_text):
                raise ValueError(
                    f"validation corpus {v!r} is the calibration source {self.calib!r}: choose a held-out "
                    "split (e.g. calib='wiki' with validation 'wiki-val')"
                )
        if self.val_max_windows is not None:
            check_int_range("val_max_windows", self.val_max_windows, 1, 10**9)

    @property
    def target(self) -> str:
        """Human label of the sparsity target: '50%' or '2:4'."""
        return self.pattern if self.pattern else f"{100 * self.sparsity:g}%"

    def target_at(self, t: int | None = None) -> tuple[float | None, str | None]:
        """(sparsity, pattern) of iteration ``t`` (the schedule's entry t; the target without one)."""
        if self.schedule is None or t is None:
            return self.sparsity, self.pattern
        return _parse_target(self.schedule[t - 1])

    def select_from(self) -> int:
        """The first iteration at the final target (only those can be the best iteration)."""
        final = self.target_at()
        return next(t for t in range(1, self.iterations + 1) if self.target_at(t) == final)

    def solver(self, t: int | None = None) -> LayerSolver:
        """The layer solver: ``method`` (one-shot) or ``layer_solver`` (I-OBS, at iteration t's target)."""
        method = self.layer_solver if self.method == "iobs" else self.method
        sparsity, pattern = self.target_at(t) if self.method == "iobs" else (self.sparsity, self.pattern)
        return LayerSolver(
            method,
            sparsity,
            pattern,
            self.per_row,
            self.blocksize,
            self.percdamp,
            self.refit,
            self.warm,
        )

    def key(self) -> str:
        """Hash of the fields that determine the pruned weights (names the resume state)."""
        from iobs.config import to_dict

        d = {k: v for k, v in to_dict(self).items() if k not in _NOT_IN_KEY}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in _KEY_IF_SET:  # options added later: at their default, earlier keys stay valid
            if d[name] == defaults[name]:
                del d[name]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _target_text(value) -> str:
    """A schedule entry as text ('0.3' or '2:4'), checked."""
    text = str(value).strip()
    try:
        sparsity, pattern = _parse_target(text)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"schedule entries must be sparsities in [0, 1) or N:M patterns, got {value!r} ({e})"
        ) from None
    return pattern if pattern else repr(sparsity)


def _parse_target(text: str) -> tuple[float | None, str | None]:
    if ":" in text:
        n, m = parse_nm(text, "schedule")
        return None, f"{n}:{m}"
    return check_sparsity(float(text)), None


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _patterns(name: str, value) -> list[str] | None:
    """A list of non-empty layer-name patterns (a comma-separated string is split), or None."""
    if isinstance(value, str):
        value = csv_list(value)
    if value is not None and not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{name} must be a list of non-empty name patterns, got {value!r}")
    return value
