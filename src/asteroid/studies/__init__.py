"""Studies of the models rather than parts of them: the side-by-side comparison and its tables, the peers' rollout
metric, and the speed against GFN2-xTB MD (the `compare` and `benchmark` commands and benchmarks/ use them)."""
