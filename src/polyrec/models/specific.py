"""Domain-specific parameters on any model: Θ_d = θ^S + θ^d (MAMDR, Luo et al. ICDE 2023, §IV-B, eq. 4).

:class:`DomainSpecificModel` wraps a built model (its parameters are the shared θ^S) and keeps, for every
selected parameter ``p`` of shape ``s``, a bank ``[D, *s]`` of domain-specific offsets θ^d. A row of
domain d is scored with the wrapped model's parameters replaced by ``p + θ^d[p]``
(:func:`torch.func.functional_call`), so a mixed batch runs the model once per domain present in it, on
that domain's rows only. Buffers (batch-norm statistics) stay shared.

The offsets are parameters of the module (they are saved, loaded, counted and restored with the best
weights like any other) but have ``requires_grad=False``: they are not trained by back-propagation.
Strategies write them: MAMDR's Domain Regularization
(:class:`polyrec.training.strategies.mamdr.MAMDR`) and per-domain finetuning
(:class:`polyrec.training.strategies.mamdr.AlternateFinetune`) train a domain's merged copy
θ^S + θ^d in the wrapped model's own parameters and keep the change as its offset
(:meth:`DomainSpecificModel.train_specific`).

Readings of the paper made here:

- The offsets start at zero, so the wrapped model at initialisation is the shared model on every domain.
  The paper says that Θ is "copied into" θ^S and every θ^i, which read literally would make the first
  merged model 2Θ; eq. 4 and Fig. 4a (θ^i is "a direction" from θ^S towards the domain's finetuned
  endpoint) need θ^i = 0 at the start.
- ``include="all"`` gives every parameter an offset, as the paper does (its production figure: a new
  domain adds 20M parameters); ``include="dense"`` leaves the embedding tables shared (their offsets are
  D copies of the largest tensors). ``all`` stays the default, on evidence: on P3 (``ml1m-age7``, MLP,
  paired by seed) ``dense`` gave WAUC ×100 80.74 ± 0.02 against ``all``'s 80.82 ± 0.01 over 5 seeds,
  lower on every seed (Δ −0.082 ± 0.022, paired t = −8.3; ``benchmarks/results/p3_mamdr_dense_offsets/`` against
  ``benchmarks/results/p3_mamdr/``), for 47,617 instead of 125,233 parameters per domain. With thousands of
  domains ``all`` copies the embedding tables thousands of times, so the ``synthetic-zipf-*`` presets
  use ``dense`` (74 KB per domain there, ``benchmarks/results/domain_scaling.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..data.batch import Batch
from ..layers.bank import MLPBank, mark_domain_bank
from ..layers.domain import DomainSegments
from .base import Model, ModelOutput

INCLUDE = ("all", "dense")


def _key(name: str) -> str:
    return name.replace(".", "__")


class DomainSpecificModel(Model):
    """``model`` with a domain-specific offset θ^d on each selected parameter: Θ_d = θ^S + θ^d.

    Args:
        model: any built model; its parameters are the shared θ^S.
        include: ``all`` (every parameter) or ``dense`` (every parameter but the embedding tables).

    Shape:
        the offsets of a parameter of shape ``s`` are ``[D, *s]`` (``specific.<name with __ for .>``).

    Example:
        >>> m = DomainSpecificModel(create_model("mlp", ds.schema))       # doctest: +SKIP
        >>> with m.shared_only(): loss = task.losses(m(batch), batch)      # doctest: +SKIP
    """

    def __init__(self, model: Model, include: Literal["all", "dense"] = "all") -> None:
        if include not in INCLUDE:
            raise ValueError(f"include {include!r} is not one of {', '.join(INCLUDE)}")
        super().__init__(model.schema, model.config)
        self.model = model
        self.model_name = getattr(model, "model_name", type(model).__name__)
        self.include = include
        named = [
            (n, p)
            for n, p in model.named_parameters()
            if include == "all" or not (n.startswith("embeddings.") or ".embeddings." in n)
        ]
        if not named:
            raise ValueError(
                f"model {self.model_name!r} has no parameters to make domain-specific (include={include!r})"
            )
        self.specific_names: tuple[str, ...] = tuple(n for n, _ in named)
        D = self.num_domains
        self.specific = nn.ParameterDict(
            {_key(n): nn.Parameter(p.detach().new_zeros((D, *p.shape)), requires_grad=False) for n, p in named}
        )
        # θ^d is a domain bank (its rows are written by the strategies, not by an optimiser).
        mark_domain_bank(self.specific, *self.specific.keys())
        self.use_specific = True
        self.register_load_state_dict_pre_hook(_load_legacy_offsets)

    # ------------------------------------------------------------------------------------ parameters
    def shared_parameters(self) -> list[nn.Parameter]:
        """θ^S: the wrapped model's parameters that have an offset, in :attr:`specific_names` order."""
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.specific_names]

    def offsets(self, domain: int) -> list[Tensor]:
        """θ^d of every selected parameter (views into the banks), in :attr:`specific_names` order."""
        return [self.specific[_key(n)][domain] for n in self.specific_names]

    def merged(self, domain: int) -> dict[str, Tensor]:
        """``{name: θ^S + θ^d}`` for :func:`torch.func.functional_call`."""
        return {n: p + d for n, p, d in zip(self.specific_names, self.shared_parameters(), self.offsets(domain))}

    @contextmanager
    def train_specific(self, domain: int, scale: float = 1.0) -> Iterator[DomainSpecificModel]:
        """Train domain ``domain``'s copy θ^S + θ^d in place, and keep what training changed as its offset.

        Within the block the wrapped model's own parameters hold θ^S + θ^d and forward uses them on every
        row (no offsets on top): train them with any optimiser over :meth:`shared_parameters`. On leaving,
        θ^d ← θ^d + scale · (trained − (θ^S + θ^d)) (MAMDR eq. 8; ``scale`` 1 keeps the trained copy) and θ^S
        is restored; after an exception only θ^S is restored.

        Parameters without an offset (the embedding tables with ``include="dense"``) stay shared and are not
        trained here: within the block they have ``requires_grad=False``, so backward neither computes nor
        accumulates their gradients (their stale sum would otherwise count in a gradient-norm clip); their
        flags are restored on leaving.
        """
        params, offsets = self.shared_parameters(), self.offsets(domain)
        specific = {id(p) for p in params}
        fixed = [p for p in self.model.parameters() if id(p) not in specific and p.requires_grad]
        with torch.no_grad():
            shared = [p.detach().clone() for p in params]
            for p, d in zip(params, offsets):
                p.add_(d)
        for p in fixed:
            p.requires_grad_(False)
        try:
            with self.shared_only():
                yield self
            with torch.no_grad():
                for p, s, d in zip(params, shared, offsets):
                    d.add_(p - (s + d), alpha=scale)
        finally:
            with torch.no_grad():
                for p, s in zip(params, shared):
                    p.copy_(s)
            for p in fixed:
                p.requires_grad_(True)

    def num_specific_parameters(self) -> int:
        """Offsets of one domain (the parameters a new domain would add)."""
        return sum(p.numel() for p in self.shared_parameters())

    @contextmanager
    def shared_only(self) -> Iterator[DomainSpecificModel]:
        """Within the block, forward runs the wrapped model's own parameters on every row (no offsets)."""
        before, self.use_specific = self.use_specific, False
        try:
            yield self
        finally:
            self.use_specific = before

    # ------------------------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> ModelOutput:
        if not self.use_specific:
            return self.model(batch)
        self.check_batch(batch)
        seg = DomainSegments.from_domain(batch.domain)
        if seg.num_segments == 1:
            return functional_call(self.model, self.merged(int(seg.domains[0])), (batch,))
        outs = [
            functional_call(self.model, self.merged(d), (batch.select(rows),))
            for d, rows in zip(seg.domains.tolist(), seg.split_rows())
        ]
        aux: dict[str, Tensor] = {}
        for out, n in zip(outs, seg.counts):
            for name, value in out.aux_losses.items():  # row-weighted, as one pass over the batch would be
                aux[name] = aux.get(name, 0.0) + value * (n / len(batch))
        return ModelOutput(logits=seg.unsort(torch.cat([o.logits for o in outs])), aux_losses=aux)

    def extra_repr(self) -> str:
        return (
            f"include={self.include!r}, domains={self.num_domains}, "
            f"specific parameters per domain={self.num_specific_parameters():,}"
        )


def _load_legacy_offsets(module: DomainSpecificModel, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: offsets saved before the expert banks were merged are keyed by the bank
    parameters' former names (:meth:`~polyrec.layers.bank.MLPBank.legacy_names`); map them to today's."""
    for path, bank in module.model.named_modules():
        if not isinstance(bank, MLPBank):
            continue
        for name, old in bank.legacy_names().items():
            key, old_key = prefix + "specific." + _key(f"{path}.{name}"), prefix + "specific." + _key(f"{path}.{old}")
            if _key(f"{path}.{name}") in module.specific and old_key in state_dict and key not in state_dict:
                t, target = state_dict.pop(old_key), module.specific[_key(f"{path}.{name}")]
                state_dict[key] = t.reshape(target.shape) if t.numel() == target.numel() else t


def specific_summary(model: nn.Module) -> dict[str, object]:
    """Domain-specific parameter counts for a run record (empty for a model without them)."""
    if not isinstance(model, DomainSpecificModel):
        return {}
    per_domain = model.num_specific_parameters()
    return {
        "specific_parameters": model.include,
        "specific_params_per_domain": per_domain,
        "specific_params": per_domain * model.num_domains,
    }
