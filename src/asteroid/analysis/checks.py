"""`physical_report`: all the physical checks of a predicted trajectory in one JSON-serialisable dict, and the
verdict on the project's target."""

from __future__ import annotations

import math

import numpy as np

from asteroid.analysis.curves import DECORRELATION_QUANTILE, INDEPENDENT_PAIRS, coordinate_error, deviation
from asteroid.analysis.distributions import HIST_BINS, HIST_PAD, compare_distributions
from asteroid.analysis.dynamics import (
    SEGMENT_FRAMES,
    autocorrelation_time,
    kinetic_temperature,
    mean_step,
    spectrum_overlap,
    vibrational_spectrum,
)
from asteroid.analysis.geometry import Topology
from asteroid.analysis.unphysical import COMPRESS_LIMIT, OVERLAP_LIMIT, STRETCH_LIMIT, Limits, unphysical_summary

# The targets a rollout is judged by (issue 15): JSD ceilings per quantity (the largest over its bonds, angles, main
# dihedrals), relaxed to HALVES_FACTOR x the JSD between the reference's own halves where that is larger (a quantity
# the reference itself has not converged cannot be asked of the rollout); motion within MOTION_TOLERANCE.
TARGET_JSD = {"bond_length": 0.05, "angle": 0.05, "dihedral": 0.10, "radius_of_gyration": 0.05}
HALVES_FACTOR = 1.5
MOTION_TOLERANCE = 0.10
TARGET_SPECTRUM_OVERLAP = 0.8
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
    "motion": "from finite differences at the predicted frame spacing, the reference taken at that spacing from every "
    "phase: mean step per atom and frame (A), kinetic temperature over 3N degrees of freedom (K), "
    f"vibrational density of states (mass-weighted velocity power spectrum, Welch, {SEGMENT_FRAMES}-frame "
    "Hann segments) and its overlap with the reference's (sum of the bin-wise minimum, 1 = identical); "
    "autocorrelation time of each main dihedral's unit vector (first drop below 1/e)",
    "target": "no unphysical frame; every quantity's largest JSD within its ceiling (or 1.5 x the JSD between the "
    "reference's halves, if larger); mean step and kinetic temperature within 10% of the reference's; "
    "spectrum overlap >= 0.8",
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


def physical_report(
    predicted: np.ndarray,
    z: np.ndarray,
    dt_fs: float,
    reference: np.ndarray,
    reference_dt_fs: float,
    continuation: np.ndarray | None = None,
) -> dict:
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
        if (
            continuation.ndim != 4
            or continuation.shape[0] != B
            or continuation.shape[2:] != (N, 3)
            or continuation.shape[1] > F
        ):
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
        "predicted": {
            "trajectories": B,
            "frames": F,
            "dt_fs": float(dt_fs),
            "duration_fs": F * float(dt_fs),
            "nonfinite_frames": int((~finite).sum()),
        },
        "reference": {
            "frames": len(reference),
            "dt_fs": float(reference_dt_fs),
            "duration_fs": (len(reference) - 1) * float(reference_dt_fs),
        },
        "atoms": N,
        "z": z.tolist(),
        "topology": {"bonds": labels["bond_length"], "angles": labels["angle"], "dihedrals": labels["dihedral"]},
        "unphysical": unphysical_summary(predicted, limits, topology, dt_fs),
        "distributions": {
            name: compare_distributions(
                pred_features[name][finite], ref_features[name], labels[name], periodic=name == "dihedral"
            )
            for name in pred_features
        },
        "coordinate_error": None
        if continuation is None
        else coordinate_error(predicted, continuation, reference, dt_fs),
        "deviation": {},
    }
    for name in ("bond_length", "angle"):
        width = len(labels[name])
        report["deviation"][name] = (
            None
            if not width
            else deviation(
                pred_features[name].reshape(B, F, width),
                None if cont_features is None else cont_features[name].reshape(B, -1, width),
                ref_features[name],
                dt_fs,
            )
        )
    half = len(reference) // 2
    report["reference_halves"] = {
        name: compare_distributions(features[half:], features[:half], labels[name], periodic=name == "dihedral")[
            "jsd_max"
        ]
        for name, features in ref_features.items()
    }
    report["motion"] = motion(predicted, z, dt_fs, reference, reference_dt_fs, topology)
    report["target"] = target_verdict(report)
    return jsonable(report)


def at_spacing(reference: np.ndarray, stride: int) -> np.ndarray:
    """(stride, M, N, 3): the reference (F_ref, N, 3) every `stride` frames, once from each starting phase."""
    frames = len(reference) // stride
    return np.stack([reference[phase::stride][:frames] for phase in range(stride)])


def motion(
    predicted: np.ndarray,
    z: np.ndarray,
    dt_fs: float,
    reference: np.ndarray,
    reference_dt_fs: float,
    topology: Topology,
) -> dict | None:
    """Step size, kinetic temperature, spectrum and dihedral autocorrelation times of predicted (B, F, N, 3) against
    the reference at the same frame spacing; None when that spacing is not a whole number of reference frames or
    either side has too few frames."""
    stride = dt_fs / reference_dt_fs
    if abs(stride - round(stride)) > 1e-6 or round(stride) < 1 or not np.isfinite(predicted).all():
        return None
    strided = at_spacing(reference, round(stride))  # (S, M, N, 3)
    if min(predicted.shape[1], strided.shape[1]) < 5:
        return None
    # one segment length for both, so that their wavenumber bins agree: the shorter side's, up to SEGMENT_FRAMES
    segment = min(SEGMENT_FRAMES, predicted.shape[1] - 1, strided.shape[1] - 1)
    wavenumbers, predicted_spectrum = vibrational_spectrum(predicted, z, dt_fs, segment=segment)
    _, reference_spectrum = vibrational_spectrum(strided, z, dt_fs, segment=segment)
    dihedrals = topology.dihedrals
    labels = topology.labels(dihedrals)

    def correlation_times(R):
        angles = topology.features(R.reshape(-1, *R.shape[2:]))["dihedral"].reshape(*R.shape[:2], -1)
        return [autocorrelation_time(angles[..., d], dt_fs) for d in range(len(dihedrals))]

    return {
        "mean_step": {"predicted": mean_step(predicted), "reference": mean_step(strided)},
        "kinetic_temperature": {
            "predicted": kinetic_temperature(predicted, z, dt_fs),
            "reference": kinetic_temperature(strided, z, dt_fs),
        },
        "spectrum": {
            "overlap": spectrum_overlap(predicted_spectrum, reference_spectrum),
            "wavenumber": wavenumbers,
            "predicted": predicted_spectrum,
            "reference": reference_spectrum,
        },
        "dihedral_correlation_time_fs": {
            "labels": labels,
            "predicted": correlation_times(predicted),
            "reference": correlation_times(strided),
        },
    }


def target_verdict(report: dict) -> dict:
    """The rollout targets (TARGET_JSD, MOTION_TOLERANCE, TARGET_SPECTRUM_OVERLAP) for the trajectories at hand:
    {"met", "unmet": reasons, "jsd_ceilings": the ceiling each quantity was held to}."""
    unmet = []
    broken = sum(t["first_frame"] is not None for t in report["unphysical"]["trajectories"])
    if broken:
        unmet.append(f"unphysical frames in {broken} of {len(report['unphysical']['trajectories'])} trajectories")
    ceilings = {}
    for name, ceiling in TARGET_JSD.items():
        halves = report["reference_halves"].get(name)
        ceilings[name] = max(ceiling, HALVES_FACTOR * halves) if halves is not None else ceiling
        distribution = report["distributions"][name]
        if distribution["count"] and (distribution["jsd_max"] is None or distribution["jsd_max"] > ceilings[name]):
            unmet.append(
                f"{name.replace('_', ' ')} JSD up to {distribution['jsd_max'] or float('nan'):.3f} > "
                f"{ceilings[name]:.3g} ({distribution['worst']})"
            )
    motion = report["motion"]
    if motion is None:
        unmet.append(
            "no motion checks (non-finite or too few frames, or a frame spacing that is not a whole "
            "number of reference frames)"
        )
    else:
        for name, unit in (("mean_step", "A"), ("kinetic_temperature", "K")):
            predicted, reference = motion[name]["predicted"], motion[name]["reference"]
            if not abs(predicted - reference) <= MOTION_TOLERANCE * reference:
                unmet.append(f"{name.replace('_', ' ')} {predicted:.4g} {unit}, reference {reference:.4g}")
        if motion["spectrum"]["overlap"] < TARGET_SPECTRUM_OVERLAP:
            unmet.append(f"spectrum overlap {motion['spectrum']['overlap']:.3f} < {TARGET_SPECTRUM_OVERLAP}")
    return {
        "met": not unmet,
        "unmet": unmet,
        "jsd_ceilings": ceilings,
        "motion_tolerance": MOTION_TOLERANCE,
        "spectrum_overlap_min": TARGET_SPECTRUM_OVERLAP,
    }
