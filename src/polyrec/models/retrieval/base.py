"""The retrieval model contract: a user tower and an item tower, both conditioned on the domain.

``RetrievalModel(schema, config)`` embeds a user (:class:`~polyrec.retrieval.inputs.UserInputs`) and an item
(:class:`~polyrec.retrieval.inputs.ItemInputs`) for a domain; the score of a pair is the inner product of the
two embeddings (ADI eq. 1, ``f_θ(v | u, d)``). Because both towers see the domain, one item has one embedding
per domain, and serving keeps one item index per domain.

What every retrieval model shares (ADI §5.1.4, "all comparing methods share same input"):

- **Fields.** Every categorical feature has its own embedding table (E = ``embedding_dim``; index 0, the
  out-of-vocabulary / padding value, is a learned row like any other). The user tower reads the user's
  fields, the mean of its history's item-id embeddings (the item tower's item-id table: the history is
  items, and sharing the table lets what the item tower learns about an item reach the users who watched
  it) and the domain indicator's embedding; the item tower reads the item's fields, the mean of its
  multi-valued field's embeddings and the domain indicator's embedding. The domain embedding is also
  ``f_domain``, the input of ADI's gates (§4.1.2: "we use domain indicator embedding as f_domain").
- **Towers.** Each model supplies a tower class; the user and item towers are two instances of it (their
  own parameters), reading ``[B, N, E]`` fields, ``f_domain`` ``[B, E]`` and the domain ``[B]``.
- **Output.** ``output_dim``-wide embeddings, L2-normalised by default (``normalize``): the paper scores by
  inner product and trains with the sampled softmax of Yi et al. (its ref. [4]), who normalise both
  embeddings and divide the inner product by a temperature; ``normalize=False`` keeps raw inner products.

In eval mode a row's embedding depends on that row alone (batch norm uses its moving statistics), so a
user's or an item's embedding is the same in any batch; the contract test checks it for every model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import param, validate
from ...layers.domain import DomainSegments
from ...layers.mlp import activation_names
from ...retrieval.inputs import ItemInputs, UserInputs
from ..base import layer_sizes


@dataclass(frozen=True)
class RetrievalSchema:
    """What a retrieval model is built from: the domains and the vocabulary sizes of every field.

    Args:
        domains: domain names; a domain's index is its position.
        user_fields: ``(name, vocabulary size)`` of every categorical user field, in the column order of
            ``UserInputs.sparse``.
        item_fields: the same for the item fields (``ItemInputs.sparse``); the first is the item id.
        multi_field: ``(name, vocabulary size)`` of the item's multi-valued field (``ItemInputs.multi``).
        history_len: L, the length of ``UserInputs.history``.
        item_id_offset: the item-id field's index of item ``i`` is ``i + item_id_offset``; a history slot
            holding ``i + 1`` therefore reads row ``i + item_id_offset`` of the item-id table.
    """

    domains: tuple[str, ...]
    user_fields: tuple[tuple[str, int], ...]
    item_fields: tuple[tuple[str, int], ...]
    multi_field: tuple[str, int]
    history_len: int
    item_id_offset: int = 0

    def __post_init__(self) -> None:
        if not self.domains:
            raise ValueError("RetrievalSchema: needs at least one domain")
        if not self.item_fields:
            raise ValueError("RetrievalSchema: needs at least the item-id field")
        for name, size in (*self.user_fields, *self.item_fields, self.multi_field):
            if size < 1:
                raise ValueError(f"RetrievalSchema: field {name!r} has vocabulary size {size}; must be >= 1")

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def num_items(self) -> int:
        return self.item_fields[0][1] - self.item_id_offset

    def to_json(self) -> dict[str, Any]:
        return {
            "domains": list(self.domains),
            "user_fields": [list(f) for f in self.user_fields],
            "item_fields": [list(f) for f in self.item_fields],
            "multi_field": list(self.multi_field),
            "history_len": self.history_len,
            "item_id_offset": self.item_id_offset,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrievalSchema:
        return cls(
            domains=tuple(data["domains"]),
            user_fields=tuple((str(n), int(s)) for n, s in data["user_fields"]),
            item_fields=tuple((str(n), int(s)) for n, s in data["item_fields"]),
            multi_field=(str(data["multi_field"][0]), int(data["multi_field"][1])),
            history_len=int(data["history_len"]),
            item_id_offset=int(data.get("item_id_offset", 0)),
        )

    @classmethod
    def from_data(cls, data: Any) -> RetrievalSchema:
        """The schema of a :class:`~polyrec.retrieval.data.RetrievalData` (its id fields hold ``index + 1``)."""
        sizes = data.vocab_sizes
        return cls(
            domains=tuple(data.domains),
            user_fields=tuple((n, sizes[n]) for n in data.user_fields),
            item_fields=tuple((n, sizes[n]) for n in data.item_fields),
            multi_field=(data.multi_field, sizes[data.multi_field]),
            history_len=data.history_len,
            item_id_offset=1,
        )


@dataclass(frozen=True)
class RetrievalModelConfig:
    """The fields every retrieval model config shares.

    Args:
        embedding_dim: E of every field embedding and of the domain embedding, >= 1.
        hidden_units: hidden sizes of every network of a tower (an expert, a shared or a domain-specific
            network: §5.1.4, "each network share exactly the same model size"), at least one.
        output_dim: the width of the user and item embeddings, >= 1.
        activation: hidden activation.
        dropout: after every hidden activation, in [0, 1).
        normalize: L2-normalise both embeddings (scores are cosines; the loss divides by its temperature).
    """

    embedding_dim: int = param(16, ge=1)
    hidden_units: tuple[int, ...] = layer_sizes((128, 64), required=True)
    output_dim: int = param(32, ge=1)
    activation: str = param("relu", choices=activation_names)
    dropout: float = param(0.0, ge=0, lt=1)
    normalize: bool = True


class FieldEmbeddings(nn.Module):
    """One embedding table per categorical field, optionally one copy per domain.

    Args:
        sizes: vocabulary size of every field.
        dim: E.
        copies: 1, or D for a table per domain (row ``d * V + id``).

    Shape:
        forward(ids ``[B, F]``, domain ``[B]``) -> ``[B, F, E]``.
    """

    def __init__(self, sizes: list[int], dim: int, copies: int = 1) -> None:
        super().__init__()
        self.sizes, self.copies = list(sizes), copies
        self.tables = nn.ModuleList(nn.Embedding(v * copies, dim) for v in sizes)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.05)

    def lookup(self, field: int, ids: Tensor, domain: Tensor) -> Tensor:
        """Field ``field``'s embedding of ``ids`` (any shape whose first dimension is the batch)."""
        if self.copies > 1:
            shape = (-1,) + (1,) * (ids.dim() - 1)
            ids = ids + domain.view(shape) * self.sizes[field]
        return self.tables[field](ids)

    def forward(self, ids: Tensor, domain: Tensor) -> Tensor:
        return torch.stack([self.lookup(f, ids[:, f], domain) for f in range(len(self.tables))], 1)


def masked_mean(emb: Tensor, present: Tensor) -> Tensor:
    """Mean of ``emb`` ``[B, L, E]`` over the slots where ``present`` ``[B, L]`` is true (0 where none)."""
    w = present.to(emb.dtype).unsqueeze(-1)
    return (emb * w).sum(1) / w.sum(1).clamp_min(1.0)


class Tower(nn.Module):
    """One side of a two-tower model: fields ``[B, N, E]``, ``f_domain`` ``[B, E]``, domain ``[B]`` -> ``[B, O]``.

    A subclass builds its networks in ``__init__(num_fields, schema, config)`` and implements
    :meth:`encode`, which receives the rows sorted by domain with their :class:`DomainSegments`; ``forward``
    sorts and unsorts around it.
    """

    def __init__(self, num_fields: int, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__()
        self.num_fields, self.num_domains = num_fields, schema.num_domains
        self.in_dim = num_fields * config.embedding_dim

    def encode(self, fields: Tensor, f_domain: Tensor, seg: DomainSegments) -> Tensor:
        raise NotImplementedError

    def forward(self, fields: Tensor, f_domain: Tensor, domain: Tensor) -> Tensor:
        seg = DomainSegments.from_domain(domain)
        return seg.unsort(self.encode(seg.sort(fields), seg.sort(f_domain), seg))


class RetrievalModel(nn.Module):
    """Base class of the two-tower models: ``user_embedding(u)``, ``item_embedding(i)``, ``score(u, i)``.

    A subclass sets ``Config`` and ``Tower`` (a :class:`Tower` subclass); ``per_domain_embeddings`` gives
    every domain its own copy of every embedding table (DNN-Single: one whole model per domain).
    """

    Config: type = RetrievalModelConfig
    TowerClass: type = Tower
    per_domain_embeddings: bool = False
    model_name: str = ""

    def __init__(self, schema: RetrievalSchema, config: RetrievalModelConfig) -> None:
        super().__init__()
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            validate(config, "model")
        self.schema, self.config = schema, config
        E, D = config.embedding_dim, schema.num_domains
        copies = D if self.per_domain_embeddings else 1
        self.user_emb = FieldEmbeddings([s for _, s in schema.user_fields], E, copies)
        self.item_emb = FieldEmbeddings([s for _, s in schema.item_fields], E, copies)
        self.multi_emb = FieldEmbeddings([schema.multi_field[1]], E, copies)
        self.domain_emb = nn.Embedding(D, E)
        nn.init.normal_(self.domain_emb.weight, std=0.05)
        self.user_tower = self.TowerClass(len(schema.user_fields) + 2, schema, config)
        self.item_tower = self.TowerClass(len(schema.item_fields) + 2, schema, config)

    @property
    def num_domains(self) -> int:
        return self.schema.num_domains

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------------------------- fields
    def _check_domain(self, domain: Tensor, what: str) -> None:
        if torch.compiler.is_exporting():
            # The check reads the data, which a traced graph cannot; an exported tower's caller checks the
            # domain before the call (polyrec.serving.export).
            return
        if len(domain) and (int(domain.min()) < 0 or int(domain.max()) >= self.num_domains):
            bad = int(domain.max()) if int(domain.max()) >= self.num_domains else int(domain.min())
            raise ValueError(
                f"{what}.domain holds index {bad}, outside the model's {self.num_domains} domains "
                f"{list(self.schema.domains)}"
            )

    def _check_side(self, side: UserInputs | ItemInputs, fields: tuple[tuple[str, int], ...], what: str) -> None:
        """``side.sparse`` holds one column per field of the schema and ``side.domain`` known domains."""
        if side.sparse.dim() != 2 or side.sparse.shape[1] != len(fields):
            raise ValueError(
                f"{what}.sparse has shape {tuple(side.sparse.shape)}; the model's schema has "
                f"{len(fields)} {what} fields {[n for n, _ in fields]}"
            )
        self._check_domain(side.domain, what)

    def user_fields(self, user: UserInputs) -> Tensor:
        """The user tower's input fields ``[B, F_u + 2, E]``: user fields, pooled history, domain."""
        self._check_side(user, self.schema.user_fields, "user")
        d = user.domain
        fields = self.user_emb(user.sparse, d)
        present = user.history > 0
        ids = torch.where(present, user.history - 1 + self.schema.item_id_offset, 0)
        history = masked_mean(self.item_emb.lookup(0, ids, d), present)
        return torch.cat([fields, history.unsqueeze(1), self.domain_emb(d).unsqueeze(1)], 1)

    def item_fields(self, item: ItemInputs) -> Tensor:
        """The item tower's input fields ``[B, F_i + 2, E]``: item fields, pooled multi-valued field, domain."""
        self._check_side(item, self.schema.item_fields, "item")
        d = item.domain
        fields = self.item_emb(item.sparse, d)
        multi = masked_mean(self.multi_emb.lookup(0, item.multi, d), item.multi > 0)
        return torch.cat([fields, multi.unsqueeze(1), self.domain_emb(d).unsqueeze(1)], 1)

    # ---------------------------------------------------------------------------------- towers
    def _finish(self, e: Tensor) -> Tensor:
        return F.normalize(e, dim=-1) if self.config.normalize else e

    def user_embedding(self, user: UserInputs) -> Tensor:
        """``[B, output_dim]``: each row's user embedded for its domain."""
        return self._finish(self.user_tower(self.user_fields(user), self.domain_emb(user.domain), user.domain))

    def item_embedding(self, item: ItemInputs) -> Tensor:
        """``[B, output_dim]``: each row's item embedded for its domain."""
        return self._finish(self.item_tower(self.item_fields(item), self.domain_emb(item.domain), item.domain))

    def score(self, user: UserInputs, item: ItemInputs) -> Tensor:
        """``f(v | u, d)`` of each row's pair: ``[B]``."""
        return (self.user_embedding(user) * self.item_embedding(item)).sum(-1)
