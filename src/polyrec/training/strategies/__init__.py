"""Optimisation strategies (how a step uses the domains)."""

from .base import Strategy, TrainContext, create_strategy, list_strategies, register_strategy
from .basic import Alternate, DomainBatched, Joint

__all__ = ["Alternate", "DomainBatched", "Joint", "Strategy", "TrainContext", "create_strategy",
           "list_strategies", "register_strategy"]
