"""A starting structure from a SMILES string: RDKit's ETKDG embedding with hydrogens, relaxed by MMFF94.

RDKit is optional (`pip install rdkit`); only `asteroid simulate --smiles` needs it. GFN2-xTB relaxes the
structure again before any MD, so the force field only has to give a sensible start.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from asteroid.errors import ConfigError


def structure_from_smiles(smiles: str, seed: int = 0) -> Atoms:
    """The molecule of `smiles` with explicit hydrogens and 3D coordinates (Angstrom), reproducible for `seed`."""
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import AllChem
    except ImportError:
        raise ConfigError("--smiles needs RDKit: pip install rdkit (or pass a structure file with --structure)")
    RDLogger.DisableLog("rdApp.*")  # its parse errors span lines; ours is one
    molecule = Chem.MolFromSmiles(smiles)
    if molecule is None:
        raise ConfigError(f"--smiles {smiles!r}: RDKit cannot parse it as SMILES")
    molecule = Chem.AddHs(molecule)
    if AllChem.EmbedMolecule(molecule, randomSeed=seed) != 0:
        raise ConfigError(f"--smiles {smiles!r}: RDKit found no 3D embedding")
    AllChem.MMFFOptimizeMolecule(molecule)
    positions = molecule.GetConformer().GetPositions()
    numbers = [atom.GetAtomicNum() for atom in molecule.GetAtoms()]
    return Atoms(numbers=numbers, positions=np.asarray(positions))
