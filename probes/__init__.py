"""Pure measurements on arrays: convergence (threshold 1), factors (threshold 2), memorization.

Probes never read files or print. Inputs are float32 feature arrays ``(n, D)``; reductions are float64.
"""
