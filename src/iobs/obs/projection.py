"""The OBS projection: the best way to zero a set of weights under a quadratic model.

For a quadratic model q(θ) = (θ − θ⁺)ᵀ H (θ − θ⁺) and a kept set Q (``mask``, True = kept),
S = [d] \\ Q, the exact OBS update is

    θ_Q = θ⁺_Q + H_QQ⁻¹ H_QS θ⁺_S,   θ_S = 0,

which equals (I − H⁻¹ Hˢ) θ⁺ of the paper but is computed with a Cholesky solve on H_QQ, never
with H⁻¹. Its cost (the OBS saliency of S) is θ⁺_Sᵀ ([H⁻¹]_SS)⁻¹ θ⁺_S.

Supports are chosen by
* ``greedy_obs`` — OBC-style one-at-a-time removal with an explicit (well-conditioned) Hinv,
  batched over rows, optionally under an N:M budget;
* ``greedy_obs_lowrank`` — the same greedy rule for H = AᵀA + λI at any λ > 0, through the
  n×n system (λI + A_R A_Rᵀ) while |R| > n (explicit d×d inverse downdates are wrong at small λ);
* ``exact_support`` — enumeration of all C(d, k) supports (tiny d only).
"""

from __future__ import annotations

import math

import torch

from iobs._validate import check_finite, check_int_range, check_k, check_shape, parse_nm
from iobs.obs.curvature import Curvature
from iobs.obs.damping import cholesky_or_raise

#: ``exact_support`` refuses problems with more candidate supports than this.
EXACT_MAX_SUPPORTS = 200_000


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _as_rows(theta: torch.Tensor, mask: torch.Tensor | None, d: int):
    if theta.dim() not in (1, 2):
        raise ValueError(f"theta_plus must have shape (d,) or (r, d), got {tuple(theta.shape)}")
    vec = theta.dim() == 1
    rows = theta.unsqueeze(0) if vec else theta
    check_shape("theta_plus", rows, (None, d))
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor (True = kept), got dtype {mask.dtype}")
        m = mask.unsqueeze(0) if mask.dim() == 1 else mask
        if m.shape[-1] != d or m.dim() != 2 or m.shape[0] not in (1, rows.shape[0]):
            raise ValueError(f"mask must have shape (d,) or ({rows.shape[0]}, {d}), got {tuple(mask.shape)}")
        mask = m.expand(rows.shape[0], d).to(rows.device)
    return rows, mask, vec


# ----------------------------------------------------------------------------------------------
# exact OBS update for a chosen support
# ----------------------------------------------------------------------------------------------
def obs_project(
    theta_plus: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """argmin over supp(θ) ⊆ Q of (θ − θ⁺)ᵀ H (θ − θ⁺): θ_Q = θ⁺_Q + H_QQ⁻¹ H_QS θ⁺_S, θ_S = 0.

    ``theta_plus`` is (d,) or (r, d); ``mask`` (True = kept) is (d,) or (r, d) (per-row supports);
    ``H`` (d, d) is shared. When all rows share one mask, one Cholesky factorisation of H_QQ serves all;
    otherwise each row's kept coordinates are gathered (``support_index``) and the rows are solved as a
    batch (``chunk`` at a time) of m×m systems H[Q_r, Q_r], m = the largest |Q_r| (identity on padding).
    """
    check_shape("H", H, (H.shape[0], H.shape[0]))
    d = H.shape[0]
    rows, mask, vec = _as_rows(theta_plus, mask, d)
    H = H.to(rows)
    keep = mask.to(rows.dtype)
    rhs = ((rows * (1 - keep)) @ H) * keep  # (H_QS θ⁺_S) on Q, 0 on S  (H symmetric)
    if bool((mask == mask[:1]).all()):  # one shared support: one factorisation of H_QQ
        u = keep[0]
        L = cholesky_or_raise(
            H * torch.outer(u, u) + torch.diag(1 - u), "H restricted to the kept support (H_QQ)"
        )
        out = (rows + torch.cholesky_solve(rhs.T, L).T) * u
        return out.squeeze(0) if vec else out
    out = rows * keep
    idx, valid = support_index(mask)
    if idx.shape[1] == 0:
        return out.squeeze(0) if vec else out
    chunk = max(1, min(chunk, (1 << 28) // max(1, idx.shape[1] ** 2 * rows.element_size())))
    for start in range(0, rows.shape[0], chunk):
        sl = slice(start, start + chunk)
        M = restricted(H, idx[sl], valid[sl])
        L = cholesky_or_raise(M, "H restricted to the kept support (H_QQ)")
        b = (rhs[sl].gather(1, idx[sl]) * valid[sl])[:, :, None]
        out[sl].scatter_add_(1, idx[sl], torch.cholesky_solve(b, L).squeeze(-1) * valid[sl])
    return out.squeeze(0) if vec else out


def support_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the indices of the True entries of ``mask`` (r, d), padded to the longest row: (idx, valid),
    both (r, m) with m = max row count; padding repeats other (unkept) indices and has valid = False."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    m = int(mask.sum(1).max()) if mask.numel() else 0
    idx = order[:, :m]
    return idx, mask.gather(1, idx)


def restricted(H: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The batch of H[Q_r, Q_r] for the index sets of ``support_index``: (c, m, m), identity on padding."""
    M = H[idx[:, :, None], idx[:, None, :]]
    if not bool(valid.all()):
        v = valid.to(H.dtype)
        M.mul_(v[:, :, None] * v[:, None, :])
        M.diagonal(dim1=1, dim2=2).add_(1 - v)
    return M


def obs_project_lowrank(
    theta_plus: torch.Tensor, A: torch.Tensor, lam: float, mask: torch.Tensor
) -> torch.Tensor:
    """``obs_project`` for H = AᵀA + λI (A of shape (n, d)) without forming H when |Q| > n.

    H_QS = A_QᵀA_S (λI has no off-diagonal part), so δ_Q = H_QQ⁻¹ A_Qᵀ c with c = A_S θ⁺_S, and by the
    push-through identity δ_Q = A_Qᵀ (A_Q A_Qᵀ + λI_n)⁻¹ c: an n×n solve while |Q| > n, no 1/λ anywhere.
    """
    check_finite("A", A)
    n, d = A.shape
    rows, mask, vec = _as_rows(theta_plus, mask, d)
    A = A.to(rows)
    out = torch.zeros_like(rows)
    for r in range(rows.shape[0]):
        Q = mask[r]
        if not bool(Q.any()):
            continue
        c = A[:, ~Q] @ rows[r, ~Q]
        HQQ = Curvature.from_factor(A[:, Q], lam, name="H_QQ = A_QᵀA_Q + λI", max_escalations=0)
        delta = HQQ.solve(A[:, Q].T @ c) if HQQ.H is not None else HQQ.solve_range(c)
        out[r, Q] = rows[r, Q] + delta
    return out.squeeze(0) if vec else out


def project(theta_plus: torch.Tensor, H: Curvature, mask: torch.Tensor) -> torch.Tensor:
    """The exact OBS update of θ⁺ on ``mask`` under a curvature operator, in its own (dense/low-rank) form."""
    if H.H is not None:
        return obs_project(theta_plus, H.H, mask)
    return obs_project_lowrank(theta_plus, H.B, H.mu, mask)


def quadratic_model(theta: torch.Tensor, theta_plus: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(θ − θ⁺)ᵀ H (θ − θ⁺), row-wise for (r, d) inputs."""
    delta = theta - theta_plus
    return ((delta @ H) * delta).sum(-1)


# ----------------------------------------------------------------------------------------------
# greedy one-at-a-time OBS removal (OBC), explicit inverse, batched over rows
# ----------------------------------------------------------------------------------------------
def _default_chunk_rows(d: int, itemsize: int, budget_bytes: int = 2**28) -> int:
    return max(1, budget_bytes // max(1, d * d * itemsize))


def greedy_obs(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    n_prune: int | None = None,
    nm: tuple[int, int] | str | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OBC: remove weights one at a time by OBS, every row from the same damped inverse ``Hinv``.

    Per row, repeatedly remove i = argmin w_i² / [Hinv]_ii among unpruned weights (with ``nm=(N, M)``,
    a group of M consecutive weights closes once M − N are removed), then

        w ← w − (w_i / [Hinv]_ii) Hinv[:, i],     Hinv ← Hinv − Hinv[:, i] Hinv[i, :] / [Hinv]_ii.

    ``W`` is (d,) or (r, d); ``Hinv`` (d, d) must be the inverse of a well-conditioned (damped) H: at
    small damping use ``greedy_obs_lowrank``. Rows are processed ``chunk_rows`` at a time (memory
    chunk_rows·d²). Returns (W_new, mask) with W_new exactly 0 where mask is False.
    """
    if W.dim() not in (1, 2):
        raise ValueError(f"W must have shape (d,) or (r, d), got {tuple(W.shape)}")
    vec = W.dim() == 1
    rows = W.unsqueeze(0) if vec else W
    r, d = rows.shape
    check_shape("Hinv", Hinv, (d, d))
    check_finite("W", rows)
    check_finite("Hinv", Hinv)
    Hinv = Hinv.to(rows)
    nm = None if nm is None else parse_nm(nm, "nm")
    n_prune = _check_n_prune(n_prune, nm, d)
    if r == 1 and nm is None:
        w_new, keep, _ = _greedy_obs_row(rows[0], Hinv, n_prune)
        return (w_new, keep) if vec else (w_new[None], keep[None])
    if chunk_rows is None:
        chunk_rows = _default_chunk_rows(d, rows.element_size())
    chunk_rows = check_int_range("chunk_rows", chunk_rows, 1, 2**62)
    W_out = rows.clone()
    mask_out = torch.ones(r, d, dtype=torch.bool, device=rows.device)
    for start in range(0, r, chunk_rows):
        w = W_out[start : start + chunk_rows]
        mask_out[start : start + w.shape[0]] = _greedy_obs_chunk(w, Hinv, n_prune, nm)
    W_out[~mask_out] = 0.0
    return (W_out.squeeze(0), mask_out.squeeze(0)) if vec else (W_out, mask_out)


def _check_n_prune(n_prune, nm, d: int) -> int:
    """The number of weights removed per row: given, or the whole N:M budget d/M·(M − N)."""
    if nm is not None:
        N, M = nm
        if d % M:
            raise ValueError(f"nm={N}:{M} needs the row length d={d} to be divisible by M={M}")
        budget = d // M * (M - N)
        n_prune = budget if n_prune is None else n_prune
        if not 0 <= n_prune <= budget:
            raise ValueError(f"n_prune must be in [0, {budget}] for nm={N}:{M} and d={d}, got {n_prune}")
    else:
        if n_prune is None:
            raise ValueError("greedy_obs needs n_prune (number of weights removed per row) or nm=(N, M)")
        if isinstance(n_prune, bool) or not 0 <= int(n_prune) <= d:
            raise ValueError(f"n_prune must be an integer in [0, {d}], got {n_prune!r}")
    return int(n_prune)


def _greedy_obs_chunk(w: torch.Tensor, Hinv: torch.Tensor, n_prune: int, nm) -> torch.Tensor:
    """``greedy_obs`` on a chunk of rows ``w`` (c, d), updated in place; returns their masks."""
    c, d = w.shape
    if nm is None:
        group = torch.zeros(c, d, dtype=torch.long, device=w.device)
        cap = torch.full((c, 1), d - n_prune, dtype=torch.long, device=w.device)
    else:
        N, M = nm
        group = (torch.arange(d, device=w.device) // M).expand(c, d)
        cap = torch.full((c, d // M), N, dtype=torch.long, device=w.device)
    theta, keep = greedy_remove(w, Hinv, group, cap, steps=n_prune)
    w.copy_(theta)
    return keep


def greedy_remove(
    theta: torch.Tensor, Hinv: torch.Tensor, group: torch.Tensor, cap: torch.Tensor, steps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS removal with exact updates, batched over rows, each row in its own groups with budgets.

    ``theta`` (c, m) is the minimiser of the quadratic on each row's current set, ``Hinv`` (m, m) shared
    or (c, m, m) per row the inverse of H on that set; ``group`` (c, m) the group of each coordinate
    (−1: not in the set, never removed) and ``cap`` (c, G) how many each group may keep. While a row has a
    group above its cap (at most ``steps`` removals), remove i = argmin θ_i²/[Hinv]_ii over the groups
    above cap and set θ ← θ − (θ_i/[Hinv]_ii) Hinv[:, i], Hinv ← Hinv − Hinv[:, i] Hinv[i, :]/[Hinv]_ii.
    The downdates are lazy: Hinv is never changed, its current column is Hinv[:, i] − U U[i]ᵀ with U the
    scaled columns of earlier removals (c·m·t per step, not c·m²). Returns (θ, kept mask).
    """
    c, m = theta.shape
    theta = theta.clone()
    alive = group >= 0
    g = group.clamp_min(0)
    count = torch.zeros(cap.shape, dtype=torch.long, device=theta.device).scatter_add_(1, g, alive.long())
    excess = int((count - cap).clamp_min(0).sum(1).max()) if c else 0
    steps = excess if steps is None else min(int(steps), excess)
    diag = Hinv.diagonal(dim1=-2, dim2=-1).expand(c, m).clone()
    U = torch.zeros(c, max(steps, 1), m, dtype=theta.dtype, device=theta.device)
    ar = torch.arange(c, device=theta.device)
    inf = torch.tensor(float("inf"), dtype=theta.dtype, device=theta.device)
    tiny = torch.finfo(theta.dtype).tiny
    for t in range(steps):
        ok = alive & (count.gather(1, g) > cap.gather(1, g))
        score = torch.where(ok, theta * theta / diag.clamp_min(tiny), inf)
        i = score.argmin(1)
        act = ok[ar, i]
        col = Hinv[i] if Hinv.dim() == 2 else Hinv[ar, i]
        if t:
            col = col - torch.bmm(U[ar, :t, i][:, None, :], U[:, :t]).squeeze(1)
        hii = torch.where(act, col[ar, i], torch.ones_like(col[ar, i])).clamp_min(tiny)
        scale = act.to(theta.dtype)
        U[:, t] = col * (scale / hii.sqrt())[:, None]
        theta.addcmul_(col, (theta[ar, i] * scale / hii)[:, None], value=-1.0)
        diag.addcmul_(U[:, t], U[:, t], value=-1.0)
        theta[ar, i] = torch.where(act, torch.zeros_like(hii), theta[ar, i])
        alive[ar, i] &= ~act
        count[ar, g[ar, i]] -= act.long()
    return theta * alive, alive


def _greedy_obs_row(w: torch.Tensor, Hinv: torch.Tensor, n_prune: int):
    """``greedy_obs`` for one row without an N:M budget: the same formula with plain (cheap) indexing.

    w is carried as the last column of the augmented matrix M = [Hinv w; wᵀ 0], so one rank-1 update
    M ← M − M[:, i] M[i, :] / [Hinv]_ii downdates Hinv and applies the OBS update to w together.
    Also returns the downdated inverse, whose kept block is (H_QQ)⁻¹.
    """
    d = w.shape[0]
    M = torch.empty(d + 1, d + 1, dtype=w.dtype, device=w.device)
    M[:d, :d] = Hinv
    M[:d, d] = w
    M[d, :d] = w
    M[d, d] = 0.0
    diag = M.diagonal()[:d]
    wv = M[:d, d]
    pen = torch.zeros_like(w)  # +inf once removed
    for _ in range(n_prune):
        i = int(torch.addcmul(pen, wv, wv / diag).argmin())
        row = M[i].clone()  # = M[:, i]
        M.addr_(row, row, alpha=-1.0 / float(row[i]))
        # row/column i are now zero up to rounding and never feed the kept block again; pin the
        # diagonal to 1 so that the score w_i²/[Hinv]_ii + inf stays +inf (never NaN)
        diag[i] = 1.0
        pen[i] = math.inf
    keep = torch.isfinite(pen)
    return wv.masked_fill(~keep, 0.0), keep, M[:d, :d]


# ----------------------------------------------------------------------------------------------
# greedy OBS removal for H = AᵀA + λI, safe at small λ
# ----------------------------------------------------------------------------------------------
def greedy_obs_lowrank(
    theta_plus: torch.Tensor, A: torch.Tensor, lam: float, k: int, refresh: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-at-a-time OBS removal down to ``k`` kept entries for H = AᵀA + λI (λ > 0 or A_R of full
    column rank), numerically safe at small λ.

    With R the remaining set and K = λI_n + A_R A_Rᵀ, [H_RR⁻¹]_jj = (1 − ℓ_j)/λ with leverages
    ℓ_j = a_jᵀ K⁻¹ a_j, and H_RR⁻¹ e_i = (e_i − A_Rᵀ K⁻¹ a_i)/λ. So, while |R| > n,

        saliency_j = λ θ_j² / (1 − ℓ_j),   θ ← θ − θ_i/(1 − ℓ_i) · (e_i − A_Rᵀ K⁻¹ a_i)   (no 1/λ),

    and K⁻¹ is downdated by Sherman–Morrison (refreshed by Cholesky every ``refresh`` removals).
    Once |R| ≤ n the |R|×|R| matrix H_RR is inverted and ``greedy_obs`` finishes. Returns (θ, mask);
    θ is the exact OBS update ``obs_project_lowrank`` on the chosen support.
    """
    check_finite("A", A)
    n, d = A.shape
    check_shape("theta_plus", theta_plus, (d,))
    k = check_k(k, d)
    A = A.to(theta_plus)
    theta = theta_plus.clone()
    keep = torch.ones(d, dtype=torch.bool, device=A.device)
    if d > n and d > k:
        keep = _remove_while_wide(theta, A, lam, max(k, n), refresh)
    n_keep = int(keep.sum())
    if n_keep > k:
        idx = keep.nonzero().squeeze(1)
        AR = A[:, idx]
        Hinv = Curvature.dense(AR.T @ AR, lam, name="H_RR", max_escalations=0).inverse()
        _, sub_mask = greedy_obs(theta[idx], Hinv, n_prune=n_keep - k)
        keep = torch.zeros_like(keep)
        keep[idx[sub_mask]] = True
    return obs_project_lowrank(theta_plus, A, lam, keep), keep


def _remove_while_wide(theta: torch.Tensor, A: torch.Tensor, lam: float, stop: int, refresh: int):
    """The n×n phase of ``greedy_obs_lowrank``: remove from θ (in place) down to ``stop`` entries; returns
    the kept mask."""
    n, d = A.shape
    At = A.T.contiguous()

    def fresh(keepf):
        AR = A * keepf  # zero columns outside R
        Kinv = Curvature.dense(AR @ AR.T, lam, name="λI + A_R A_Rᵀ", max_escalations=0).inverse()
        return Kinv, 1.0 - ((Kinv @ A) * A).sum(0)  # K⁻¹ and the gaps 1 − ℓ_j

    keepf = torch.ones(d, dtype=A.dtype, device=A.device)
    pen = torch.zeros(d, dtype=A.dtype, device=A.device)  # +inf once removed
    Kinv, gap = fresh(keepf)
    since, n_keep = 0, d
    tiny = torch.finfo(A.dtype).tiny
    while n_keep > stop:
        i = int(torch.addcdiv(pen, theta * theta, gap.clamp_min(tiny)).argmin())
        u = Kinv @ At[i]
        Atu = At @ u
        v = Atu * keepf  # A_Rᵀ K⁻¹ a_i  (v_i = ℓ_i)
        g = 1.0 - float(v[i])
        theta.add_(v, alpha=float(theta[i]) / g)  # θ − θ_i/(1 − ℓ_i)·(e_i − v) on R
        theta[i] = 0.0
        keepf[i] = 0.0
        pen[i] = math.inf
        n_keep -= 1
        since += 1
        if since >= refresh:
            Kinv, gap = fresh(keepf)
            since = 0
        else:
            Kinv.addr_(u, u, alpha=1.0 / g)
            gap.addcmul_(Atu, Atu, value=-1.0 / g)
    keep = keepf > 0
    theta.masked_fill_(~keep, 0.0)
    return keep


# ----------------------------------------------------------------------------------------------
# exact support by enumeration (tiny d)
# ----------------------------------------------------------------------------------------------
def exact_support(theta_plus: torch.Tensor, H: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """The support Q (|Q| = k) minimising the OBS saliency, i.e. the quadratic model
    min_{supp θ ⊆ Q} (θ − θ⁺)ᵀ H (θ − θ⁺), over all C(d, k) supports. Ties: the first in
    lexicographic order. Raises ValueError when C(d, k) > ``EXACT_MAX_SUPPORTS``."""
    check_shape("theta_plus", theta_plus, (None,))
    d = theta_plus.shape[0]
    check_shape("H", H, (d, d))
    k = check_k(k, d)
    total = math.comb(d, k)
    if total > EXACT_MAX_SUPPORTS:
        raise ValueError(
            f"exact_support would enumerate C({d}, {k}) = {total} supports, more than the limit "
            f"{EXACT_MAX_SUPPORTS}; use support='greedy' or 'topk' for this size"
        )
    H = H.to(theta_plus)
    combos = torch.combinations(torch.arange(d, device=theta_plus.device), r=k)
    if combos.dim() == 1:  # k == 1 gives a flat tensor
        combos = combos[:, None]
    best_val, best_mask = None, None
    for start in range(0, combos.shape[0], chunk):
        idx = combos[start : start + chunk]
        masks = torch.zeros(idx.shape[0], d, dtype=torch.bool, device=theta_plus.device)
        masks.scatter_(1, idx, True)
        theta = obs_project(theta_plus.expand(idx.shape[0], d), H, masks, chunk=chunk)
        val = quadratic_model(theta, theta_plus, H)
        j = int(val.argmin())
        if best_val is None or val[j] < best_val:
            best_val, best_mask = val[j], masks[j]
    return best_mask
