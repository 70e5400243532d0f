"""Pure maths on m x m Gramians (float64): norms, cosines and angles, the exact min-norm (MGDA)
solver, the Pareto analysis, and the statistics of a combined direction d = sum_i w_i g_i."""
