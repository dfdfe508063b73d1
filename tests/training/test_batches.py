"""Batch order: epoch-wise permutations without replacement, a pure function of (seed, step)."""

import torch

from mirai_lab.training.batches import batch_indices

TRAIN = torch.arange(100, 110)  # image ids, unlike their positions 0..9


def epoch(batch: int, seed: int, first_step: int, steps: int) -> list[int]:
    return torch.cat([batch_indices(TRAIN, batch, seed, s) for s in range(first_step, first_step + steps)]).tolist()


def test_every_image_once_per_epoch_and_epochs_reshuffle():
    first, second = epoch(5, seed=3, first_step=0, steps=2), epoch(5, seed=3, first_step=2, steps=2)
    assert sorted(first) == sorted(second) == TRAIN.tolist()  # 2 steps of 5 = one epoch, no repeats
    assert first != second  # the next epoch is a new permutation


def test_a_partial_last_batch_is_dropped_and_the_epoch_restarts():
    steps = [batch_indices(TRAIN, 3, 7, s).tolist() for s in range(4)]  # 10 // 3 = 3 steps per epoch
    assert all(len(b) == 3 for b in steps)
    first_epoch = steps[0] + steps[1] + steps[2]
    assert len(set(first_epoch)) == 9 and set(first_epoch) <= set(TRAIN.tolist())
    assert steps[3] != steps[0]  # step 3 opens epoch 1, reshuffled


def test_pure_function_of_seed_and_step():
    later = batch_indices(TRAIN, 4, 1, 5)  # asked first, out of order
    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    assert [batch_indices(TRAIN, 4, 1, s).tolist() for s in range(6)][5] == later.tolist()
    assert torch.equal(torch.rand(1), expected_draw)  # the global RNG was not touched
    assert epoch(5, seed=1, first_step=0, steps=2) != epoch(5, seed=2, first_step=0, steps=2)  # seeds differ
