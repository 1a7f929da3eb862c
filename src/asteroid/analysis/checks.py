"""`physical_report`: all the physical checks of a predicted trajectory in one JSON-serialisable dict, and the
verdict on the project's target."""
from __future__ import annotations

import math

import numpy as np

from asteroid.analysis.curves import DECORRELATION_QUANTILE, INDEPENDENT_PAIRS, coordinate_error, deviation
from asteroid.analysis.distributions import HIST_BINS, HIST_PAD, compare_distributions
from asteroid.analysis.geometry import Topology
from asteroid.analysis.unphysical import COMPRESS_LIMIT, OVERLAP_LIMIT, STRETCH_LIMIT, Limits, unphysical_summary

TARGET_FRAMES = 10_000
TARGET_BOND_JSD = 0.05
DEFINITIONS = {
    "topology": "covalent bonds of the reference's first frame (closer than 1.2 x the covalent radii sum); angles: "
                "bonded triples; main dihedrals: one torsion about each bond between two non-terminal heavy atoms, "
                "ends the heaviest other neighbours",
    "radius_of_gyration": "mass-weighted, about the centre of mass, Angstrom",
    "jsd": f"base 2 (0..1), per bond / angle / dihedral then mean and max; {HIST_BINS} shared bins over the "
           f"reference range widened by {HIST_PAD} x its width each side, plus an overflow bin each side; "
           "dihedrals: full circle",
    "unphysical": f"non-finite, a bond outside [{COMPRESS_LIMIT}, {STRETCH_LIMIT}] x its reference median (or the "
                  f"reference's own range), or non-bonded atoms closer than {OVERLAP_LIMIT} x their covalent radii "
                  "sum (or the reference's closest approach)",
    "time": "frame f of a predicted trajectory is (f + 1) dt_fs after its start (the last history frame)",
    "decorrelation": f"first time the trajectory-mean Kabsch RMSD to the continuation reaches the "
                     f"{DECORRELATION_QUANTILE:.0%} quantile of the Kabsch RMSD of {INDEPENDENT_PAIRS} random pairs "
                     "of reference frames",
    "deviation": "RMS over bonds (angles), trajectories and the frames of a time bin of predicted minus continuation, "
                 "and predicted minus reference mean",
}


def jsonable(value):
    """Python scalars and lists for numpy ones, None for NaN and infinity."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def physical_report(predicted: np.ndarray, z: np.ndarray, dt_fs: float, reference: np.ndarray,
                    reference_dt_fs: float, continuation: np.ndarray | None = None) -> dict:
    """Physical checks of predicted (B, F, N, 3) Angstrom, frames dt_fs apart, against reference (F_ref, N, 3), the
    whole reference trajectory at its own spacing reference_dt_fs, and against continuation (B, F_c, N, 3), the true
    frames after each prediction's start at the predicted spacing (F_c <= F; None or F_c = 0 when unknown).

    Returns a JSON-serialisable dict (definitions in the asteroid.analysis docstring and under "definitions"):
    "unphysical", "distributions", "coordinate_error" (None without a continuation), "deviation" and "target".
    """
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    z = np.asarray(z).astype(np.int64)
    if predicted.ndim != 4 or predicted.shape[-1] != 3 or predicted.shape[1] == 0:
        raise ValueError(f"predicted must have shape (B, F, N, 3) with F >= 1, got {predicted.shape}")
    B, F, N, _ = predicted.shape
    if reference.ndim != 3 or reference.shape[1:] != (N, 3) or z.shape != (N,):
        raise ValueError(f"reference {reference.shape} and z {z.shape} must be (F_ref, {N}, 3) and ({N},)")
    if len(reference) < 2:
        raise ValueError(f"the reference needs at least 2 frames, got {len(reference)}")
    if continuation is not None:
        continuation = np.asarray(continuation, np.float64)
        if continuation.ndim != 4 or continuation.shape[0] != B or continuation.shape[2:] != (N, 3) \
                or continuation.shape[1] > F:
            raise ValueError(f"continuation must have shape ({B}, F_c <= {F}, {N}, 3), got {continuation.shape}")
        if continuation.shape[1] == 0:
            continuation = None

    topology = Topology.of(z, reference[0])
    labels = topology.feature_labels()
    frames = predicted.reshape(B * F, N, 3)
    finite = np.isfinite(frames).all((1, 2))
    pred_features, ref_features = topology.features(frames), topology.features(reference)
    cont_features = None if continuation is None else topology.features(continuation.reshape(-1, N, 3))
    limits = Limits.from_reference(reference, topology)
    report = {
        "definitions": DEFINITIONS,
        "predicted": {"trajectories": B, "frames": F, "dt_fs": float(dt_fs), "duration_fs": F * float(dt_fs),
                      "nonfinite_frames": int((~finite).sum())},
        "reference": {"frames": len(reference), "dt_fs": float(reference_dt_fs),
                      "duration_fs": (len(reference) - 1) * float(reference_dt_fs)},
        "atoms": N, "z": z.tolist(),
        "topology": {"bonds": labels["bond_length"], "angles": labels["angle"], "dihedrals": labels["dihedral"]},
        "unphysical": unphysical_summary(predicted, limits, topology, dt_fs),
        "distributions": {name: compare_distributions(pred_features[name][finite], ref_features[name], labels[name],
                                                      periodic=name == "dihedral")
                          for name in pred_features},
        "coordinate_error": None if continuation is None else coordinate_error(predicted, continuation, reference,
                                                                               dt_fs),
        "deviation": {},
    }
    for name in ("bond_length", "angle"):
        width = len(labels[name])
        report["deviation"][name] = None if not width else deviation(
            pred_features[name].reshape(B, F, width),
            None if cont_features is None else cont_features[name].reshape(B, -1, width), ref_features[name], dt_fs)
    report["target"] = target_verdict(report)
    return jsonable(report)


def target_verdict(report: dict) -> dict:
    """The project's target: TARGET_FRAMES frames per trajectory, none unphysical, every bond's JSD within
    TARGET_BOND_JSD."""
    unmet = []
    frames = report["predicted"]["frames"]
    if frames < TARGET_FRAMES:
        unmet.append(f"{frames} frames per trajectory, fewer than {TARGET_FRAMES}")
    broken = sum(t["first_frame"] is not None for t in report["unphysical"]["trajectories"])
    if broken:
        unmet.append(f"unphysical frames in {broken} of {len(report['unphysical']['trajectories'])} trajectories")
    jsd = report["distributions"]["bond_length"]["jsd_max"]
    if jsd is None or jsd > TARGET_BOND_JSD:
        unmet.append("no bond-length distribution" if jsd is None else
                     f"bond-length JSD up to {jsd:.3f} ({report['distributions']['bond_length']['worst']})")
    return {"frames": TARGET_FRAMES, "bond_jsd_max": TARGET_BOND_JSD, "met": not unmet, "unmet": unmet}
