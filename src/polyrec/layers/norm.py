"""Normalisation layers that keep per-domain statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .domain import gather_rows, mark_domain_bank


class PartitionedNorm(nn.Module):
    """Partitioned Normalization (STAR, Sheng et al., CIKM 2021, eq. 3-4).

    Training (eq. 3): each domain's rows are normalised with the mean and variance of that domain's rows
    in the batch, then scaled by ``γ ⊙ γ_p`` and shifted by ``β + β_p``. The paper draws every batch from
    one domain; computing the statistics per domain present makes a mixed batch equivalent to that, where
    whole-batch statistics would blur the domains. Each domain keeps its own moving mean ``E_p`` and
    variance ``Var_p``, updated only from its rows.

    Inference (eq. 4): ``(γ ⊙ γ_p) (z − E_p) / sqrt(Var_p + ε) + (β + β_p)``, a per-domain affine map that
    :meth:`folded_affine` precomputes, so a row's output never depends on the other rows of its batch.

    A domain with a single row in a training batch has no batch variance; its rows are normalised with
    that domain's moving statistics instead (and do not update them).

    Args:
        num_features: F.
        num_domains: D.
        eps: variance floor ε.
        momentum: weight of the current batch in the moving statistics (as in ``nn.BatchNorm1d``).
        shared_affine: learn the shared ``γ, β`` (STAR's eq. 3). False fixes them at 1 and 0 (buffers), which
            leaves each domain its own affine ``γ_p, β_p`` only: domain-specific batch normalisation (ADI,
            eq. 20); with ``num_domains=1`` it is plain batch normalisation.

    Shape:
        forward(x ``[B, F]``, local ``[B]`` segment index per row, domains ``[S]`` present domains) -> ``[B, F]``.
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        shared_affine: bool = True,
    ) -> None:
        super().__init__()
        self.num_features, self.num_domains, self.eps, self.momentum = num_features, num_domains, eps, momentum
        self.shared_affine = shared_affine
        if shared_affine:
            self.gamma = nn.Parameter(torch.ones(num_features))
            self.beta = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_buffer("gamma", torch.ones(num_features))
            self.register_buffer("beta", torch.zeros(num_features))
        self.domain_gamma = nn.Parameter(torch.ones(num_domains, num_features))
        self.domain_beta = nn.Parameter(torch.zeros(num_domains, num_features))
        mark_domain_bank(self, "domain_gamma", "domain_beta")
        self.register_buffer("running_mean", torch.zeros(num_domains, num_features))
        self.register_buffer("running_var", torch.ones(num_domains, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(num_domains, dtype=torch.long))

    def folded_affine(self, domains: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Inference-time per-domain ``(scale, shift)`` such that ``y = x * scale_p + shift_p``: ``[S, F]`` each."""
        sel = (lambda t: t) if domains is None else (lambda t: t.index_select(0, domains))
        scale = self.gamma * sel(self.domain_gamma) * torch.rsqrt(sel(self.running_var) + self.eps)
        shift = self.beta + sel(self.domain_beta) - sel(self.running_mean) * scale
        return scale, shift

    # ---- exact statistics ("precise" normalisation statistics) --------------------------------------
    # The moving averages lag behind the weights, and when training alternates between domains a
    # domain's statistics are a whole pass of the other domains old by the time it is evaluated. These
    # methods let the trainer replace them with the exact per-domain moments of the training rows
    # under the current weights: the same E_p and Var_p as eq. 4, estimated without lag.

    def begin_calibration(self) -> None:
        """Start accumulating exact per-domain sums of this layer's inputs (in any mode)."""
        D, F = self.running_mean.shape
        self._calib = [
            torch.zeros(D, F, dtype=torch.float64, device=self.running_mean.device),
            torch.zeros(D, F, dtype=torch.float64, device=self.running_mean.device),
            torch.zeros(D, dtype=torch.float64, device=self.running_mean.device),
        ]

    def _accumulate(self, x: Tensor, local: Tensor, domains: Tensor) -> None:
        rows_domain = domains.index_select(0, local)
        xd = x.detach().double()
        self._calib[0].index_add_(0, rows_domain, xd)
        self._calib[1].index_add_(0, rows_domain, xd * xd)
        self._calib[2].index_add_(0, rows_domain, torch.ones_like(rows_domain, dtype=torch.float64))

    def end_calibration(self) -> None:
        """Set the statistics of every domain seen (at least 2 rows) to the exact accumulated moments."""
        total, sq, n = self._calib
        del self._calib
        seen = n >= 2
        mean = total[seen] / n[seen].unsqueeze(1)
        var = (sq[seen] / n[seen].unsqueeze(1) - mean * mean).clamp_min(0) * (n[seen] / (n[seen] - 1)).unsqueeze(1)
        self.running_mean[seen] = mean.to(self.running_mean.dtype)
        self.running_var[seen] = var.to(self.running_var.dtype)

    def abort_calibration(self) -> None:
        """Drop the sums of a calibration that did not finish; the statistics stay as they were."""
        self.__dict__.pop("_calib", None)

    def forward(self, x: Tensor, local: Tensor, domains: Tensor) -> Tensor:
        if getattr(self, "_calib", None) is not None:
            self._accumulate(x, local, domains)
        if not self.training:
            scale, shift = self.folded_affine(domains)
            return torch.addcmul(shift.index_select(0, local), x, scale.index_select(0, local))
        s = len(domains)
        counts = torch.bincount(local, minlength=s).to(x.dtype)
        mean = x.new_zeros(s, x.shape[1]).index_add_(0, local, x) / counts.unsqueeze(1)
        centered = x - mean.index_select(0, local)
        var = x.new_zeros(s, x.shape[1]).index_add_(0, local, centered * centered) / counts.unsqueeze(1)
        enough = counts >= 2
        if not bool(enough.all()):
            # Singleton segments: fall back to the domain's moving statistics.
            mean = torch.where(enough.unsqueeze(1), mean, self.running_mean.index_select(0, domains))
            var = torch.where(enough.unsqueeze(1), var, self.running_var.index_select(0, domains))
            centered = x - mean.index_select(0, local)
        x_hat = centered * torch.rsqrt(var + self.eps).index_select(0, local)
        with torch.no_grad():
            d = domains[enough]
            n = counts[enough].unsqueeze(1)
            m = self.momentum
            self.running_mean[d] = (1 - m) * self.running_mean[d] + m * mean[enough].detach()
            self.running_var[d] = (1 - m) * self.running_var[d] + m * (var[enough].detach() * n / (n - 1))
            self.num_batches_tracked[d] += 1
        scale = self.gamma * gather_rows(self.domain_gamma, domains)
        shift = self.beta + gather_rows(self.domain_beta, domains)
        return torch.addcmul(shift.index_select(0, local), x_hat, scale.index_select(0, local))

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_domains={self.num_domains}, eps={self.eps}, "
            f"momentum={self.momentum}, shared_affine={self.shared_affine}"
        )
