"""Speed against fidelity across prediction spacings: one markdown row per (rollout report, benchmark row) pair.

    python benchmarks/coarsening_table.py REPORT.json BENCHMARK.json [REPORT.json BENCHMARK.json ...]

Each pair is one model: the `report.json` that `asteroid rollout --report` wrote for it and the `--json` file that
`asteroid benchmark` wrote for the same checkpoint (its first row). Fidelity is the report's own figures, taken at
the model's frame spacing against the reference strided to it, so the spectrum overlap covers frequencies up to that
spacing's Nyquist frequency (1 / (2 x spacing)) and no further; speed is the benchmark's seconds per simulated
picosecond of the shipped rollout at batch 1 and batch B, and the ratio to the MD the same benchmark timed.
"""

import json
import sys

SPEED_OF_LIGHT_CM_PER_FS = 2.99792458e-5


def row(report_path: str, benchmark_path: str) -> str:
    report = json.loads(open(report_path).read())
    bench = json.loads(open(benchmark_path).read())[0]
    frame_fs = report["predicted"]["dt_fs"]
    kinds = ("bond_length", "angle", "dihedral", "radius_of_gyration")
    jsd = {kind: report["distributions"][kind]["jsd_max"] for kind in kinds}
    motion = report["motion"]
    temperature = motion["kinetic_temperature"]["predicted"] / motion["kinetic_temperature"]["reference"]
    step = motion["mean_step"]["predicted"] / motion["mean_step"]["reference"]
    nyquist = 1 / (2 * frame_fs * SPEED_OF_LIGHT_CM_PER_FS)
    return (
        f"| {bench['spacing']} ({frame_fs:g} fs) | {report['unphysical']['fraction']:.3g} "
        f"| {jsd['bond_length']:.3f} | {jsd['angle']:.3f} | {jsd['dihedral']:.3f} | {jsd['radius_of_gyration']:.3f} "
        f"| {step:.3f} | {temperature:.3f} | {motion['spectrum']['overlap']:.3f} (to {nyquist:.0f} cm^-1) "
        f"| {bench['model_seconds_per_ps']:.3g} / {bench['model_batched_seconds_per_ps']:.3g} "
        f"| {bench['speedup']:.3g}x / {bench['speedup_batched']:.3g}x | {report['target']['met']} |"
    )


def main(paths: list[str]) -> None:
    if not paths or len(paths) % 2:
        sys.exit("usage: coarsening_table.py REPORT.json BENCHMARK.json [REPORT.json BENCHMARK.json ...]")
    print(
        "| spacing | unphysical fraction | bond JSD | angle JSD | dihedral JSD | Rg JSD | mean step | temperature "
        "| spectrum overlap | model s/ps (batch 1 / B) | speedup (batch 1 / B) | report's verdict |"
    )
    print("|---" * 12 + "|")
    for report, bench in zip(paths[::2], paths[1::2]):
        print(row(report, bench))


if __name__ == "__main__":
    main(sys.argv[1:])
