"""diffaudit: audit diffusion models for distributional convergence and latent-factor recovery.

Kept light on purpose: importing ``diffaudit`` or ``diffaudit.errors`` pulls in nothing heavy.
"""

__version__ = "0.1.0"
