"""Multi-domain models with per-domain parameter banks.

Every module in this package is imported here, so a new model file registers itself by being added.
"""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
