"""Which student position pairs with which target cell, per head, inside ForesightHeads.

The pairs are read off the objective itself, through its public forward only: with one head
switched on (per-head coefficients), a target of cell c is changed, and the positions whose
loss gradient changes are exactly the positions paired with c. Grid 2x3 (H != W, so a row /
column mix-up shows), cells in raster order:

    0 1 2
    3 4 5

The training sequence is [class, x_0 .. x_4]: position s has read x_0 .. x_{s-1}.
"""

import pytest
import torch

from mirai_lab.config import build_config
from mirai_lab.foresight.layout import build_layout
from mirai_lab.foresight.objective import ForesightHeads

GRID = (2, 3)
N = 6
DIM = 8
VOCAB = 7


def heads_with_one_head_on(overrides: dict, k: int, head: int) -> ForesightHeads:
    coefs = [1.0 if j == head else 0.0 for j in range(k)]
    cfg = build_config(None, {"model.n_layer": 3, "model.dim": DIM, "model.n_head": 2, "foresight.student_block": 2,
                              "foresight.k": k, "foresight.head_coefs": coefs, "foresight.projector_dim": 8,
                              **overrides})
    layout = build_layout(cfg.foresight.layout, k, GRID)
    torch.manual_seed(head)
    return ForesightHeads(cfg.foresight, layout, DIM, DIM, N, total_steps=10, vocab_size=VOCAB)


def used_pairs(heads: ForesightHeads, mtp: bool) -> set[tuple[int, int]]:
    """{(position, cell)} the loss pairs, from gradients of a batch of two sequences. Only
    sequence 0's targets change; a change reaching sequence 1 would be a batch mix-up."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, N, DIM, generator=g, requires_grad=True)
    if mtp:
        targets = torch.randint(0, VOCAB, (2, N), generator=g)
    else:
        targets = torch.randn(2, N, DIM, generator=g)

    def grad_of_hidden(t: torch.Tensor) -> torch.Tensor:
        total, _ = heads(hidden, t, step=0)
        (grad,) = torch.autograd.grad(total, hidden)
        return grad

    base = grad_of_hidden(targets)
    pairs = set()
    for cell in range(N):
        changed = targets.clone()
        if mtp:
            changed[0, cell] = (changed[0, cell] + 1) % VOCAB
        else:
            changed[0, cell] = torch.randn(DIM, generator=g)
        moved = (grad_of_hidden(changed) - base).abs().amax(-1) > 1e-7  # (2, N): which states noticed
        assert not moved[1].any(), f"changing sequence 0's cell {cell} moved sequence 1's gradient"
        pairs |= {(int(pos), cell) for pos in moved[0].nonzero().flatten()}
    return pairs


# 2d, K = 3: head 0 = self, 1 = right, 2 = below. Off-grid targets are masked: the right of
# cells 2 and 5 (no wrap to 3 / none), the below of cells 3, 4, 5.
READ_2D = [  # the state that has read x_n (position n + 1) pairs with the targets of cell n, n = 0..4
    {(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)},
    {(1, 1), (2, 2), (4, 4), (5, 5)},  # cell 2 -> its right is off the grid; position 3 gets nothing
    {(1, 3), (2, 4), (3, 5)},
]
PREDICT_2D = [  # the state that predicts x_n (position n) pairs with the targets of cell n, n = 0..5
    {(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)},
    {(0, 1), (1, 2), (3, 4), (4, 5)},
    {(0, 3), (1, 4), (2, 5)},
]


@pytest.mark.parametrize("head", [0, 1, 2])
@pytest.mark.parametrize(("align_index", "expected"), [("read", READ_2D), ("predict", PREDICT_2D)])
def test_alignment_pairs_2d(align_index, expected, head):
    heads = heads_with_one_head_on({"foresight.source": "ema", "foresight.teacher_block": 1,
                                    "foresight.layout": "2d", "foresight.align_index": align_index}, 3, head)
    assert used_pairs(heads, mtp=False) == expected[head]


@pytest.mark.parametrize("head", [0, 1])
def test_alignment_pairs_1d_continue_into_the_next_row(head):
    heads = heads_with_one_head_on({"foresight.source": "ema", "foresight.teacher_block": 1,
                                    "foresight.layout": "1d", "foresight.align_index": "read"}, 2, head)
    expected = [
        {(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)},
        {(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)},  # raster n + 1: cell 2 -> cell 3 is the next token
    ]
    assert used_pairs(heads, mtp=False) == expected[head]


@pytest.mark.parametrize("head", [0, 1, 2])
def test_mtp_heads_take_the_state_that_has_not_read_the_base_cell(head):
    # mtp predicts tokens, so position n (predicts x_n) pairs with the layout tokens of cell n,
    # whatever align_index says (the default, read, is in force here)
    heads = heads_with_one_head_on({"foresight.injection": "mtp", "foresight.layout": "2d"}, 3, head)
    assert used_pairs(heads, mtp=True) == PREDICT_2D[head]
