"""Distributions of a predicted feature against the reference's: shared histograms and the Jensen-Shannon
divergence."""

from __future__ import annotations

import math

import numpy as np

HIST_BINS = 64
HIST_PAD = 0.5  # fraction of the reference's range added on each side of the bins


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 identical, 1 disjoint) of two histograms (counts or probabilities)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl_to_m(x):
        inside = x > 0  # 0 log 0 = 0
        return (x[inside] * np.log2(x[inside] / m[inside])).sum()

    return float(np.clip(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0, 1.0))


def shared_histogram(predicted: np.ndarray, reference: np.ndarray, periodic: bool = False, bins: int = HIST_BINS):
    """(lo, hi), predicted and reference counts (bins + 2,): below lo, the bins, above hi.

    The bins cover the reference's range widened by HIST_PAD x its width each side, or (-180, 180] when periodic.
    """
    if periodic:
        lo, hi = -180.0, 180.0
    else:
        lo, hi = float(reference.min()), float(reference.max())
        pad = HIST_PAD * (hi - lo) or max(1e-3 * abs(lo), 1e-6)  # a constant reference still gets bins
        lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, bins + 1)

    def counts(x):
        return np.concatenate([[(x < lo).sum()], np.histogram(x, edges)[0], [(x > hi).sum()]])

    return (lo, hi), counts(predicted), counts(reference)


def _circular_stats(degrees: np.ndarray) -> tuple[float, float]:
    """Circular mean (degrees) and circular standard deviation sqrt(-2 ln R) (degrees)."""
    angle = np.radians(degrees)
    mean_vector = complex(np.cos(angle).mean(), np.sin(angle).mean())
    spread = math.sqrt(-2 * math.log(max(abs(mean_vector), 1e-300)))
    return math.degrees(math.atan2(mean_vector.imag, mean_vector.real)), math.degrees(spread)


def compare_distributions(
    predicted: np.ndarray, reference: np.ndarray, labels: list[str], periodic: bool = False
) -> dict:
    """JSD and moments of each column of predicted (M, K) against reference (M_ref, K); histograms for the figures."""

    def stats(x):
        return _circular_stats(x) if periodic else (float(x.mean()), float(x.std()))

    items = []
    for k, label in enumerate(labels):
        pred, ref = predicted[:, k], reference[:, k]
        item = {
            "label": label,
            "reference_mean": None,
            "reference_std": None,
            "predicted_mean": None,
            "predicted_std": None,
            "jsd": None,
        }
        item["reference_mean"], item["reference_std"] = stats(ref)
        if len(pred):
            (lo, hi), p, q = shared_histogram(pred, ref, periodic)
            item["predicted_mean"], item["predicted_std"] = stats(pred)
            item |= {
                "jsd": jensen_shannon(p, q),
                "range": [lo, hi],
                # fractions per bin (overflow bins first and last), rounded: they are for the figures
                "predicted": np.round(p / p.sum(), 6).tolist(),
                "reference": np.round(q / q.sum(), 6).tolist(),
            }
        items.append(item)
    jsds = [item["jsd"] for item in items if item["jsd"] is not None]
    worst = max(items, key=lambda item: -1 if item["jsd"] is None else item["jsd"])["label"] if jsds else None
    return {
        "count": len(items),
        "jsd_mean": float(np.mean(jsds)) if jsds else None,
        "jsd_max": max(jsds) if jsds else None,
        "worst": worst,
        "items": items,
    }
