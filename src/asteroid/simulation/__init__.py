"""The built-in data generator: GFN2-xTB molecular dynamics (tblite + ASE) in the MD17 protocol, its resumable
state, and starting structures (the shipped ones, any file, or SMILES through RDKit)."""
