"""The DDL layout: K image rows over the first half of the features, the leak is the chosen rows on the other half;
the guided choice from Gram matrices; the single-shot block against the official one."""
import pytest
import torch

from ddn.training.blocks import UNetBlock, add_choice
from ddn.training.ddl import Candidates, DiscreteDistributionLayer
from ddn.training.guidance import TargetCondition, make_chooser


def hand_built_layer(residual: bool) -> DiscreteDistributionLayer:
    """C = 4 feature channels, 1 image channel, K = 3 branches with rows (a_k, b_k) = (k+1, -(k+1)/2)."""
    ddl = DiscreteDistributionLayer(channels=4, image_channels=1, k=3, residual=residual)
    with torch.no_grad():
        for k in range(3):
            ddl.weight[k] = torch.tensor([[k + 1.0, -(k + 1.0) / 2]])
    return ddl


def features_of(values: list[float], size: int = 2) -> torch.Tensor:
    """One sample whose channel c is the constant values[c] (x a position ramp, to tell pixels apart)."""
    ramp = torch.arange(1.0, size * size + 1).view(1, 1, size, size)
    return torch.tensor(values).view(1, -1, 1, 1) * ramp


def test_the_layer_has_only_the_image_rows_of_k_branches():
    ddl = DiscreteDistributionLayer(channels=64, image_channels=3, k=16)
    assert [p.shape for p in ddl.parameters()] == [torch.Size([16, 3, 32])]


@pytest.mark.parametrize("residual", [True, False])
def test_image_and_leak_use_the_chosen_branch_rows(residual):
    ddl = hand_built_layer(residual)
    f = features_of([2.0, 3.0, 5.0, 7.0])
    prev = torch.full((1, 1, 1, 1), 0.25)  # 1x1 previous image: bilinear up to 2x2 is the same constant
    ramp = f[:, :1] / 2.0
    for k in range(3):
        a, b = k + 1.0, -(k + 1.0) / 2
        image, leak, index = ddl(f, prev, torch.tensor([k]))
        expected_image = (a * 2 + b * 3) * ramp + (0.25 if residual else 0.0)
        torch.testing.assert_close(image, expected_image)
        torch.testing.assert_close(leak, (a * 5 + b * 7) * ramp)  # same rows, other half of the features
        assert index.tolist() == [k]


def test_gathered_branch_equals_all_k_candidates_and_guided_choice_picks_the_nearest():
    torch.manual_seed(0)
    ddl = DiscreteDistributionLayer(channels=8, image_channels=3, k=5)
    f, prev = torch.randn(6, 8, 4, 4), torch.randn(6, 3, 2, 2)
    index = torch.tensor([0, 4, 2, 2, 1, 3])
    gathered = ddl(f, prev, index)
    all_k = ddl(f, prev, index, all_k=True)
    torch.testing.assert_close(gathered[0], all_k[0])
    torch.testing.assert_close(gathered[1], all_k[1])
    target = ddl.candidates(f, prev)[torch.arange(6), index] + 1e-3
    _, _, chosen = ddl(f, prev, lambda c: (c.images() - target.unsqueeze(1)).pow(2).flatten(2).sum(2).argmin(1))
    assert torch.equal(chosen, index)


def test_clamp_bounds_the_previous_image_before_the_candidates_are_added():
    f = features_of([2.0, 3.0, 5.0, 7.0])
    prev = torch.full((1, 1, 1, 1), -1.4)  # below black, as a random darkening branch can leave it
    plain = DiscreteDistributionLayer(channels=4, image_channels=1, k=3)
    clamped = DiscreteDistributionLayer(channels=4, image_channels=1, k=3, clamp=True)
    clamped.load_state_dict(plain.state_dict())
    branch = torch.tensor([1])
    torch.testing.assert_close(clamped(f, prev, branch)[0] - plain(f, prev, branch)[0],
                               torch.full((1, 1, 2, 2), 0.4))
    inside = torch.full((1, 1, 1, 1), 0.3)
    torch.testing.assert_close(clamped(f, inside, branch)[0], plain(f, inside, branch)[0])


def test_indices_outside_the_branches_are_clamped():
    ddl = hand_built_layer(residual=False)
    f = features_of([1.0, 1.0, 1.0, 1.0])
    high, _, index = ddl(f, f[:, :1], torch.tensor([99]))
    assert index.tolist() == [2]
    torch.testing.assert_close(high, ddl(f, f[:, :1], torch.tensor([2]))[0])


def test_next_block_receives_image_in_the_first_and_leak_in_the_last_channels():
    features = torch.zeros(1, 6, 2, 2)
    image, leak = torch.full((1, 2, 2, 2), 1.0), torch.full((1, 2, 2, 2), 10.0)
    fed = add_choice(features, image, leak)
    assert fed[0, :, 0, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 10.0, 10.0]


def test_next_block_input_equals_adding_the_zero_padded_image_and_leak():
    """Slices and a concatenation compute exactly the reference sum of zero-padded maps, gradients included."""
    torch.manual_seed(0)
    features = torch.randn(3, 8, 4, 4, requires_grad=True)
    image, leak = torch.randn(3, 2, 4, 4, requires_grad=True), torch.randn(3, 2, 4, 4, requires_grad=True)
    fed = add_choice(features, image, leak)
    pad = torch.nn.functional.pad
    reference = features + pad(image, (0, 0, 0, 0, 0, 6)) + pad(leak, (0, 0, 0, 0, 6, 0))
    assert torch.equal(fed, reference)
    weights = torch.randn_like(fed)
    grads = torch.autograd.grad((fed * weights).sum(), (features, image, leak))
    expected = torch.autograd.grad((reference * weights).sum(), (features, image, leak))
    for got, want in zip(grads, expected):
        assert torch.equal(got, want)


def test_training_add_choice_equals_the_concatenation_and_keeps_channels_last():
    """The training route (in-place adds, gradient passed on as it comes) against the exported one."""
    torch.manual_seed(0)
    features = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last).to(torch.bfloat16)
    image, leak = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        exported = add_choice(features, image, leak)
    trained = add_choice(features.requires_grad_(), image.requires_grad_(), leak)
    assert trained.dtype == exported.dtype == torch.float32  # promoted as the concatenation promotes
    assert torch.equal(trained, exported)
    assert trained.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(trained).contiguous(memory_format=torch.channels_last)
    trained.backward(grad)
    assert features.grad.dtype == torch.bfloat16 and torch.equal(features.grad, grad.to(torch.bfloat16))
    assert torch.equal(image.grad, grad[:, :2])


@pytest.mark.parametrize("image_channels", [1, 3])
def test_the_chosen_rows_on_channels_last_features_equal_the_channel_major_product(image_channels):
    """Blocks hand the DDL channels-last features, which take the pixel-major product and its own backward."""
    torch.manual_seed(0)
    ddl = DiscreteDistributionLayer(channels=12, image_channels=image_channels, k=5)
    features, prev = torch.randn(3, 12, 4, 4), torch.randn(3, image_channels, 2, 2)
    index = torch.tensor([4, 0, 2])
    outputs, grads = [], []
    for layout in (torch.contiguous_format, torch.channels_last):
        f = features.clone(memory_format=layout).requires_grad_()
        image, leak = ddl.apply_branch(f, prev, index)
        weights = torch.arange(float(image.numel())).view_as(image).cos()
        ddl.weight.grad = None
        ((image * weights).sum() + (leak * weights.flip(0)).sum()).backward()
        outputs.append((image, leak))
        grads.append((f.grad, ddl.weight.grad))
    for (got, want) in zip((*outputs[1], *grads[1]), (*outputs[0], *grads[0])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert grads[1][0].is_contiguous(memory_format=torch.channels_last)  # no layout copy for the block's backward
    f = features.contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the product in bf16, gradients as the inputs
        image, _ = ddl.apply_branch(f, prev, index)
    image.float().sum().backward()
    assert f.grad.dtype == torch.float32 and ddl.weight.grad.dtype == torch.float32
    torch.testing.assert_close(image.float(), outputs[0][0], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("image_channels,residual,clamp", [(1, True, True), (3, True, False), (1, False, False)])
def test_distances_from_the_gram_matrix_equal_those_of_the_built_candidates(image_channels, residual, clamp):
    torch.manual_seed(0)
    ddl = DiscreteDistributionLayer(channels=16, image_channels=image_channels, k=12, residual=residual, clamp=clamp)
    features, prev = torch.randn(5, 16, 8, 8), 1.5 * torch.randn(5, image_channels, 4, 4)
    reference = torch.rand(5, image_channels, 8, 8) * 2 - 1
    candidates = Candidates(ddl, features, prev)
    built = (candidates.images() - reference.unsqueeze(1)).pow(2).mean((2, 3, 4))
    from_gram = candidates.mse_to(reference)
    torch.testing.assert_close(from_gram, built, rtol=1e-4, atol=1e-5)
    assert torch.equal(from_gram.argmin(1), built.argmin(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision training: the sum stays in fp32
        torch.testing.assert_close(candidates.mse_to(reference), built, rtol=1e-4, atol=1e-5)


def test_the_guided_choice_builds_the_candidates_only_where_that_is_cheaper():
    torch.manual_seed(0)
    ddl = DiscreteDistributionLayer(channels=8, image_channels=1, k=5)
    f, prev, target = torch.randn(4, 8, 4, 4), torch.randn(4, 1, 2, 2), torch.randn(4, 1, 4, 4)
    built = []
    ddl.candidates = lambda *args: built.append(args)  # a call would leave a trace (and break the choice)
    chosen = ddl(f, prev, make_chooser(TargetCondition(target)))[2]
    assert not built
    del ddl.candidates
    assert torch.equal(chosen, TargetCondition(target).distance(ddl.candidates(f, prev)).argmin(1))
    # One pixel and 64 channels: a 32 x 32 Gram matrix per sample costs more than the 5 one-pixel images.
    wide = DiscreteDistributionLayer(channels=64, image_channels=1, k=5)
    f, prev, target = torch.randn(4, 64, 1, 1), torch.zeros(4, 1, 1, 1), torch.randn(4, 1, 1, 1)
    wide.candidates = lambda *args: built.append(args) or DiscreteDistributionLayer.candidates(wide, *args)
    candidates = Candidates(wide, f, prev)
    distances = candidates.mse_to(target)
    assert len(built) == 1
    torch.testing.assert_close(distances, (candidates.images() - target.unsqueeze(1)).pow(2).mean((2, 3, 4)))


def test_an_up_block_equals_the_official_block_with_its_skip_after_the_upsampling():
    """The skip's 1x1 conv runs before the nearest upsampling and the activations are channels-last: the official
    block's values and gradients up to rounding.
    """
    torch.manual_seed(0)
    block = UNetBlock(8, 4, up=True)
    torch.nn.init.normal_(block.conv1.weight, std=0.2)  # not near zero, so conv1's path counts too
    features = torch.randn(3, 8, 4, 4, requires_grad=True)
    image, leak = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)

    def official(block):
        x = add_choice(features, image, leak)
        up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")
        silu = torch.nn.functional.silu
        h = block.conv1(silu(block.norm1(block.conv0(up(silu(block.norm0(x)))))))
        return (h + block.skip(up(x))) * 0.5 ** 0.5

    out, want = block(features, image, leak), official(block)
    torch.testing.assert_close(out, want)
    grad = torch.randn_like(want)
    got = torch.autograd.grad(out, [features, *block.parameters()], grad)
    expected = torch.autograd.grad(want, [features, *block.parameters()], grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
