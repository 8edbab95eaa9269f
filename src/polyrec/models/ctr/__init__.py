"""Single-domain CTR backbones (the domain enters only as a feature)."""

from . import autoint, dcn, dcnv2, deepfm, fibinet, mlp, nfm, pnn, wdl, xdeepfm  # noqa: F401
