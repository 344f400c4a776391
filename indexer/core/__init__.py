"""The math, in torch only and without I/O: projections, per-example gradients, rank-c
factors, curvature, score kernels and the query side (precondition, score a block)."""
