"""Summaries of a walk's per-layer records (report.json's ``summary`` and the CLI's tables)."""

from __future__ import annotations

import re


def summarize(records: list[dict]) -> dict:
    """Totals over layers: weights pruned (by mask and exact zeros), summed and mean relative error, times."""
    n = sum(r["numel"] for r in records)
    kept = sum(r["kept"] for r in records)
    zeros = sum(round(r["zeros"] * r["numel"]) for r in records)
    return {
        "layers": len(records),
        "params": n,
        "kept": kept,
        "sparsity": 1.0 - kept / n if n else 0.0,
        "zeros": zeros / n if n else 0.0,
        "error_sum": sum(r["error"] for r in records),
        "rel_error_mean": sum(r["rel_error"] for r in records) / len(records) if records else 0.0,
        "rel_error_max": max((r["rel_error"] for r in records), default=0.0),
        "solve_seconds": sum(r["seconds"] for r in records),
        "hessian_seconds": sum(r.get("hessian_seconds", 0.0) for r in records),
    }


def layer_kind(name: str) -> str:
    """Name without block indices: 'model.layers.3.mlp.up_proj' -> 'model.layers.*.mlp.up_proj'."""
    return re.sub(r"\.\d+\.", ".*.", name)


def by_kind(records: list[dict]) -> list[dict]:
    """One row per layer kind (e.g. every q_proj): count, sparsity, mean/max relative error, solve time."""
    rows: dict[str, list[dict]] = {}
    for r in records:
        rows.setdefault(layer_kind(r["name"]), []).append(r)
    out = []
    for kind, rs in rows.items():
        s = summarize(rs)
        out.append(
            {
                "layer": kind,
                "count": len(rs),
                "shape": "x".join(map(str, rs[0]["shape"])),
                "sparsity": s["sparsity"],
                "rel_error_mean": s["rel_error_mean"],
                "rel_error_max": s["rel_error_max"],
                "solve_s": s["solve_seconds"],
            }
        )
    return out
