"""Tiny schemas, batches and parameter perturbation shared by the model and layer tests.

``make_schema`` describes a small multi-domain data set (sparse ids, one multi-valued field, dense
columns); ``make_batch`` draws a random :class:`Batch` that matches any schema; ``perturb`` moves every
parameter off its initial value so that per-domain banks differ and gates are not uniform.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polyrec.data.batch import Batch
from polyrec.data.schema import DatasetSchema, DomainSpec, FeatureSpec


def make_schema(
    num_domains: int = 3,
    sparse: Sequence[tuple[str, int]] = (("user", 30), ("item", 25), ("category", 6)),
    multi: Sequence[tuple[str, int, int]] = (("tags", 10, 4),),
    dense: Sequence[str] = ("price",),
    domain_name: str = "d",
    user_feature: str | None = None,
) -> DatasetSchema:
    """A schema with ``sparse`` (name, vocab), ``multi`` (name, vocab, max_len) and ``dense`` fields."""
    features = [FeatureSpec(name, "sparse", vocab_size=vocab) for name, vocab in sparse]
    features += [FeatureSpec(name, "multi", vocab_size=vocab, max_len=max_len) for name, vocab, max_len in multi]
    features += [FeatureSpec(name, "dense") for name in dense]
    return DatasetSchema(
        features=tuple(features),
        domain=DomainSpec(domain_name, tuple(f"d{i}" for i in range(num_domains))),
        user_feature=user_feature,
    )


def make_batch(
    schema: DatasetSchema,
    n: int = 48,
    seed: int = 0,
    domains: int | Sequence[int] | torch.Tensor | None = None,
    every_domain: bool = False,
    padding: float = 0.4,
) -> Batch:
    """A random batch for ``schema``.

    Args:
        domains: ``None`` draws each row's domain at random (or, with ``every_domain``, cycles through all
            domains in a shuffled order so that every one is present); an int puts all ``n`` rows in that
            domain; a sequence gives each row's domain (and sets ``n``).
        padding: the share of multi-valued slots set to the padding id 0 (some rows end up all padding).
    """
    g = torch.Generator().manual_seed(seed)
    if domains is None:
        if every_domain:
            dom = (torch.arange(n) % schema.num_domains)[torch.randperm(n, generator=g)]
        else:
            dom = torch.randint(0, schema.num_domains, (n,), generator=g)
    elif isinstance(domains, int):
        dom = torch.full((n,), domains, dtype=torch.long)
    else:
        dom = torch.as_tensor(domains, dtype=torch.long)
        n = len(dom)
    sparse = torch.stack([torch.randint(1, f.vocab_size, (n,), generator=g) for f in schema.sparse], 1)
    multi = {}
    for f in schema.multi:
        ids = torch.randint(1, f.vocab_size, (n, f.max_len), generator=g)
        ids[torch.rand(n, f.max_len, generator=g) < padding] = 0
        multi[f.name] = ids
    user = None
    if schema.user_feature is not None:
        user = sparse[:, [f.name for f in schema.sparse].index(schema.user_feature)]
    return Batch(
        sparse=sparse,
        dense=torch.randn(n, len(schema.dense), generator=g),
        multi=multi,
        label=torch.randint(0, 2, (n,), generator=g).float(),
        domain=dom,
        user=user,
    )


def perturb(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Add ``scale`` * N(0, 1) noise to every parameter of ``module`` (in place; returns it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def new_domain_csv_config(
    folder, n_samples=(500, 400, 300), n_users: int = 60, n_items: int = 50, seed: int = 1
) -> dict:
    """A CLI experiment config over ``folder/base.csv`` (domains 0 and 1 of a synthetic frame) for an MLP+MLoRA
    run; ``folder/all.csv`` holds the same rows plus domain 2, the domain ``polyrec add-domain`` adds."""
    from polyrec.data.sources import make_synthetic

    frame = make_synthetic(
        n_domains=3, n_samples=list(n_samples), n_users=n_users, n_items=n_items, seed=seed, n_dense=1
    )
    frame[frame.domain < 2].to_csv(folder / "base.csv", index=False)
    frame.to_csv(folder / "all.csv", index=False)
    return {
        "protocol": "tiny",
        "data": {
            "source": {"kind": "csv", "path": str(folder / "base.csv")},
            "label": {"column": "label"},
            "domain": {"column": "domain", "as_feature": True},
            "features": [{"name": "user_id"}, {"name": "item_id"}, {"name": "dense_0", "kind": "dense"}],
            "user_feature": "user_id",
            "split": {"method": "stratified_domain", "ratios": [0.6, 0.2, 0.2], "seed": 0},
        },
        "train": {"batch_size": 128, "max_epochs": 2, "patience": 0},
        "adapter": {"alpha": 4},
    }
