"""Math kernels shared by sparse recovery and layer pruning: masks, OBS projections, layer solvers."""
