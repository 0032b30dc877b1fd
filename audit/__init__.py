"""diffaudit: audit diffusion models for distributional convergence and latent-factor recovery.

Kept light on purpose: importing ``diffaudit`` or ``diffaudit.errors`` pulls in nothing heavy. The Python
API (``diffaudit.audit``, ``diffaudit.AuditConfig``, ``diffaudit.Report``, ``diffaudit.set_threads``, from ``diffaudit.api``) is loaded
on first use (PEP 562), so ``diffaudit --help`` and the leaf helpers stay fast to import.
"""

__version__ = "0.1.0"
_API = ("audit", "AuditConfig", "Report", "set_threads")


def __getattr__(name: str):
    if name in _API:
        import diffaudit.api as api  # lazy on purpose (module docstring)

        return getattr(api, name)
    raise AttributeError(f"module 'diffaudit' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
