"""Embedding collection built from a :class:`~polyrec.data.schema.DatasetSchema`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.batch import Batch
from ..data.schema import PAD_INDEX, DatasetSchema


class EmbeddingCollection(nn.Module):
    """Embeds every sparse and multi-valued feature of a schema.

    All single-valued sparse features share one table with per-field row offsets, so embedding a batch is
    a single gather whatever the number of fields. Multi-valued features have their own tables and are
    mean-pooled over their non-padding ids (padding row 0 is kept at zero).

    Args:
        schema: the data schema.
        embedding_dim: E, the size of every embedding.
        features: names of the features to embed (default: all sparse and multi-valued features).
        init_std: standard deviation of the normal initialisation.

    Shape:
        forward(batch) -> ``[B, F, E]`` with F = number of embedded features, sparse ones first in schema
        order, then multi-valued ones.

    Example:
        >>> emb = EmbeddingCollection(schema, 16)   # doctest: +SKIP
        >>> emb(batch).shape                        # doctest: +SKIP
        torch.Size([B, F, 16])
    """

    def __init__(
        self,
        schema: DatasetSchema,
        embedding_dim: int,
        features: list[str] | tuple[str, ...] | None = None,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        names = [f.name for f in schema.features if f.kind != "dense"]
        wanted = list(features) if features is not None else names
        for n in wanted:
            if n not in names:
                raise ValueError(f"cannot embed feature {n!r}: not a sparse or multi-valued feature ({names})")
        self.embedding_dim = embedding_dim
        sparse = [f for f in schema.sparse if f.name in wanted]
        self.sparse_names = [f.name for f in sparse]
        # Columns of Batch.sparse to read, and each field's first row in the shared table.
        cols = [schema.sparse_names.index(f.name) for f in sparse]
        sizes = [f.vocab_size for f in sparse]
        offsets = (
            torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0) if sizes else torch.zeros(0, dtype=torch.long)
        )
        self.register_buffer("columns", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(max(sum(sizes), 1), embedding_dim)
        nn.init.normal_(self.table.weight, std=init_std)
        self.multi_names = [f.name for f in schema.multi if f.name in wanted]
        self.multi = nn.ModuleDict(
            {
                f.name: nn.Embedding(f.vocab_size, embedding_dim, padding_idx=PAD_INDEX)
                for f in schema.multi
                if f.name in wanted
            }
        )
        for m in self.multi.values():
            nn.init.normal_(m.weight, std=init_std)
            with torch.no_grad():
                m.weight[PAD_INDEX].zero_()
        self._all_sparse_columns = cols == list(range(len(schema.sparse)))

    @property
    def num_fields(self) -> int:
        return len(self.sparse_names) + len(self.multi_names)

    @property
    def output_dim(self) -> int:
        return self.num_fields * self.embedding_dim

    def forward(self, batch: Batch) -> Tensor:
        parts = []
        if self.sparse_names:
            ids = batch.sparse if self._all_sparse_columns else batch.sparse.index_select(1, self.columns)
            parts.append(self.table(ids + self.offsets))
        for name in self.multi_names:
            ids = batch.multi[name]
            mask = (ids != PAD_INDEX).unsqueeze(-1).to(self.table.weight.dtype)
            pooled = (self.multi[name](ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            parts.append(pooled.unsqueeze(1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
