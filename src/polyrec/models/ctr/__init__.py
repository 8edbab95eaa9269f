"""Single-domain CTR backbones (the domain enters only as a feature)."""

from . import mlp  # noqa: F401
