"""Sparse recovery: objectives, the I-OBS family of solvers, problem generators, estimators."""
