"""Optimisation strategies (how a step uses the domains).

Every module of this package is imported here, so a new strategy file registers itself by being added.
"""

from ...registry import import_submodules
from .base import (
    STRATEGIES,
    Strategy,
    TrainContext,
    create_strategy,
    describe_strategy,
    list_strategies,
    register_strategy,
    strategy_options,
)
from .basic import Alternate, DomainBatched, Joint

import_submodules(__name__, __path__)

__all__ = [
    "STRATEGIES",
    "Alternate",
    "DomainBatched",
    "Joint",
    "Strategy",
    "TrainContext",
    "create_strategy",
    "describe_strategy",
    "list_strategies",
    "register_strategy",
    "strategy_options",
]
