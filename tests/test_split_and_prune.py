"""Split-and-prune: the rule's thresholds, the count hand-over and the copied rows."""
import pytest
import torch

from ddn.training.ddl import DiscreteDistributionLayer, per_sample_mse
from ddn.training.split_and_prune import BranchUsage, should_split, split_and_prune_


def _p(counts):
    c = torch.tensor(counts, dtype=torch.float64)
    return c / c.sum()


# Counts sum to 1024 so that every p is exact in binary and the thresholds are hit exactly.
@pytest.mark.parametrize("counts, expected", [
    ([64, 192, 128, 128, 128, 128, 128, 128], False),  # p_max - p_min == 1/K, p_min == 0.5/K
    ([64, 193, 127, 128, 128, 128, 128, 128], True),   # p_max - p_min just above 1/K
    ([64, 137, 137, 137, 137, 137, 137, 138], False),  # p_min exactly 0.5/K, spread well below 1/K
    ([63, 137, 137, 137, 137, 137, 138, 138], True),   # p_min just below 0.5/K
])
def test_split_rule_fires_exactly_at_the_thresholds(counts, expected):
    assert sum(counts) == 1024
    assert should_split(_p(counts)) is expected


def test_single_node_never_splits():
    assert should_split(torch.tensor([1.0])) is False


def _layer_with_counts(count, near2):
    layer = DiscreteDistributionLayer(channels=8, image_channels=1, k=len(count))
    layer.usage.count.copy_(torch.tensor(count, dtype=torch.float64))
    layer.usage.near2.copy_(torch.tensor(near2, dtype=torch.float64))
    return layer


def test_counts_after_a_split_match_a_hand_computation():
    # p = .4 .2 .3 .1: p_max - p_min = .3 > 1/4, so node 0 splits into node 3.
    near2 = [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [2, 1, 1, 0]]
    layer = _layer_with_counts([40, 20, 30, 10], near2)
    assert split_and_prune_([layer]) == 1
    # Node 3's 10 go 2:1:1 to nodes 0, 1, 2 -> 45, 22.5, 32.5; then node 0's 45 is halved with node 3.
    assert layer.usage.count.tolist() == [22.5, 22.5, 32.5, 22.5]


def test_pruned_count_spreads_evenly_without_runner_up_statistics():
    layer = _layer_with_counts([40, 20, 30, 10], torch.zeros(4, 4).tolist())
    split_and_prune_([layer])
    expected_0 = (40 + 10 / 3) / 2
    assert torch.allclose(layer.usage.count, torch.tensor([expected_0, 20 + 10 / 3, 30 + 10 / 3, expected_0], dtype=torch.float64))


def test_step_statistics_are_folded_before_the_decision():
    usage = BranchUsage(3)
    # Sample 0 nearest to node 2 then node 0; sample 1 nearest to node 2 then node 1.
    usage.record(torch.tensor([[1.0, 5.0, 0.0], [4.0, 2.0, 0.5]]))
    assert usage.count.sum() == 0
    usage.fold_step()
    assert usage.count.tolist() == [0, 0, 2]
    assert usage.near2[2].tolist() == [1, 1, 0]
    assert usage.step_counts().sum() == 0


def _train_one_step(layer, optimizer):
    features = torch.randn(16, 8, 4, 4)
    prev = torch.zeros(16, 1, 4, 4)
    target = torch.randn(16, 1, 4, 4)
    image, _, _ = layer(features, prev, lambda c: per_sample_mse(c.images(), target).argmin(1))
    optimizer.zero_grad()
    ((image - target) ** 2).mean().backward()
    optimizer.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
], ids=["adam", "adamw", "sgd-momentum"])
def test_split_copies_weight_rows_and_every_optimizer_moment(make_optimizer):
    torch.manual_seed(0)
    layer = _layer_with_counts([40, 20, 30, 10], torch.zeros(4, 4).tolist())
    optimizer = make_optimizer(layer.parameters())
    _train_one_step(layer, optimizer)
    layer.usage.fold_step()  # the step's own choices, then the hand-made counts again decide
    layer.usage.count.copy_(torch.tensor([40.0, 20, 30, 10]))
    state = optimizer.state[layer.weight]
    moments = {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == layer.weight.shape}
    assert moments, "optimizer keeps no per-row state to check"
    assert not all(torch.equal(v[3], v[0]) for v in moments.values())

    assert split_and_prune_([layer], optimizer) == 1
    assert torch.equal(layer.weight[3], layer.weight[0])
    for key, value in moments.items():
        assert torch.equal(value[3], value[0]), key
    assert not torch.equal(layer.weight[1], layer.weight[0])


def test_optimizer_state_that_is_not_row_shaped_is_refused_clearly():
    layer = _layer_with_counts([40, 20, 30, 10], torch.zeros(4, 4).tolist())
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    optimizer.state[layer.weight]["factored"] = torch.zeros(4, 3)  # e.g. a factored second moment
    with pytest.raises(TypeError, match="cannot copy optimizer state 'factored'"):
        split_and_prune_([layer], optimizer)


def test_split_copies_the_rows_of_a_following_tensor():
    layer = _layer_with_counts([40, 20, 30, 10], torch.zeros(4, 4).tolist())
    average = torch.randn_like(layer.weight)  # e.g. the weight average's copy of this weight
    before = average.clone()
    assert split_and_prune_([layer], follower_of=lambda w: average if w is layer.weight else None) == 1
    assert torch.equal(average[3], before[0]) and torch.equal(average[:3], before[:3])
