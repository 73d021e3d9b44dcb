"""Language sampling by exponential smoothing (mBERT/XLM): q_i ∝ p_i^α.

p_i is language i's share of the tokens; α < 1 flattens the distribution so that
low-resource languages are seen more often than their share (α = 0.7 as in mBERT; α = 1
samples by size, α = 0 uniformly).
"""
from __future__ import annotations

from typing import Mapping


def smoothed_probabilities(token_counts: Mapping[str, int], alpha: float = 0.7) -> dict[str, tuple[float, float]]:
    """language → (p_i, q_i). Languages with zero tokens get q_i = 0."""
    if not token_counts:
        raise ValueError("no languages to sample from")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    total = sum(token_counts.values())
    if total <= 0:
        raise ValueError("all languages have zero tokens")
    p = {k: v / total for k, v in token_counts.items()}
    w = {k: (pi ** alpha if pi > 0 else 0.0) for k, pi in p.items()}
    z = sum(w.values())
    return {k: (p[k], w[k] / z) for k in token_counts}


def sampling_weights(manifest: dict, alpha: float = 0.7) -> dict[str, float]:
    """q_i per language from a data_prep manifest (what the trainer's mixer uses)."""
    counts = {lang: info["tokens"] for lang, info in manifest["languages"].items()}
    return {k: q for k, (_, q) in smoothed_probabilities(counts, alpha).items()}
