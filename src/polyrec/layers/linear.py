"""The wide (first-order, logistic-regression) term shared by WDL, DeepFM, NFM, FiBiNET and xDeepFM."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.batch import Batch
from ..data.schema import PAD_INDEX, DatasetSchema


class LinearPart(nn.Module):
    """First-order term w_0 + Σ_i w_{x_i} + wᵀ x_dense: one scalar weight per id plus a linear map on dense values.

    Reference: H.-T. Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016, Sec. 3.1 (the
    wide component y = wᵀx + b over one-hot raw features; the cross-product transformations of the paper are
    not built here: a cross feature enters as its own sparse feature). The same term is the "linear part" of
    FM/DeepFM (Guo et al., IJCAI 2017), NFM (He & Chua, SIGIR 2017, Eq. 1), FiBiNET and xDeepFM.

    Every sparse and multi-valued feature has its per-id weights in one shared table with per-field row
    offsets (as :class:`~polyrec.layers.embedding.EmbeddingCollection`), so the lookup is a single gather.
    A multi-valued feature contributes the *sum* of the weights of its non-padding ids (a bag of one-hot
    indicators, as in logistic regression); the padding id contributes nothing. Weights start at zero, as an
    untrained wide model should (a linear model has no symmetry to break).

    Args:
        schema: the data schema.
        use_dense: include the linear map on ``batch.dense``.

    Shape:
        forward(batch) -> ``[B]`` logit contribution.

    Example:
        >>> linear = LinearPart(schema)          # doctest: +SKIP
        >>> linear(batch).shape                  # doctest: +SKIP
        torch.Size([B])
    """

    def __init__(self, schema: DatasetSchema, use_dense: bool = True) -> None:
        super().__init__()
        sparse, multi = schema.sparse, schema.multi
        sizes = [f.vocab_size for f in sparse] + [f.vocab_size for f in multi]
        starts = [0]
        for s in sizes[:-1]:
            starts.append(starts[-1] + s)
        self.register_buffer("sparse_offsets", torch.tensor(starts[: len(sparse)], dtype=torch.long), persistent=False)
        self.multi_names = [f.name for f in multi]
        self._multi_offsets = starts[len(sparse) :]
        self.table = nn.Embedding(max(sum(sizes), 1), 1)
        nn.init.zeros_(self.table.weight)
        self.dense = nn.Linear(len(schema.dense), 1, bias=False) if (use_dense and schema.dense) else None
        if self.dense is not None:
            nn.init.zeros_(self.dense.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> Tensor:
        out = self.bias.expand(batch.domain.shape[0])  # not len(batch): a symbolic size while exporting
        if self.sparse_offsets.numel():
            out = out + self.table(batch.sparse + self.sparse_offsets).sum(dim=(1, 2))
        for name, offset in zip(self.multi_names, self._multi_offsets):
            ids = batch.multi[name]
            # The padding id of every multi-valued field maps to a real row of the shared table; mask it out.
            w = self.table(ids + offset).squeeze(-1) * (ids != PAD_INDEX).to(self.table.weight.dtype)
            out = out + w.sum(dim=1)
        if self.dense is not None:
            out = out + self.dense(batch.dense).squeeze(-1)
        return out

    def extra_repr(self) -> str:
        return f"rows={self.table.num_embeddings}, multi={self.multi_names}, dense={self.dense is not None}"
