"""Export-friendly inference of the ranking models: plain tensors in, one logit per row out.

:class:`InferenceModule` wraps a trained ranking model (every model of ``list_models("ctr")`` and
``list_models("multidomain")``, with MLoRA adapters or MAMDR's domain-specific parameters) in an
``nn.Module`` that ``torch.export`` and ``torch.onnx.export(..., dynamo=True)`` trace with a dynamic batch
size. Choices made here:

- **Inputs are plain tensors**, in :attr:`InferenceModule.input_names` order (:func:`input_specs`): ``sparse``
  ``[B, Fs]`` int64 (the schema's sparse features, in schema order), ``dense`` ``[B, Fd]`` float32, one
  ``multi_<feature>`` ``[B, L]`` int64 per multi-valued feature (padded with 0), and ``domain`` ``[B]``
  int64. A group without features (no dense feature) has no input. No ranking model reads the user index
  (``Batch.user`` is for GAUC only; PPNet's prior ids are sparse features), so there is no user input. The
  ids are the encoded ones (``processing.json``'s vocabularies: 0 padding, 1 OOV).
- **One domain per call.** A serving request scores candidates for one domain, so the graph assumes that
  every row has the first row's domain (:func:`polyrec.layers.domain.assume_single_domain`: the domain
  segments are built without data-dependent operations, which is what makes the models traceable at
  all). The promise is checked in the graph at the cost of one comparison: a row whose domain differs
  from the first row's comes back NaN, never as a silently wrong score. A mixed batch is split by domain
  by the caller, :func:`predict_mixed` (any callable: this module, an ONNX Runtime session, an exported
  program), which also works for the models that could score a mixed batch at once.
- **The model is a snapshot**: the module holds a deep copy in eval mode, without gradients, so training
  the model further does not change an inference module built before (build a new one).
- **Folding** (``fold=True``, the default; an optimisation, the outputs equal the unfolded ones to float
  rounding): STAR's per-domain ``W ⊙ W_p``, ``b + b_p`` and Partitioned-Norm affine
  (:class:`~polyrec.models.multidomain.star.FoldedStar`, STAR §4.4); MLoRA's ``W + B_d A_d`` in every
  adapted layer (:func:`~polyrec.models.adapters.fold_mlora`); MAMDR's ``θ^S + θ^d`` of every domain,
  stored as one bank per parameter and gathered for the call's domain; DFEI's attention keys and values
  of the frozen domain features (:meth:`~polyrec.models.multidomain.dfei.DFEIModel.fold`). An adapted
  STAR folds through MLoRA (its star layers hold ``W ⊙ W_p + A_d B_d``; its PN affine is computed per
  call, a ``[1, F]`` product). Folding only ever holds per-domain copies the model already had in another
  form (STAR's and MAMDR's banks), or ``D`` copies of an adapted layer (MLoRA).
- **Models whose forward pass has data-dependent control flow** get an equivalent dense form: AITM runs
  the whole domain chain on every row and reads each row's logit at its position
  (:meth:`~polyrec.models.multidomain.aitm.AITMModel.forward_dense`); MAMDR's per-domain parameters are
  gathered by the call's domain instead of looping over the domains present.
- Auxiliary losses (AdaSparse's sparsity, MuLANN's adversarial loss) are training terms and are not
  outputs; the logit is (never a probability: ``sigmoid`` it for a click probability).
- :class:`UserTowerModule` does the same for the user tower of a two-tower retrieval model (inputs as
  :class:`~polyrec.retrieval.inputs.UserInputs`, one domain per call, output the user embedding).

Example:
    >>> module = InferenceModule(model)                                   # doctest: +SKIP
    >>> logits = module(*module.batch_inputs(batch))                      # a single-domain batch  # doctest: +SKIP
    >>> program = export_program(module)                                  # torch.export, dynamic B  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..data.batch import Batch
from ..data.schema import DatasetSchema
from ..layers.domain import assume_single_domain
from ..models.adapters import MLoRAModel, fold_mlora
from ..models.multidomain.aitm import AITMModel
from ..models.multidomain.dfei import DFEIModel
from ..models.multidomain.star import StarModel
from ..models.specific import DomainSpecificModel, _key

#: The name of the batch dimension in input specs and in the export manifest.
BATCH = "batch"
#: The size of the example batch the graph is traced with (not 0 or 1, which torch.export specialises).
EXAMPLE_BATCH = 3


@dataclass(frozen=True)
class InputSpec:
    """One input of an inference module (and of an exported graph).

    Args:
        name: the input's name (``sparse``, ``dense``, ``multi_<feature>``, ``domain``).
        dtype: ``int64`` or ``float32``.
        shape: the dimensions, :data:`BATCH` for the dynamic batch size.
        features: the features of its columns, in order (empty for ``domain``).
    """

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "features": list(self.features)}


def _multi_input_name(feature: str, taken: set[str]) -> str:
    base = "multi_" + (re.sub(r"[^0-9A-Za-z_]", "_", feature) or "feature")
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def input_specs(schema: DatasetSchema) -> list[InputSpec]:
    """The inputs of an inference module for ``schema``, in call order (see the module docstring).

    Example:
        >>> from polyrec.data.schema import DomainSpec, FeatureSpec
        >>> schema = DatasetSchema(features=(FeatureSpec("user_id", "sparse", vocab_size=10),
        ...                                  FeatureSpec("genres", "multi", vocab_size=8, max_len=3)),
        ...                        domain=DomainSpec("age", ("young", "old")))
        >>> [(s.name, s.dtype, s.shape) for s in input_specs(schema)]
        [('sparse', 'int64', ('batch', 1)), ('multi_genres', 'int64', ('batch', 3)), ('domain', 'int64', ('batch',))]
    """
    specs = []
    if schema.sparse:
        specs.append(InputSpec("sparse", "int64", (BATCH, len(schema.sparse)), tuple(schema.sparse_names)))
    if schema.dense:
        specs.append(InputSpec("dense", "float32", (BATCH, len(schema.dense)), tuple(f.name for f in schema.dense)))
    taken = {"sparse", "dense", "domain"}
    for f in schema.multi:
        name = _multi_input_name(f.name, taken)
        taken.add(name)
        specs.append(InputSpec(name, "int64", (BATCH, f.max_len), (f.name,)))
    specs.append(InputSpec("domain", "int64", (BATCH,)))
    return specs


def batch_inputs(specs: Sequence[InputSpec], batch: Batch) -> tuple[Tensor, ...]:
    """The inputs of ``batch`` in the call order of ``specs`` (:func:`input_specs`): the feed of an export."""
    out = []
    for spec in specs:
        if spec.name == "sparse":
            out.append(batch.sparse)
        elif spec.name == "dense":
            out.append(batch.dense)
        elif spec.name == "domain":
            out.append(batch.domain)
        else:
            out.append(batch.multi[spec.features[0]])
    return tuple(out)


# ------------------------------------------------------------------------------------------- scorers
# A scorer is a module ``forward(batch) -> logits [B]`` run within assume_single_domain().


class _Forward(nn.Module):
    """The model's own forward pass (AITM: its dense form), logits only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        if isinstance(self.model, AITMModel):
            return self.model.forward_dense(batch).logits
        return self.model(batch).logits


class _Folded(nn.Module):
    """A folded inference view (FoldedStar, FoldedDFEI), logits only."""

    def __init__(self, folded: nn.Module) -> None:
        super().__init__()
        self.folded = folded

    def forward(self, batch: Batch) -> Tensor:
        return self.folded(batch).logits


class _Specific(nn.Module):
    """MAMDR's Θ_d = θ^S + θ^d for the call's domain (the first row's), gathered from per-parameter banks.

    Folded: the banks hold θ^S + θ^d of every domain (buffers ``[D, *shape]``, the memory the offsets took),
    one gather per parameter and call. Unfolded: the offsets are gathered and added to θ^S at every call.
    Either way the wrapped model runs once, with its parameters replaced (:func:`torch.func.functional_call`).
    The gather copies the call's domain's parameters, embedding tables included when they have offsets
    (MAMDR's default ``specific_parameters: all``): with large tables that copy is the main cost of a call,
    and ``specific_parameters: dense`` (shared tables) avoids it.
    """

    def __init__(self, model: DomainSpecificModel, fold: bool) -> None:
        super().__init__()
        self.inner = _Forward(model.model)
        self.names = tuple(model.specific_names)
        self.keys = tuple(_key(n) for n in self.names)
        self.fold = fold
        with torch.no_grad():
            shared = dict(model.model.named_parameters())
            banks = {}
            for name, key in zip(self.names, self.keys):
                offsets = model.specific[key].detach()
                banks[key] = (shared[name].detach().unsqueeze(0) + offsets) if fold else offsets.clone()
        self.banks = nn.Module()
        for key, bank in banks.items():
            self.banks.register_buffer(key, bank)

    def forward(self, batch: Batch) -> Tensor:
        first = batch.domain[:1]
        shared = dict(self.inner.model.named_parameters())
        params = {}
        for name, key in zip(self.names, self.keys):
            row = getattr(self.banks, key).index_select(0, first).squeeze(0)
            params["model." + name] = row if self.fold else shared[name] + row
        return functional_call(self.inner, params, (batch,))


def _scorer(model: nn.Module, fold: bool) -> tuple[nn.Module, list[str]]:
    """The scorer of (a deep copy of) ``model`` and what was folded in it."""
    if isinstance(model, DomainSpecificModel):
        return _Specific(model, fold), (["mamdr: θ^S + θ^d per domain"] if fold else [])
    if isinstance(model, MLoRAModel):
        if fold:
            return _Forward(fold_mlora(model)), ["mlora: W + B_d A_d per domain"]
        return _Forward(model), []
    if fold and isinstance(model, StarModel):
        return _Folded(model.fold()), ["star: W ⊙ W_p, b + b_p, partitioned-norm affine per domain"]
    if fold and isinstance(model, DFEIModel):
        return _Folded(model.fold()), ["dfei: attention keys and values of the domain features"]
    return _Forward(model), []


# ------------------------------------------------------------------------------------------- the module


class InferenceModule(nn.Module):
    """A trained ranking model as a module of plain tensors: ``forward(*inputs) -> logits [B]``, one domain a call.

    Args:
        model: a built ranking model (from the registry, with MLoRA adapters or MAMDR's domain-specific
            parameters; as :func:`polyrec.experiment.load_run` gives it). A deep copy is taken, in eval
            mode.
        fold: precompute the per-domain parameters that can be (see the module docstring).

    Attributes:
        schema: the model's schema (what the inputs encode).
        specs: the inputs (:func:`input_specs`); ``input_names`` their names, in call order.
        folded: what was folded, one line each (empty: nothing).

    Shape:
        forward(*inputs) with inputs as :attr:`specs` says -> logits ``[B]`` float32; NaN for a row whose
        domain is not the first row's (serve one domain per call, or split with :func:`predict_mixed`).
    """

    def __init__(self, model: nn.Module, fold: bool = True) -> None:
        super().__init__()
        if not hasattr(model, "schema") or not isinstance(model.schema, DatasetSchema):
            raise TypeError(
                f"InferenceModule needs a ranking model built from a DatasetSchema, got {type(model).__name__}; "
                "retrieval models export their towers with polyrec.serving.export.export_retrieval_run"
            )
        snapshot = copy.deepcopy(model).eval()
        snapshot.requires_grad_(False)
        self.schema: DatasetSchema = snapshot.schema
        self.model_name = getattr(snapshot, "model_name", type(snapshot).__name__)
        self.specs = input_specs(self.schema)
        self.input_names = [s.name for s in self.specs]
        self.scorer, self.folded = _scorer(snapshot, fold)
        self.scorer.requires_grad_(False)
        self.scorer.eval()
        self._multi = [(s.name, s.features[0]) for s in self.specs if s.name.startswith("multi_")]
        self.train(False)

    def train(self, mode: bool = True) -> InferenceModule:
        """An inference module stays in eval mode (dropout off, normalisation statistics fixed)."""
        super().train(False)
        return self

    # -------------------------------------------------------------------------------------- inputs
    def _batch(self, inputs: Sequence[Tensor]) -> Batch:
        if len(inputs) != len(self.specs):
            raise TypeError(f"InferenceModule takes {len(self.specs)} inputs {self.input_names}, got {len(inputs)}")
        given = dict(zip(self.input_names, inputs))
        domain = given["domain"]
        n = domain.shape[0]
        sparse = given.get("sparse")
        dense = given.get("dense")
        return Batch(
            sparse=sparse if sparse is not None else domain.new_zeros((n, 0)),
            dense=dense if dense is not None else torch.zeros((n, 0), dtype=torch.float32, device=domain.device),
            label=torch.zeros(domain.shape, dtype=torch.float32, device=domain.device),
            domain=domain,
            multi={feature: given[name] for name, feature in self._multi},
        )

    def batch_inputs(self, batch: Batch) -> tuple[Tensor, ...]:
        """The inputs of ``batch`` in call order (``module(*module.batch_inputs(batch))``)."""
        return batch_inputs(self.specs, batch)

    def named_inputs(self, batch: Batch) -> dict[str, Tensor]:
        """``{input name: tensor}`` of ``batch`` (the feed of an exported graph, as tensors)."""
        return dict(zip(self.input_names, self.batch_inputs(batch)))

    def example_inputs(self, batch_size: int = EXAMPLE_BATCH, domain: int = 0) -> tuple[Tensor, ...]:
        """Inputs of ``batch_size`` rows of ``domain``: padding/OOV ids, zero dense values (for tracing)."""
        out = []
        for spec in self.specs:
            if spec.name == "domain":
                out.append(torch.full((batch_size,), domain, dtype=torch.long))
            elif spec.dtype == "float32":
                out.append(torch.zeros(batch_size, spec.shape[1]))
            else:
                out.append(torch.ones(batch_size, spec.shape[1], dtype=torch.long))
        return tuple(out)

    def dynamic_shapes(self) -> tuple[tuple[dict[int, Any], ...]]:
        """The ``dynamic_shapes`` argument of ``torch.export.export`` / ``torch.onnx.export``: B dynamic."""
        batch = torch.export.Dim(BATCH)
        return (tuple({0: batch} for _ in self.specs),)

    # -------------------------------------------------------------------------------------- forward
    def forward(self, *inputs: Tensor) -> Tensor:
        batch = self._batch(inputs)
        with assume_single_domain():
            logits = self.scorer(batch)
        same = batch.domain == batch.domain[:1]
        return torch.where(same, logits, torch.full_like(logits, float("nan")))

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, inputs={self.input_names}, folded={self.folded}"


class UserTowerModule(nn.Module):
    """The user tower of a two-tower retrieval model as a module of plain tensors, one domain a call.

    Args:
        model: a built retrieval model (:mod:`polyrec.models.retrieval`); a deep copy is taken, in eval mode.

    Inputs (:attr:`specs`): ``user_sparse`` ``[B, F_u]`` int64 (the schema's user fields, in order),
    ``history`` ``[B, L]`` int64 (the user's recent positives as ``item + 1``, 0 padding) and ``domain``
    ``[B]`` int64, as :class:`~polyrec.retrieval.inputs.UserInputs` holds them.

    Shape:
        forward(user_sparse, history, domain) -> ``[B, output_dim]`` user embeddings (L2-normalised when the
        model's ``normalize``); a row whose domain is not the first row's comes back NaN.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from ..retrieval.inputs import UserInputs

        schema = getattr(model, "schema", None)
        if schema is None or not hasattr(schema, "user_fields"):
            raise TypeError(f"UserTowerModule needs a retrieval model, got {type(model).__name__}")
        self._inputs = UserInputs
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.model_name = getattr(model, "model_name", type(model).__name__)
        self.specs = [
            InputSpec(
                "user_sparse", "int64", (BATCH, len(schema.user_fields)), tuple(n for n, _ in schema.user_fields)
            ),
            InputSpec("history", "int64", (BATCH, schema.history_len), ("history",)),
            InputSpec("domain", "int64", (BATCH,)),
        ]
        self.input_names = [s.name for s in self.specs]
        self.train(False)

    def train(self, mode: bool = True) -> UserTowerModule:
        """A tower module stays in eval mode."""
        super().train(False)
        return self

    def example_inputs(self, batch_size: int = EXAMPLE_BATCH, domain: int = 0) -> tuple[Tensor, ...]:
        """Inputs of ``batch_size`` rows of ``domain`` (id 1 everywhere, for tracing)."""
        sparse, history, _ = self.specs
        return (
            torch.ones(batch_size, sparse.shape[1], dtype=torch.long),
            torch.ones(batch_size, history.shape[1], dtype=torch.long),
            torch.full((batch_size,), domain, dtype=torch.long),
        )

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """The ``dynamic_shapes`` argument of ``torch.export.export`` / ``torch.onnx.export``: B dynamic."""
        batch = torch.export.Dim(BATCH)
        return ({0: batch}, {0: batch}, {0: batch})

    def forward(self, user_sparse: Tensor, history: Tensor, domain: Tensor) -> Tensor:
        with assume_single_domain():
            emb = self.model.user_embedding(self._inputs(user_sparse, history, domain))
        same = (domain == domain[:1]).unsqueeze(1)
        return torch.where(same, emb, torch.full_like(emb, float("nan")))


def export_program(module: InferenceModule | UserTowerModule) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``module`` with a dynamic batch size (traced on :meth:`example_inputs`)."""
    with torch.no_grad():
        return torch.export.export(module, module.example_inputs(), dynamic_shapes=module.dynamic_shapes())


# ------------------------------------------------------------------------------------------- mixed batches


def predict_mixed(
    run: Callable[[dict[str, Any]], Any], inputs: Mapping[str, Any], domain_input: str = "domain"
) -> np.ndarray:
    """Logits of a batch of any mix of domains: one call of ``run`` per domain present, rows put back in order.

    Args:
        run: scores one single-domain feed ``{input name: array}`` -> ``[n]`` logits; for example
            ``lambda feed: module(*feed.values())`` (feeds keep :attr:`InferenceModule.input_names` order), an
            ONNX Runtime session's ``lambda feed: session.run(None, feed)[0]``, or
            :meth:`polyrec.serving.export.LoadedExport.run`.
        inputs: ``{input name: [B, ...] array or tensor}``, in call order.
        domain_input: the name of the domain input.

    Returns:
        ``[B]`` float32 logits in the rows' order.

    Example:
        >>> feed = {"x": np.array([[1.0], [2.0], [3.0]]), "domain": np.array([1, 0, 1])}
        >>> predict_mixed(lambda f: f["x"][:, 0] * 10 + f["domain"], feed)
        array([11., 20., 31.], dtype=float32)
    """
    if domain_input not in inputs:
        raise KeyError(f"predict_mixed: the inputs {list(inputs)} have no domain input {domain_input!r}")
    domain = inputs[domain_input]
    domain = domain.detach().cpu().numpy() if isinstance(domain, Tensor) else np.asarray(domain)
    out = np.empty(domain.shape[0], dtype=np.float32)
    for d in np.unique(domain):
        rows = np.flatnonzero(domain == d)
        index = torch.from_numpy(rows)
        feed = {
            k: (v.index_select(0, index.to(v.device)) if isinstance(v, Tensor) else v[rows]) for k, v in inputs.items()
        }
        scores = run(feed)
        scores = scores.detach().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores)
        out[rows] = scores.reshape(-1)
    return out


__all__ = [
    "BATCH",
    "EXAMPLE_BATCH",
    "InferenceModule",
    "InputSpec",
    "UserTowerModule",
    "export_program",
    "input_specs",
    "predict_mixed",
]
