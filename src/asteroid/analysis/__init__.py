"""`asteroid analyze`: is a predicted trajectory physical? It is judged against a reference trajectory of the same
molecule and, where known, against the true frames that follow the prediction's start (the continuation).

Definitions (constants in the submodules; report.json repeats them under "definitions"):
- Topology, from the reference's first frame: bonds are the atom pairs closer than 1.2 x the sum of their
  covalent radii (`asteroid.data.geometry.covalent_bonds`); angles are all bonded triples i-j-k (vertex j); the main
  dihedrals are one torsion i-j-k-l about every bond j-k between two heavy atoms (Z > 1) that are both non-terminal
  (bonded to some other atom too), i and l being the heaviest other neighbours of j and k (lowest index among
  equals): the backbone and hydroxyl rotors, without the redundant torsions through every hydrogen. IUPAC sign,
  degrees in (-180, 180].
- Radius of gyration: mass-weighted (standard atomic masses), about the centre of mass, Angstrom.
- Distributions: all finite predicted frames (trajectories pooled) against all reference frames, for each bond,
  angle and dihedral separately (bonds of one type sit in different environments), summarised by the mean and the
  max over them; and the radius of gyration. Jensen-Shannon divergence in base 2 (0 identical, 1 disjoint) of
  histograms on shared bins: 64 equal bins over the reference's range widened by half its width on each side, plus
  one bin below and one above for anything further out, so an exploded frame counts where the reference has nothing
  but cannot stretch the bins (as bins over the pooled range would); dihedrals on 64 bins over the full circle.
  Dihedral means and spreads are circular.
- Unphysical frame: non-finite coordinates, a bond outside [0.7, 1.5] x its reference median length, or two
  non-bonded atoms closer than 0.75 x the sum of their covalent radii. A geometry the reference itself visits is
  never unphysical: a limit goes out to the reference's own extreme where that lies further (malonaldehyde's proton
  transfer stretches an O-H bond 1.7 x). Frame f of a predicted trajectory lies (f + 1) dt_fs after its start.
- Coordinate error against the continuation: per frame, the Kabsch RMSD (after optimal superposition) and the plain
  RMSD, averaged over trajectories. Prediction and truth stay correlated while the Kabsch RMSD is below that of two
  independent reference frames: the decorrelation time is the first time it reaches the 5th percentile of the Kabsch
  RMSD of 1000 random pairs of reference frames (their mean is reported too, but is no threshold: the RMSD of
  independent frames spreads widely, 0.3 to 0.9 A for ethanol's rotamers, so a decorrelated trajectory can stay
  below the mean for hundreds of fs; the percentile makes the correlated time, if anything, short).
- Bond-length and angle deviation: RMS over bonds (angles), trajectories and the frames of a time bin of the
  predicted value minus the continuation's (while there is one), and minus the reference mean (over the whole
  prediction). The reference's own RMS fluctuation about its mean is the level a physical trajectory settles at
  against the mean (and sqrt(2) times that against a decorrelated continuation). Time bins grow geometrically
  (single frames first), at most 50.
- Energies (optional, `energy_comparison`): GFN2-xTB single points (tblite, set up as `asteroid simulate` does) of K
  frames evenly spaced through the pooled finite predicted frames, against the reference file's energies when they
  are GFN2-xTB ones (files of `asteroid simulate`), else against single points of K evenly spaced reference frames:
  MD17's DFT energies lie on another absolute scale. kcal/mol.
"""

from asteroid.analysis.checks import physical_report, target_verdict
from asteroid.analysis.curves import coordinate_error, deviation, time_bins
from asteroid.analysis.distributions import compare_distributions, jensen_shannon, shared_histogram
from asteroid.analysis.energy import energy_comparison, gfn2_energies, xtb_energies
from asteroid.analysis.geometry import (
    NAMES,
    UNITS,
    Topology,
    bond_angles,
    bond_lengths,
    dihedral_angles,
    radius_of_gyration,
)
from asteroid.analysis.predicted import Predicted, continuation_from, load_predicted
from asteroid.analysis.report import format_report, save_report
from asteroid.analysis.report_figures import report_figures
from asteroid.analysis.unphysical import Limits, unphysical_summary

__all__ = [
    "NAMES",
    "UNITS",
    "Limits",
    "Predicted",
    "Topology",
    "bond_angles",
    "bond_lengths",
    "compare_distributions",
    "continuation_from",
    "coordinate_error",
    "deviation",
    "dihedral_angles",
    "energy_comparison",
    "format_report",
    "gfn2_energies",
    "jensen_shannon",
    "load_predicted",
    "physical_report",
    "radius_of_gyration",
    "report_figures",
    "save_report",
    "shared_histogram",
    "target_verdict",
    "time_bins",
    "unphysical_summary",
    "xtb_energies",
]
