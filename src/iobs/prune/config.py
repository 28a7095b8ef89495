"""One typed configuration shared by ``iobs prune``, :func:`iobs.prune.api.prune` and report.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from iobs._validate import check_int_range, check_sparsity, parse_nm

METHODS = ("sparsegpt", "obc", "wanda", "magnitude", "iobs")
LAYER_SOLVERS = ("sparsegpt", "obc", "wanda", "magnitude")
DENSE_STEPS = ("finetune", "newton", "none")
SEQUENTIAL = ("block", "true")
DTYPES = ("float32", "float64", "bfloat16", "float16")

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
)


@dataclass
class PruneConfig:
    """Everything that defines a pruning run.

    Exactly one of ``sparsity`` (fraction pruned per layer, or per row with ``per_row``) and ``pattern``
    (N:M, keep N of every M consecutive inputs) is set. ``sequential="block"`` solves all layers of a
    block from one pass of the block's (pruned-upstream) inputs; ``"true"`` re-runs the block after each
    group of layers that share an input, so later layers see the already-pruned earlier ones.
    """

    model: str
    method: str = "sparsegpt"
    sparsity: float | None = 0.5
    pattern: str | None = None
    calib: str = "wiki"
    nsamples: int = 32
    seqlen: int = 512
    seed: int = 0
    blocksize: int = 128
    percdamp: float = 0.01
    per_row: bool = False
    sequential: str = "block"
    include: list[str] | None = None
    exclude: list[str] | None = None
    device: str | None = "auto"
    dtype: str = "float32"
    out: str | None = None
    overwrite: bool = False
    resume: bool = True
    eval: list[str] = field(default_factory=list)
    eval_seqlen: int | None = None
    eval_max_windows: int | None = None
    eval_dense: bool = False
    # method="iobs" (the I-OBS outer loop); defaults = the setting that won the Table 2 search
    iterations: int = 3
    dense_step: str = "finetune"
    lr: float = 5e-5
    damping: float = 0.01
    epochs: int = 1
    layer_solver: str = "sparsegpt"
    validation: list[str] = field(default_factory=lambda: ["wiki-val"])
    val_max_windows: int | None = 16

    def __post_init__(self):
        self.validate()

    def validate(self) -> PruneConfig:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty name or path, got {self.model!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.pattern is not None and self.sparsity is not None:
            raise ValueError(
                f"give either sparsity ({self.sparsity}) or pattern ({self.pattern!r}), not both"
            )
        if self.pattern is None and self.sparsity is None:
            raise ValueError("one of sparsity (a fraction in [0, 1)) or pattern ('N:M') is required")
        if self.sparsity is not None:
            self.sparsity = check_sparsity(self.sparsity)
        if self.pattern is not None:
            n, m = parse_nm(self.pattern)
            self.pattern = f"{n}:{m}"
            if self.per_row:
                raise ValueError("per_row applies to a sparsity fraction, not to an N:M pattern")
        if not isinstance(self.calib, str) or not self.calib:
            raise ValueError(f"calib must be a calibration source name or file, got {self.calib!r}")
        check_int_range("nsamples", self.nsamples, 1, 10**6)
        check_int_range("seqlen", self.seqlen, 1, 10**7)
        check_int_range("seed", self.seed, 0, 2**63 - 1)
        check_int_range("blocksize", self.blocksize, 1, 10**7)
        if not isinstance(self.percdamp, (int, float)) or not 0 <= self.percdamp < 1e6:
            raise ValueError(
                f"percdamp must be a number >= 0 (a fraction of mean(diag H)), got {self.percdamp!r}"
            )
        if self.sequential not in SEQUENTIAL:
            raise ValueError(f"sequential must be one of {SEQUENTIAL}, got {self.sequential!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("include", "exclude"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = [p for p in v.split(",") if p]
                setattr(self, name, v)
            if v is not None and not all(isinstance(p, str) and p for p in v):
                raise ValueError(f"{name} must be a list of non-empty name patterns, got {v!r}")
        if isinstance(self.eval, str):
            self.eval = [e for e in self.eval.split(",") if e]
        if self.method == "iobs":
            check_int_range("iterations", self.iterations, 1, 10**4)
            check_int_range("epochs", self.epochs, 1, 10**4)
            if self.dense_step not in DENSE_STEPS:
                raise ValueError(
                    f"dense_step must be one of {', '.join(DENSE_STEPS)}, got {self.dense_step!r}"
                )
            if self.layer_solver not in LAYER_SOLVERS:
                raise ValueError(
                    f"layer_solver must be one of {', '.join(LAYER_SOLVERS)}, got {self.layer_solver!r}"
                )
            for name in ("lr", "damping"):
                v = getattr(self, name)
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
            if isinstance(self.validation, str):
                self.validation = [v for v in self.validation.split(",") if v]
            if not self.validation:
                raise ValueError("validation must name at least one corpus (e.g. wiki-val)")
            if self.val_max_windows is not None:
                check_int_range("val_max_windows", self.val_max_windows, 1, 10**9)
        if self.eval_seqlen is not None:
            check_int_range("eval_seqlen", self.eval_seqlen, 1, 10**7)
        if self.eval_max_windows is not None:
            check_int_range("eval_max_windows", self.eval_max_windows, 1, 10**9)
        return self

    @property
    def target(self) -> str:
        """Human label of the sparsity target: '50%' or '2:4'."""
        return self.pattern if self.pattern else f"{100 * self.sparsity:g}%"

    def layer_kwargs(self) -> dict:
        """Keyword options passed to the layer solver."""
        return {"per_row": self.per_row, "blocksize": self.blocksize, "percdamp": self.percdamp}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PruneConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown PruneConfig fields {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def key(self) -> str:
        """Hash of the fields that determine the pruned weights (names the resume state)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_KEY}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
