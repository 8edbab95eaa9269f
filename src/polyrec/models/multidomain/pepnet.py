"""PEPNet: Parameter and Embedding Personalized Network (Chang et al., KDD 2023), and its halves EPNet and PPNet.

One implementation, three registered entries: ``pepnet`` (EPNet + PPNet), ``epnet`` (the embedding
personalisation gate and a shared DNN) and ``ppnet`` (the parameter personalisation gates only).

- **EPNet**: ``δ_domain = U_ep(E(F_d) ⊕ ⊘(E))``, ``O_ep = δ_domain ⊗ E``. E is the general
  input (all embeddings, flattened, then the dense values), F_d the domain: here the model's own domain
  indicator embedding on ``batch.domain``. ⊘ is stop-gradient: the gate reads the embeddings but does not
  train them, so they are learned only through the main network.
- **PPNet**: ``O_prior = E(F_u) ⊕ E(F_i)`` (user and item id embeddings);
  ``δ^(l) = U_pp^(l)(O_prior ⊕ ⊘(O_ep))`` and the DNN's hidden layer l is scaled by it,
  ``H^(l+1) = δ^(l) ⊗ f(H^(l) W^(l) + b^(l))``.

Every gate is a :class:`~polyrec.layers.gates.GateNU`, ``γ·sigmoid(MLP(x))`` with γ = 2.

Readings made here:

- Single task: the paper's task towers collapse to one DNN; PPNet gates every hidden layer of it (the gate
  scales the layer's activation, i.e. the next layer's input; the DNN input itself is personalised by EPNet).
- The prior ids are the schema's user feature and one item feature (``prior_features``); their embeddings
  are the same rows the main network reads (one table), and they do receive gradient through the PPNet
  gates (the paper stops the gradient only on O_ep).
- ``ppnet`` has no EPNet, so its gates read ``⊘(E)`` in place of ``⊘(O_ep)`` and the domain embedding is an
  input feature of the DNN (as in the Scenario-Wise-Rec benchmark's PPNet); in ``epnet`` and ``pepnet`` the
  domain enters only through the EPNet gate, as in the paper.
- The Scenario-Wise-Rec PPNet feeds its tower with the gate input ``O_prior ⊕ ⊘(E)``, so its general
  embeddings never train, and runs one tower per domain on every row; neither is copied here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...config import ConfigError, param
from ...data.batch import Batch
from ...layers.gates import GateNU
from ...layers.mlp import activation as make_activation
from .._registry import register_model
from ..base import Model, ModelConfig, ModelOutput, feature_names, layer_sizes


@dataclass(frozen=True)
class EPNetConfig(ModelConfig):
    """Config of :class:`EPNetModel` (the shared fields: :class:`~polyrec.models.base.ModelConfig`).

    Args:
        hidden_units: the DNN's hidden sizes, each >= 1 and at least one (default (128, 64, 32), the P2
            benchmark's); a linear output layer of size 1 follows.
        gamma: γ > 0 of every Gate NU, whose output lies in (0, γ) (paper: 2, so a gate can amplify as well
            as damp).
        gate_hidden: hidden size of every Gate NU, >= 1, or 0: the size of what the gate scales.
    """

    hidden_units: tuple[int, ...] = layer_sizes((128, 64, 32), required=True)
    gamma: float = param(2.0, gt=0)
    gate_hidden: int = param(0, ge=0)


@dataclass(frozen=True)
class PEPNetConfig(EPNetConfig):
    """Config of :class:`PEPNetModel` (and :class:`PPNetModel`): :class:`EPNetConfig` plus the prior ids.

    Args:
        prior_features: the sparse features whose embeddings condition the PPNet gates (the paper's user,
            item and author ids). Empty: the schema's user feature and the first other sparse feature (by
            the protocols' convention the item id); without a user feature, the first two sparse features.
            Each name once; that it is a sparse feature of the data is checked when the model is built.
    """

    prior_features: tuple[str, ...] = feature_names()


PPNetConfig = PEPNetConfig


class _PEPNetFamily(Model):
    """The shared implementation of ``pepnet``, ``epnet`` and ``ppnet`` (selected by the class flags).

    Shape:
        forward(batch) -> logits ``[B]``.
    """

    use_epnet: ClassVar[bool] = True
    use_ppnet: ClassVar[bool] = True

    def __init__(self, schema, config: EPNetConfig) -> None:
        super().__init__(schema, config)
        E = config.embedding_dim
        input_dim = self._build_embeddings()
        self.domain_embedding = nn.Embedding(schema.num_domains, E)
        nn.init.normal_(self.domain_embedding.weight, std=1e-2)
        gate_hidden = config.gate_hidden or None

        # EPNet: δ_domain = U_ep(E(F_d) ⊕ ⊘(E)), same size as E.
        self.ep_gate = GateNU(E + input_dim, input_dim, gate_hidden, config.gamma) if self.use_epnet else None
        dnn_in = input_dim if self.use_epnet else input_dim + E  # ppnet alone: the domain is a DNN input

        # PPNet: one gate per hidden layer, conditioned on O_prior ⊕ ⊘(DNN input).
        self.pp_gates = None
        if self.use_ppnet:
            fields = self.embeddings.sparse_names + self.embeddings.multi_names
            names = self._prior_names(schema, config.prior_features)
            for n in names:
                if n not in self.embeddings.sparse_names:
                    raise ConfigError(
                        f"model.prior_features: {n!r} is not allowed; it is not a sparse feature of the data; "
                        f"valid: {self.embeddings.sparse_names} (model {self.model_name!r})"
                    )
            self.prior_names = names
            self.register_buffer(
                "prior_fields", torch.tensor([fields.index(n) for n in names], dtype=torch.long), persistent=False
            )
            prior_dim = len(names) * E + dnn_in
            self.pp_gates = nn.ModuleList(GateNU(prior_dim, h, gate_hidden, config.gamma) for h in config.hidden_units)

        sizes = [dnn_in, *config.hidden_units]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], 1)
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._build_aux()

    @staticmethod
    def _prior_names(schema, wanted: tuple[str, ...]) -> list[str]:
        if wanted:
            return list(wanted)
        names = [n for n in schema.sparse_names if n != schema.domain_feature]
        if schema.user_feature is not None:
            others = [n for n in names if n != schema.user_feature]
            return [schema.user_feature, *others[:1]]
        if not names:
            raise ValueError("PPNet needs at least one sparse feature for its prior ids (prior_features)")
        return names[:2]

    def dnn_input(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The embeddings ``[B, F, E]`` and the DNN input: O_ep (EPNet) or ``E ⊕ domain embedding`` (ppnet)."""
        emb = self.embeddings(batch)
        general = self.flat_inputs(batch, emb)
        dom = self.domain_embedding(batch.domain)
        if self.ep_gate is not None:
            delta = self.ep_gate(torch.cat([dom, general.detach()], dim=1))  # ⊘(E): the gate does not train E
            return emb, delta * general
        return emb, torch.cat([general, dom], dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        emb, h = self.dnn_input(batch)
        gate_in = None
        if self.pp_gates is not None:
            prior = emb.index_select(1, self.prior_fields).flatten(1)
            gate_in = torch.cat([prior, h.detach()], dim=1)  # O_prior ⊕ ⊘(O_ep)
        for i, layer in enumerate(self.hidden):
            h = self.act(layer(h))
            if gate_in is not None:
                h = h * self.pp_gates[i](gate_in)
            h = self.dropout(h)
        logits = self.out(h).squeeze(-1)
        return ModelOutput(self.add_aux_logit(logits, batch))


@register_model("pepnet", tags=("multidomain",))
class PEPNetModel(_PEPNetFamily):
    """PEPNet (KDD 2023): EPNet domain gate on the embeddings and PPNet id-conditioned gates on every hidden layer.

    Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with Personalized Prior
    Information", KDD 2023. See the module docstring for the equations and the readings made.

    Shape:
        forward(batch) -> logits ``[B]``.
    """

    Config = PEPNetConfig
    use_epnet = True
    use_ppnet = True


@register_model("epnet", tags=("multidomain",))
class EPNetModel(_PEPNetFamily):
    """EPNet (PEPNet's embedding half): a domain-conditioned Gate NU scales the embeddings before a shared DNN.

    Chang et al., KDD 2023 (EPNet). The gate reads the domain embedding and the stop-gradient embeddings.

    Shape:
        forward(batch) -> logits ``[B]``.
    """

    Config = EPNetConfig
    use_epnet = True
    use_ppnet = False


@register_model("ppnet", tags=("multidomain",))
class PPNetModel(_PEPNetFamily):
    """PPNet (PEPNet's parameter half): user/item-id-conditioned Gate NUs scale every hidden layer of the DNN.

    Chang et al., KDD 2023 (PPNet). The domain embedding is an input feature of the DNN.

    Shape:
        forward(batch) -> logits ``[B]``.
    """

    Config = PPNetConfig
    use_epnet = False
    use_ppnet = True
