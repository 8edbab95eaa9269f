"""Single-domain CTR backbones (the domain enters only as a feature).

Every module in this package is imported here, so a new model file registers itself by being added
(``@register_model(name, tags=("ctr",))``).
"""

from ...registry import import_submodules

import_submodules(__name__, __path__)
