"""Multi-domain models with per-domain parameter banks.

Every module in this package is imported here, so a new model file registers itself by being added
(``@register_model(name, tags=("multidomain",))``; the tag also puts it in the P2 benchmark zoo).
"""

from ...registry import import_submodules

import_submodules(__name__, __path__)
