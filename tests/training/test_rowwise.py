"""Row-wise domain-bank updates (``train.bank_update: rowwise``): lazy Adam on the present domains' rows."""

from __future__ import annotations

import math

import pytest
import torch
from builders import make_batch, make_schema
from torch import nn

import polyrec
from polyrec.config import ConfigError, from_dict
from polyrec.data.config import DataConfig
from polyrec.data.dataset import build_dataset
from polyrec.layers.bank import domain_banks, mark_domain_bank
from polyrec.layers.domain import bank_row_gradients, gather_rows
from polyrec.models import create_model
from polyrec.models.adapters import attach_mlora
from polyrec.training.rowwise import clip_grad_norm, rowwise_step
from polyrec.training.strategies import TrainContext
from polyrec.training.task import BinaryTask
from polyrec.training.trainer import TrainConfig, Trainer, make_optimizer

DATA = {
    "source": {
        "kind": "synthetic",
        "options": {"n_domains": 3, "n_samples": [300, 240, 180], "n_users": 60, "n_items": 50, "seed": 2},
    },
    "label": {"column": "label"},
    "domain": {"column": "domain"},
    "features": [{"name": "user_id"}, {"name": "item_id"}, {"name": "dense_0", "kind": "dense"}],
    "split": {"method": "stratified_domain", "ratios": [0.7, 0.15, 0.15], "seed": 0},
}


@pytest.fixture(scope="module")
def ds():
    return build_dataset(from_dict(DataConfig, DATA), cache=False)


def _star(ds):
    torch.manual_seed(0)
    return create_model("star", ds.schema, embedding_dim=4, hidden_units=[8, 4], dropout=0.0)


def _ctx(model, ds, update, optimizer="adam", **kw):
    cfg = TrainConfig(optimizer=optimizer, lr=1e-2, bank_update=update, **kw)
    return TrainContext(
        model,
        make_optimizer(model, cfg),
        BinaryTask(),
        ds,
        rows=ds.splits["train"],
        batch_size=128,
        sampler="mixed",
        seed=0,
        device=torch.device("cpu"),
        grad_clip=cfg.grad_clip,
        bank_update=update,
    )


def _domain_batch(ds, ctx, domain, n=40):
    return ds.batch(ctx.domain_rows(domain)[:n])


def test_star_marks_its_domain_banks(ds):
    model = _star(ds)
    names = {n for n, p in model.named_parameters() if p in domain_banks(model)}
    assert {"layers.0.domain_weight", "layers.0.domain_bias", "pn.domain_gamma", "pn.domain_beta"} <= names
    assert not any(n.endswith((".weight", ".bias")) and "domain" not in n for n in names)  # shared stay dense


def test_absent_domains_parameters_and_moments_bit_unchanged(ds):
    model = _star(ds)
    ctx = _ctx(model, ds, "rowwise")
    for d in (0, 1, 2):
        ctx.step(_domain_batch(ds, ctx, d))
    banks = domain_banks(model)
    before = {p: (p.detach()[2].clone(), {k: v[2].clone() for k, v in ctx.optimizer.state[p].items()}) for p in banks}
    for d in (0, 1, 0, 1):
        ctx.step(_domain_batch(ds, ctx, d))
    for p, (row, state) in before.items():
        assert torch.equal(p.detach()[2], row)
        for k, v in state.items():
            assert torch.equal(ctx.optimizer.state[p][k][2], v), k
        assert not torch.equal(p.detach()[0], p.detach()[2]) or p.shape[0] != 3  # the others moved
    assert ctx.optimizer.state[next(iter(banks))]["step"].tolist() == [3.0, 3.0, 1.0]
    # The dense update moves the absent domain through Adam's moments.
    dense = _star(ds)
    dctx = _ctx(dense, ds, "dense")
    for d in (0, 1, 2):
        dctx.step(_domain_batch(ds, dctx, d))
    w = dense.layers[0].domain_weight.detach()[2].clone()
    dctx.step(_domain_batch(ds, dctx, 0))
    assert not torch.equal(dense.layers[0].domain_weight.detach()[2], w)


@pytest.mark.parametrize(("optimizer", "clip"), [("adam", 0.0), ("adamw", 0.05)])
def test_every_domain_present_equals_dense_adam(ds, optimizer, clip):
    results = []
    for update in ("dense", "rowwise"):
        model = _star(ds)
        ctx = _ctx(model, ds, update, optimizer=optimizer, grad_clip=clip, weight_decay=0.01)
        for batch in ctx.batches(0):  # 4 steps
            assert batch.domain.unique().numel() == 3
            ctx.step(batch)
        results.append(model.state_dict())
    for k, v in results[0].items():
        torch.testing.assert_close(results[1][k], v, rtol=0, atol=2e-7, msg=k)


def _toy():
    module = nn.Module()
    module.w = nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]))
    return mark_domain_bank(module, "w")


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_domains_first_step_after_absence_is_lazy_adam(optimizer):
    lr, wd, b1, b2, eps = 0.1, 0.2, 0.9, 0.999, 1e-8
    model = _toy()
    opt = make_optimizer(model, TrainConfig(optimizer=optimizer, lr=lr, weight_decay=wd))
    grads = {1: [0.3, -0.2], 2: [0.1, 0.4], 3: [-0.5, 0.7], 4: [0.6, 0.2]}
    present = {1: [0, 1], 2: [0], 3: [0], 4: [0, 1]}  # domain 1 absent at steps 2 and 3, domain 2 always
    for t in (1, 2, 3, 4):
        g = torch.zeros(3, 2)
        g[present[t]] = torch.tensor(grads[t])
        model.w.grad = g
        rowwise_step(opt, domain_banks(model), torch.tensor(present[t]))
    assert model.w.detach()[2].tolist() == [-0.75, 1.5]
    assert opt.state[model.w]["step"].tolist() == [4.0, 2.0, 0.0]

    # Domain 1 by hand: its own step 1 at global step 1, its own step 2 at global step 4.
    p, m, v = [2.0, 0.25], [0.0, 0.0], [0.0, 0.0]
    for t, g in ((1, grads[1]), (2, grads[4])):
        for i in range(2):
            gi = g[i]
            if optimizer == "adamw":
                p[i] *= 1 - lr * wd
            else:
                gi = gi + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            p[i] -= lr / (1 - b1**t) * m[i] / (math.sqrt(v[i]) / math.sqrt(1 - b2**t) + eps)
    torch.testing.assert_close(model.w.detach()[1], torch.tensor(p), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt.state[model.w]["exp_avg"][1], torch.tensor(m), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(opt.state[model.w]["exp_avg_sq"][1], torch.tensor(v), rtol=1e-6, atol=1e-10)


def test_per_domain_groups_and_unmarked_parameters():
    model = _toy()
    mark_domain_bank(model, "w", per_domain=1)
    model.shared = nn.Parameter(torch.ones(2))
    model.pair = nn.Parameter(torch.ones(6, 2))  # 3 domains x 2 members
    mark_domain_bank(model, "pair", per_domain=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    rowwise_step(opt, domain_banks(model), torch.tensor([1, 1]))
    torch.testing.assert_close(model.shared.detach(), torch.full((2,), 0.9))  # the plain Adam step
    changed = (model.pair.detach() != 1).all(1).tolist()
    assert changed == [False, False, True, True, False, False]


def test_config_switch():
    assert from_dict(TrainConfig, {"bank_update": "rowwise"}).bank_update == "rowwise"
    assert from_dict(TrainConfig, {}).bank_update == "dense"
    with pytest.raises(ConfigError, match="train.bank_update"):
        from_dict(TrainConfig, {"bank_update": "sparse"}, path="train")
    with pytest.raises(ConfigError, match=r"bank_update.*adam"):
        from_dict(TrainConfig, {"bank_update": "rowwise", "optimizer": "sgd"}, path="train")


def test_checkpoint_resume_is_bit_identical(ds, tmp_path):
    def cfg(epochs):
        return TrainConfig(
            batch_size=64, max_epochs=epochs, patience=0, seed=1, bank_update="rowwise", strategy="domain_batched"
        )

    whole = Trainer(_star(ds), ds, cfg(3), out_dir=tmp_path / "a", progress=False)
    whole.fit()
    Trainer(_star(ds), ds, cfg(2), out_dir=tmp_path / "b", progress=False).fit()
    resumed = Trainer(_star(ds), ds, cfg(3), out_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed.fit()["resumed_from_epoch"] == 2
    for k, v in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    a, b = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert any(s["step"].dim() == 1 for s in a.values())
    for i, s in a.items():
        for k, v in s.items():
            assert torch.equal(b[i][k], v), (i, k)


MODELS = [m for m in polyrec.list_models() if "retrieval" not in polyrec.models.model_tags(m)]


@pytest.mark.parametrize("name", MODELS)
def test_marked_banks_get_no_gradient_from_other_domains(name):
    """Only routed banks may be marked: absent domains' rows of a marked bank get exactly zero gradient."""
    schema = make_schema(num_domains=4)
    torch.manual_seed(0)
    model = create_model(name, schema)
    if name == "star":
        model = attach_mlora(model, domain_bias=True)
    model.train()
    batch = make_batch(schema, n=32, domains=[0, 2] * 16)
    out = model(batch)
    (out.logits.sum() + sum(out.aux_losses.values(), torch.zeros(()))).backward()
    for p, bank in domain_banks(model).items():
        if p.grad is None:
            continue
        absent = bank.rows(torch.tensor([1, 3]), p.shape[0])
        assert torch.count_nonzero(p.grad.index_select(0, absent)) == 0, name


@pytest.mark.parametrize("name", MODELS)
def test_gathered_bank_rows_give_the_dense_gradient_as_a_sparse_one(name):
    """Under bank_row_gradients a gathered bank's gradient is sparse, holds only the present domains' rows,
    and equals the dense gradient; every other gradient is unchanged."""
    schema = make_schema(num_domains=4)
    batch = make_batch(schema, n=32, domains=[0, 2] * 16)
    grads = []
    for rows_only in (False, True):
        torch.manual_seed(0)
        model = create_model(name, schema)
        if name == "star":
            model = attach_mlora(model, domain_bias=True)
        model.train()
        with bank_row_gradients(domain_banks(model) if rows_only else ()):
            out = model(batch)
        (out.logits.sum() + sum(out.aux_losses.values(), torch.zeros(()))).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        banks = {n for n, p in model.named_parameters() if p in domain_banks(model)}
    dense, sparse = grads
    assert dense.keys() == sparse.keys()
    for n, g in sparse.items():
        if g.is_sparse:
            assert n in banks, n
            present = set(g.coalesce().indices()[0].tolist())
            bank = domain_banks(model)[dict(model.named_parameters())[n]]
            assert present <= set(bank.rows(torch.tensor([0, 2]), g.shape[0]).tolist()), n
            g = g.to_dense()
        torch.testing.assert_close(g, dense[n], rtol=1e-6, atol=1e-7, msg=n)
    if name in ("star", "shared_bottom", "mmoe", "ple"):
        assert any(g.is_sparse for g in sparse.values()), name


def test_clipping_a_mix_of_sparse_and_dense_gradients_is_torchs_clipping():
    torch.manual_seed(0)
    bank, shared = nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(4))
    rows = torch.tensor([1, 4, 1])
    with bank_row_gradients([bank]):
        loss = (gather_rows(bank, rows) ** 2).sum() + (shared**3).sum() + gather_rows(shared, rows[:1]).sum()
    loss.backward()
    assert bank.grad.is_sparse and not shared.grad.is_sparse  # an unlisted parameter's gather stays dense
    dense_bank, dense_shared = bank.grad.to_dense().clone(), shared.grad.clone()
    total = clip_grad_norm([bank, shared], 0.5)
    a, b = nn.Parameter(bank.detach().clone()), nn.Parameter(shared.detach().clone())
    a.grad, b.grad = dense_bank, dense_shared
    want = nn.utils.clip_grad_norm_([a, b], 0.5)
    torch.testing.assert_close(total, want)
    torch.testing.assert_close(bank.grad.to_dense(), a.grad)
    torch.testing.assert_close(shared.grad, b.grad)


def test_fused_optimizer_switch_with_both_bank_updates(ds):
    """train.optimizer_impl: fused is torch's fused Adam (within rounding of the default one), and the
    row-wise bank update runs beside it (the banks keep their own rule, bit-unchanged when absent)."""
    assert make_optimizer(_star(ds), TrainConfig(optimizer_impl="fused")).defaults["fused"]
    with pytest.raises(ConfigError, match="optimizer_impl"):
        from_dict(TrainConfig, {"optimizer_impl": "fast"})
    states = []
    for impl in ("default", "fused"):
        model = _star(ds)
        ctx = _ctx(model, ds, "rowwise", optimizer_impl=impl)
        for d in (0, 1, 0):
            ctx.step(_domain_batch(ds, ctx, d))
        states.append(model.state_dict())
        assert torch.equal(model.layers[0].domain_weight.detach()[2], torch.ones_like(model.layers[0].domain_weight[2]))
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, rtol=0, atol=1e-5, msg=k)


@pytest.mark.parametrize("decoupled", [False, True])
def test_the_fused_row_kernels_are_the_unfused_rule(decoupled, monkeypatch):
    """The present rows go through torch's fused kernel, in place row by row (large rows) or gathered in
    blocks of equal step count (small rows); the plain-tensor rule gives the same values (within the
    kernel's rounding), from dense and from sparse gradients, with rows whose step counts differ; other
    rows untouched."""
    import polyrec.training.rowwise as rowwise
    from polyrec.training.rowwise import _update_rows, _update_rows_unfused

    torch.manual_seed(0)
    p0 = torch.randn(9, 3, 4)
    present = [torch.tensor([1, 4, 7]), torch.tensor([4]), torch.tensor([1, 7, 8]), torch.tensor([0, 1, 4, 8])]
    hyper = (1e-2, 0.9, 0.999, 1e-8, 0.1, decoupled)
    assert p0[0].numel() < rowwise.FUSED_MIN_ROW

    def in_place(*args):  # these small rows through the per-row kernel, as large rows go
        monkeypatch.setattr(rowwise, "FUSED_MIN_ROW", 1)
        try:
            _update_rows(*args)
        finally:
            monkeypatch.undo()

    results = []
    for update, sparse in (
        (_update_rows_unfused, False),
        (_update_rows, False),
        (_update_rows, True),
        (in_place, False),
        (in_place, True),
    ):
        p, state = p0.clone(), {}
        _update_rows(p, torch.zeros_like(p), state, present[0][:0], hyper)  # creates the state
        for step, rows in enumerate(present):
            g = torch.zeros_like(p)
            g[rows] = torch.randn(len(rows), 3, 4, generator=torch.Generator().manual_seed(step))
            if sparse:
                g = torch.sparse_coo_tensor(rows.unsqueeze(0), g[rows], p.shape, check_invariants=False)  # a gather's
            update(p, g, state, rows, hyper)
        results.append((p, state))
    for p, state in results[1:]:
        torch.testing.assert_close(p, results[0][0], rtol=0, atol=1e-6)
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state[k], results[0][1][k], rtol=0, atol=1e-6)
        absent = torch.tensor([2, 3, 5, 6])
        assert torch.equal(p[absent], p0[absent]) and not state["exp_avg"][absent].any()
        assert state["step"].tolist() == [1, 3, 0, 0, 3, 0, 0, 2, 2]
