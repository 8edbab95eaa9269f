"""MLoRA: per-domain low-rank adapters attached to any model (Yang et al., "MLoRA: Multi-Domain Low-Rank
Adaptive Network for Click-Through Rate Prediction", 2024).

:func:`attach_mlora` wraps the chosen linear layers of a built model with :class:`~polyrec.layers.lora.LoRALinear`
(or :class:`~polyrec.layers.lora.LoRAStarLinear` for STAR's layers) and returns an :class:`MLoRAModel`, which
keeps the model contract (``forward(batch) -> ModelOutput``, ``.schema``, ``.config``, ``check_batch``) and
passes each batch's domains to the adapters. Each adapted layer computes ``h_d = W x + b + B_d A_d x + b_d``
(paper eq. 9) with rank ``r = max(d_out // α, 1)`` (eq. 10).

Which layers are adapted (``targets``):

- ``"dnn"``: the hidden ``nn.Linear`` layers of the model's DNN tower(s): the sub-modules named ``dnn``,
  ``mlp`` or ``tower`` (every CTR backbone of polyrec keeps its deep part as ``self.dnn``). This is what the
  authors' code adapts (their ``Mlora`` layer replaces DeepCTR's DNN hidden layers; the logit layer stays
  shared).
- ``"output"``: the last linear layer of those towers (the logit layer, rank 1), and STAR's last star layer.
- ``"interaction"``: the ``nn.Linear`` layers inside interaction layers (:mod:`polyrec.layers.interaction`:
  AutoInt's attention projections, FiBiNET's SENET excitation).
- ``"star"``: STAR's hidden star-topology layers (STAR + MLoRA:
  ``h = (W ⊙ W_p) x + b + b_p + B_d A_d x + b_d``).

``targets=None`` picks ``("dnn",)`` when the model has a DNN tower and ``("star",)`` otherwise. A model with
an unusual layout can say what its towers are: a method ``adapter_targets(self) -> dict[str, list[str]]``
mapping target names to qualified module names (``nn.Linear`` or ``StarLinear``) replaces the discovery
above.

The adapted model's ``state_dict`` is the backbone's under ``backbone.`` (the wrapped layers keep their
parameter names, so a plain backbone checkpoint loads into ``model.backbone`` with ``strict=False``) plus
``<layer>.lora.{A,B,bias}`` and the ``backbone_domain`` map. Training modes: joint (adapters and backbone together, the paper's main table)
with any strategy; two-phase (paper §3.3) with :class:`polyrec.training.strategies.two_phase.TwoPhase`.
New domains: :func:`add_domain` (paper §1: "scalable and flexible to new domains by applying additional
LoRA adaptors"). Serving: :func:`fold_mlora` merges every domain's adapters into its own copy of each
adapted layer (``W + B_d A_d``), for inference only.

Example:
    >>> model = attach_mlora(create_model("deepfm", schema), alpha=32)      # doctest: +SKIP
    >>> model(batch).logits.shape                                            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import Check, field_error, param
from ..data.batch import Batch
from ..data.schema import DomainSpec
from ..layers.domain import StarLinear
from ..layers.lora import A_INITS, AdapterRouting, AdapterState, LoRABank, LoRALinear, LoRAStarLinear, lora_rank
from ..layers.mlp import MLP
from .base import Model, ModelOutput

TARGETS = ("dnn", "output", "interaction", "star")
DNN_ATTRS = ("dnn", "mlp", "tower")
#: α when neither the config nor the protocol preset gives one (the paper's setting, §4.3).
DEFAULT_ALPHA = 32


def _shown(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _target_list(targets: tuple[str, ...]) -> str | None:
    """Why a list of adapter targets is not allowed (empty, or a target named twice), or None."""
    if not targets:
        return f"{_shown(targets)!r} is not allowed; name at least one of {', '.join(TARGETS)} (or leave it unset)"
    for i, t in enumerate(targets):
        if t in targets[:i]:
            return f"{_shown(targets)!r} is not allowed; {t!r} is listed twice (name each target once)"
    return None


@dataclass(frozen=True)
class AdapterConfig:
    """The ``adapter`` section of an experiment config.

    Every field declares what it allows; a bad value is rejected when the config is read, as
    ``adapter.<field>: <value> is not allowed; ...``.

    Args:
        kind: ``none`` (the plain model) or ``mlora`` (per-domain low-rank adapters). With ``none`` the other
            fields must stay unset.
        alpha: MLoRA's temperature coefficient α >= 1, ``r = max(d_out // α, 1)`` per layer (eq. 10).
            ``None``: the protocol preset's per-model value (``mlora_alpha``), else 32 (the paper's §4.3
            setting).
        targets: which layers get adapters, a non-empty list of ``dnn``, ``output``, ``interaction``,
            ``star``, each at most once; ``None``: ``dnn`` if the model has a DNN tower, else ``star``.
        max_adapter_params: optional cap >= 1 on one domain's adapter parameters per layer; each layer's rank
            is reduced until ``D_in·r + r·D_out`` (``+ D_out`` with ``domain_bias``) fits (the production
            setting).
        domain_bias: a per-domain bias ``b_d`` in every adapted layer, beyond MLoRA's eq. 9 (``None``: off,
            the paper's layer; polyrec 0.2 always had it).
        a_init: how each ``A_d`` is drawn, ``gaussian`` (MLoRA §3.2, std 1/√D_in) or ``uniform``
            (±1/√D_in, ``nn.Linear``'s draw and polyrec 0.2's); ``None``: ``gaussian``.
    """

    kind: Literal["none", "mlora"] = "none"
    alpha: int | None = param(None, ge=1)
    targets: tuple[str, ...] | None = param(None, items=Check(choices=TARGETS), rule=_target_list)
    max_adapter_params: int | None = param(None, ge=1)
    domain_bias: bool | None = None
    a_init: str | None = param(None, choices=A_INITS)

    def __post_init__(self) -> None:
        if self.kind == "none":
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if f.name != "kind" and value is not None:
                    raise field_error(
                        f.name, _shown(value), "it is used only with adapters; set adapter.kind=mlora or drop it"
                    )


# ------------------------------------------------------------------------------------------------ discovery


def _dnn_towers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(a, m) for a in DNN_ATTRS if isinstance(m := getattr(model, a, None), nn.Module)]


def find_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Qualified names of the layers of ``model`` that ``targets`` select, in module order.

    Raises ValueError naming the targets the model has when a requested target matches no layer.
    """
    targets = tuple(targets)
    found: dict[str, list[str]] = {}
    if hasattr(model, "adapter_targets"):
        found = {k: list(v) for k, v in model.adapter_targets().items()}
    else:
        found = {t: [] for t in TARGETS}
        star_out: set[str] = set()
        for attr, tower in _dnn_towers(model):
            lin = [f"{attr}.{n}" for n, m in tower.named_modules() if isinstance(m, nn.Linear)]
            if isinstance(tower, MLP) and lin and isinstance(tower.net[-1], nn.Linear):
                found["output"].append(lin.pop())  # the logit layer of an MLP built with output_dim
            found["dnn"] += lin
        layers = getattr(model, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and isinstance(layers[-1], StarLinear):
            star_out.add("layers." + str(len(layers) - 1))
            found["output"].append("layers." + str(len(layers) - 1))
        from ..layers import interaction

        for name, m in model.named_modules():
            if isinstance(m, StarLinear) and name not in star_out:
                found["star"].append(name)
            elif type(m).__module__ == interaction.__name__:
                found["interaction"] += [f"{name}.{n}" for n, sub in m.named_modules() if isinstance(sub, nn.Linear)]
    out: list[str] = []
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"unknown adapter target {t!r}; valid: {', '.join(TARGETS)}")
        if not found.get(t):
            have = [k for k, v in found.items() if v]
            raise ValueError(
                f"model {getattr(model, 'model_name', type(model).__name__)!r} has no layers for adapter target "
                f"{t!r}; its targets: {have or 'none'}"
            )
        out += [n for n in found[t] if n not in out]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(out, key=lambda n: order.get(n, len(order)))


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """``("dnn",)`` for a model with a DNN tower (or its own ``adapter_targets``), else ``("star",)``."""
    if hasattr(model, "adapter_targets"):
        return ("dnn",)
    if any(isinstance(m, nn.Linear) for _, t in _dnn_towers(model) for m in t.modules()):
        return ("dnn",)
    return ("star",)


# ----------------------------------------------------------------------------------------------- the model


class MLoRAModel(Model):
    """A backbone with per-domain low-rank adapters; build it with :func:`attach_mlora`.

    The forward pass puts the batch's domains where the adapted layers read them (an
    :class:`~polyrec.layers.lora.AdapterState` they share) and calls the backbone. Domains added after
    training (:func:`add_domain`) are routed through an existing domain of the backbone
    (``backbone_domain``), since the backbone has no parameters for them; the adapters see the real one.

    Attributes:
        backbone: the wrapped model (its adapted layers replaced in place).
        schema: the adapted model's schema (the backbone's, plus any added domain).
        config: the backbone's config.
        adapter_config: the :class:`AdapterConfig` (with the α and targets used).
        backbone_domain: ``[D]`` buffer, the backbone domain each domain is computed with (identity for the
            backbone's own domains).

    STAR's :meth:`~polyrec.models.multidomain.star.StarModel.fold` folds the star weights only; an adapted
    model (STAR's included) is folded for serving by :func:`fold_mlora`.

    Shape:
        forward(batch) -> logits ``[B]``.
    """

    Config = AdapterConfig

    def __init__(self, backbone: Model, adapter_config: AdapterConfig, layers: list[str], state: AdapterState) -> None:
        super().__init__(backbone.schema, backbone.config)
        self.backbone = backbone
        self.adapter_config = adapter_config
        self.adapted_layers = tuple(layers)
        self.model_name = f"{getattr(backbone, 'model_name', type(backbone).__name__)}+mlora"
        self._state = state
        self._frozen_backbone: list[nn.Parameter] = []
        self._frozen_norms: list[nn.Module] = []
        self.register_buffer("backbone_domain", torch.arange(backbone.schema.num_domains))

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, batch: Batch) -> ModelOutput:
        domain = batch.domain
        remapped = self.num_domains > self.backbone.num_domains
        if remapped:
            batch = dataclasses.replace(batch, domain=self.backbone_domain.index_select(0, domain))
        self._state.routing = AdapterRouting(domain, remapped)
        try:
            return self.backbone(batch)
        finally:
            self._state.routing = None

    # ----------------------------------------------------------------------------------------- views
    def banks(self) -> Iterator[LoRABank]:
        return (m for m in self.modules() if isinstance(m, LoRABank))

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.banks() for p in b.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.adapter_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def num_adapter_parameters(self) -> int:
        return sum(p.numel() for p in self.adapter_parameters())

    def num_backbone_parameters(self) -> int:
        return sum(p.numel() for p in self.backbone_parameters())

    def adapter_share(self) -> float:
        """Adapter parameters / backbone parameters (all domains)."""
        return self.num_adapter_parameters() / max(self.num_backbone_parameters(), 1)

    def per_domain_adapter_parameters(self) -> int:
        """One domain's adapter parameters, all adapted layers together."""
        return sum(b.params_per_domain() for b in self.banks())

    # ---------------------------------------------------------------------------------- train modes
    @property
    def adapters_enabled(self) -> bool:
        return self._state.enabled

    def set_adapters(self, enabled: bool | None = None, trainable: bool | None = None) -> None:
        """Turn the adapters' computation on/off and/or their parameters' ``requires_grad``.

        Disabled adapters compute nothing, which equals their output while every ``B`` is zero.
        """
        if enabled is not None:
            self._state.enabled = bool(enabled)
        if trainable is not None:
            for p in self.adapter_parameters():
                p.requires_grad_(bool(trainable))

    def freeze_backbone(self, freeze_norm_stats: bool = True) -> None:
        """``requires_grad=False`` on every backbone parameter; optionally keep normalisation statistics fixed.

        With ``freeze_norm_stats`` the backbone's modules that keep running statistics (batch norm,
        partitioned norm) stay in eval mode even when the model is put in training mode, so the frozen
        backbone computes exactly the same function during adapter training. :meth:`unfreeze_backbone`
        undoes both (only for the parameters this call froze).
        """
        for p in self.backbone_parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                self._frozen_backbone.append(p)
        if freeze_norm_stats:
            self._frozen_norms = [
                m
                for m in self.backbone.modules()
                if any(n.startswith("running_") for n, _ in m.named_buffers(recurse=False))
            ]
            self.train(self.training)

    def unfreeze_backbone(self) -> None:
        for p in self._frozen_backbone:
            p.requires_grad_(True)
        self._frozen_backbone = []
        self._frozen_norms = []
        self.train(self.training)

    @property
    def backbone_frozen(self) -> bool:
        return bool(self._frozen_backbone)

    def train(self, mode: bool = True) -> MLoRAModel:
        super().train(mode)
        for m in self._frozen_norms:
            m.train(False)
        return self

    def extra_repr(self) -> str:
        c = self.adapter_config
        return f"alpha={c.alpha}, targets={list(c.targets or ())}, layers={len(self.adapted_layers)}"


def attach_mlora(
    model: Model,
    alpha: int = DEFAULT_ALPHA,
    targets: Iterable[str] | None = None,
    max_adapter_params: int | None = None,
    domain_bias: bool = False,
    a_init: str = "gaussian",
) -> MLoRAModel:
    """Wrap ``model``'s target layers with per-domain low-rank adapters (MLoRA); returns the adapted model.

    The target layers of ``model`` are replaced in place (the returned :class:`MLoRAModel` owns ``model``
    as ``backbone``); their parameters are kept (same tensors, same ``state_dict`` keys). Every ``B`` and
    per-domain bias starts at zero, so the adapted model computes exactly what ``model`` computed.

    Args:
        model: a built model (any registered model with the targeted layers).
        alpha: α, rank ``r = max(d_out // α, 1)`` per layer (MLoRA eq. 10).
        targets: ``dnn``, ``output``, ``interaction``, ``star`` (see the module docstring); ``None``: ``dnn``
            if the model has a DNN tower, else ``star``.
        max_adapter_params: optional cap on one domain's adapter parameters per layer.
        domain_bias: a per-domain bias ``b_d`` in each adapted layer (not in MLoRA's eq. 9).
        a_init: how ``A`` is drawn: ``gaussian`` (§3.2) or ``uniform``.

    Example:
        >>> model = attach_mlora(create_model("mlp", schema, hidden_units=[256, 128, 64]), alpha=16)  # doctest: +SKIP
        >>> [b.rank for b in model.banks()]                                                         # doctest: +SKIP
        [16, 8, 4]
    """
    if isinstance(model, MLoRAModel) or any(isinstance(m, LoRABank) for m in model.modules()):
        raise ValueError("the model already has adapters; attach_mlora wraps a plain model once")
    targets = tuple(targets) if targets is not None else default_targets(model)
    names = find_targets(model, targets)
    state = AdapterState()
    D = model.schema.num_domains
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if isinstance(layer, StarLinear):
            rank = lora_rank(layer.in_dim, layer.out_dim, alpha, max_adapter_params, domain_bias)
            new: nn.Module = LoRAStarLinear(layer, D, rank, state, domain_bias, a_init)
        elif isinstance(layer, nn.Linear):
            rank = lora_rank(layer.in_features, layer.out_features, alpha, max_adapter_params, domain_bias)
            new = LoRALinear(layer, D, rank, state, domain_bias, a_init)
        else:
            raise TypeError(f"adapter target {name!r} is a {type(layer).__name__}, not nn.Linear or StarLinear")
        setattr(parent, child, new)
    cfg = AdapterConfig(
        kind="mlora",
        alpha=alpha,
        targets=targets,
        max_adapter_params=max_adapter_params,
        domain_bias=domain_bias,
        a_init=a_init,
    )
    return MLoRAModel(model, cfg, names, state)


# --------------------------------------------------------------------------------------------- new domains


def add_domain(model: MLoRAModel, name: str, backbone_domain: int | str = 0) -> MLoRAModel:
    """Give a trained adapted model one more domain (in place): new adapter rows, ``B = 0``.

    The new domain's adapters start at ``A`` random, ``B = 0``, ``b_d = 0``, so it starts at the backbone's
    prediction. The backbone has no parameters for it and computes it as domain ``backbone_domain`` (an index
    or name of one of the backbone's own domains): its domain-indexed parts (STAR's per-domain weights,
    partitioned norm, an auxiliary network) are that domain's, and
    :func:`polyrec.data.new_domain_dataset` gives the new rows that domain's indicator feature. The
    schema's domains grow by ``name``. Existing domains' predictions do not change at all; train the new
    adapter alone with :func:`polyrec.training.strategies.two_phase.finetune_new_domains`.

    Returns the model. ``model.per_domain_adapter_parameters() / model.num_backbone_parameters()`` is the
    parameter share the domain adds.
    """
    if not isinstance(model, MLoRAModel):
        raise TypeError(f"add_domain needs an adapted model (attach_mlora), got {type(model).__name__}")
    spec = model.schema.domain
    if not isinstance(name, str) or not name:
        raise ValueError(f"a domain name must be a non-empty string, got {name!r}")
    if name in spec.values:
        raise ValueError(f"domain {name!r} already exists; the model's domains are {list(spec.values)}")
    bspec = model.backbone.schema.domain
    if isinstance(backbone_domain, str):
        backbone_domain = bspec.index(backbone_domain)
    if not 0 <= int(backbone_domain) < bspec.num_domains:
        raise ValueError(f"backbone_domain {backbone_domain} is not one of the backbone's {bspec.num_domains} domains")
    for bank in model.banks():
        bank.extend(1)
    model.backbone_domain = torch.cat([model.backbone_domain, model.backbone_domain.new_tensor([int(backbone_domain)])])
    model.schema = dataclasses.replace(model.schema, domain=DomainSpec(spec.name, (*spec.values, name)))
    return model


def stage_new_domains(model: MLoRAModel, first: int) -> list[nn.Parameter]:
    """Freeze everything except the adapter rows of domains ``first..D-1`` (staged as separate parameters).

    The backbone is frozen with its normalisation statistics (:meth:`MLoRAModel.freeze_backbone`); every
    bank's rows ``0..first-1`` become frozen parameters and the rest trainable ``*_new`` parameters, which
    are returned. :func:`merge_new_domains` undoes the staging.
    """
    model.freeze_backbone(freeze_norm_stats=True)
    model.set_adapters(enabled=True)
    staged: list[nn.Parameter] = []
    for bank in model.banks():
        staged += bank.stage(first)
    return staged


def merge_new_domains(model: MLoRAModel) -> None:
    """Join staged adapter rows back into single banks and unfreeze the backbone."""
    for bank in model.banks():
        bank.merge()
    model.unfreeze_backbone()


def fold_mlora(model: MLoRAModel) -> MLoRAModel:
    """An inference-only copy of ``model`` whose adapted layers hold every domain's merged weights.

    Each :class:`~polyrec.layers.lora.LoRALinear` becomes a :class:`~polyrec.layers.lora.FoldedLoRALinear`
    (``W + (A_d B_d)ᵀ``, ``b + b_d``), each :class:`~polyrec.layers.lora.LoRAStarLinear` a
    :class:`~polyrec.layers.lora.FoldedLoRAStarLinear` (``W ⊙ W_p + A_d B_d``, with the model's
    ``backbone_domain`` for added domains): a row takes one matmul per adapted layer instead of three. The
    copy is in eval mode, has no trainable parameters and equals ``model`` in eval mode to float rounding;
    ``model`` itself is not changed. A snapshot: fold again after further training.
    """
    if not isinstance(model, MLoRAModel):
        raise TypeError(f"fold_mlora needs an adapted model (attach_mlora), got {type(model).__name__}")
    folded = copy.deepcopy(model)
    for name in folded.adapted_layers:
        parent_name, _, child = name.rpartition(".")
        parent = folded.backbone.get_submodule(parent_name) if parent_name else folded.backbone
        layer = getattr(parent, child)
        if isinstance(layer, LoRAStarLinear):
            setattr(parent, child, layer.fold(folded.backbone_domain))
        else:
            setattr(parent, child, layer.fold())
    folded.requires_grad_(False)
    return folded.eval()


def strip_adapters(model: MLoRAModel) -> Model:
    """The backbone with its plain layers back (shared parameters, adapters dropped)."""
    for name in model.adapted_layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.backbone.get_submodule(parent_name) if parent_name else model.backbone
        setattr(parent, child, getattr(parent, child).unwrap())
    return model.backbone


def adapter_summary(model: nn.Module) -> dict[str, object]:
    """``adapter`` kind, parameter counts and share for a run record (works for plain models too)."""
    if not isinstance(model, MLoRAModel):
        n = sum(p.numel() for p in model.parameters())
        return {"adapter": "none", "adapter_params": 0, "backbone_params": n, "adapter_share": 0.0}
    return {
        "adapter": "mlora",
        "adapter_alpha": model.adapter_config.alpha,
        "adapter_targets": list(model.adapter_config.targets or ()),
        "adapter_ranks": [b.rank for b in model.banks()],
        "adapter_params": model.num_adapter_parameters(),
        "backbone_params": model.num_backbone_parameters(),
        "adapter_share": model.adapter_share(),
    }
