"""The baselines ASTEROID is compared with, one file each; graph.py holds the equivariant pieces the graph
baselines share."""
