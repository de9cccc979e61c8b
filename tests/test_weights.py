"""grokcore.measures.weights against arithmetic done by hand."""

import math

import torch

from grokcore.measures import common_output_split


def test_the_common_part_is_the_mean_row_on_every_output():
    # Rows (1, 2), (3, 4), (5, 6): mean row (3, 4) on each of 3 rows, norm sqrt(3 * 25);
    # the rest (-2, -2), (0, 0), (2, 2), norm sqrt(16).
    common, rest = common_output_split(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    assert math.isclose(common, math.sqrt(75)) and math.isclose(rest, 4.0)
    assert math.isclose(common**2 + rest**2, 1 + 4 + 9 + 16 + 25 + 36)


def test_the_common_part_changes_no_softmax():
    """Its premise: one vector added to every output's row moves every logit alike."""
    torch.manual_seed(0)
    w, h, shift = torch.randn(5, 3), torch.randn(4, 3), torch.randn(3)
    before, after = common_output_split(w), common_output_split(w + shift)
    assert math.isclose(after[1], before[1], rel_tol=1e-6) and not math.isclose(after[0], before[0])
    assert torch.allclose(torch.softmax(h @ w.T, -1), torch.softmax(h @ (w + shift).T, -1), atol=1e-6)
