"""Multi-domain models with per-domain parameter banks."""

from . import star  # noqa: F401
