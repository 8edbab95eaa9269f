"""Optimisation strategies (how a step uses the domains).

Every module of this package is imported here, so a new strategy file registers itself by being added.
"""

import importlib
import pkgutil

from .base import (
    Strategy,
    TrainContext,
    create_strategy,
    describe_strategy,
    list_strategies,
    register_strategy,
    strategy_options,
)
from .basic import Alternate, DomainBatched, Joint

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name not in ("base", "basic") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Alternate", "DomainBatched", "Joint", "Strategy", "TrainContext", "create_strategy", "describe_strategy",
           "list_strategies", "register_strategy", "strategy_options"]
