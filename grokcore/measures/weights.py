"""Measures of a network's weights."""

from __future__ import annotations

from torch import Tensor


def common_output_split(weight: Tensor) -> tuple[float, float]:
    """The norms of an output layer's two parts: the part common to every output, and the rest.

    ``weight`` is (outputs, width), as ``nn.Linear`` keeps it. Its mean row, added to every
    output's row, adds the same amount to every logit: a softmax cannot see that, so this part
    changes no prediction and no cross-entropy loss. The two parts are orthogonal, so their
    squared norms add up to the weight's."""
    w = weight.detach().double()
    common = w.mean(0, keepdim=True).expand_as(w)
    return common.norm().item(), (w - common).norm().item()
