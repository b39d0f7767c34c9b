"""The weight average: the official update rule, split-and-prune row copies, and what checkpoints hold."""
import pytest
import torch

from ddn.training.checkpoint import load_generator, read_checkpoint, save_checkpoint
from ddn.training.train_loop import train
from ddn.training.train_state import LAST, TRAINED, read_run_checkpoint
from ddn.training.networks import build_generator
from ddn.training.presets import preset_config
from ddn.training.weight_average import WeightAverage
from train_helpers import one_thread, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    torch.manual_seed(seed)
    return build_generator(preset_config("tiny", 8, 1))


def test_update_follows_the_official_rule_with_ramp_up():
    model = _model()
    average = WeightAverage(model, halflife_images=500_000, rampup=0.05)
    old = [p.detach().clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(images_seen=6400, batch=64)
    beta = 0.5 ** (64 / (0.05 * 6400))  # the ramp-up caps the half-life at 320 images
    assert average.beta(6400, 64) == pytest.approx(beta)
    for a, o, p in zip(average.model.parameters(), old, model.parameters()):
        torch.testing.assert_close(a, p + beta * (o - p))
    # Far into a run the half-life is the configured one.
    assert average.beta(10**9, 64) == pytest.approx(0.5 ** (64 / 500_000))


def test_buffers_are_the_trained_models_and_the_average_takes_no_gradient():
    model = _model()
    average = WeightAverage(model, halflife_images=1000, rampup=0)
    ddl = model.ddls()[0]
    ddl.usage.count.fill_(7)
    average.update(images_seen=64, batch=64)
    assert torch.equal(average.model.ddls()[0].usage.count, ddl.usage.count)
    assert not any(p.requires_grad for p in average.model.parameters())
    assert average.shadow_of(ddl.weight) is average.model.ddls()[0].weight


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="half-life"):
        WeightAverage(_model(), halflife_images=0, rampup=0.05)
    with pytest.raises(ValueError, match="config differs"):
        WeightAverage(_model(), 1000, 0.05, average=build_generator(preset_config("tiny", 16, 1)))


def test_checkpoint_exports_the_average_and_resumes_the_trained_weights(tmp_path):
    result = train(tiny(steps=12), tmp_path / "run", progress=False)
    assert result.sampled_model is not result.model
    trained = dict(result.model.state_dict())
    averaged = dict(result.sampled_model.state_dict())
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)
    exported = load_generator(tmp_path / "run" / LAST).state_dict()  # what ddn-export and ddn-generate read
    assert all(torch.equal(exported[k], averaged[k]) for k in averaged)
    state = read_run_checkpoint(tmp_path / "run" / LAST)
    assert all(torch.equal(state.model.state_dict()[k], trained[k]) for k in trained)
    assert all(torch.equal(state.average.state_dict()[k], averaged[k]) for k in averaged)


def test_without_an_average_the_checkpoint_holds_the_trained_weights_only(tmp_path):
    result = train(tiny(steps=6, ema_halflife_kimg=0), tmp_path / "run", progress=False)
    assert result.sampled_model is result.model
    tensors, _, _ = read_checkpoint(tmp_path / "run" / LAST)
    assert not any(name.startswith(TRAINED) for name in tensors)
    assert read_run_checkpoint(tmp_path / "run" / LAST).average is None


def test_negative_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="--ema-halflife-kimg and --ema-rampup must be non-negative"):
        train(tiny(steps=2, ema_rampup=-1), tmp_path / "run", progress=False)


def test_a_run_from_before_the_average_resumes_without_one(tmp_path):
    run = tmp_path / "run"
    train(tiny(steps=4, ema_halflife_kimg=0), run, progress=False)
    tensors, _, meta = read_checkpoint(run / LAST)
    for key in ("ema_halflife_kimg", "ema_rampup"):  # the config as such runs stored it
        del meta["train"]["config"][key]
    state = read_run_checkpoint(run / LAST)
    save_checkpoint(run / LAST, state.model, {k: v for k, v in tensors.items() if not k.startswith("model/")}, meta)
    resumed = train(tiny(steps=6), run, resume=True, explicit={"steps"}, progress=False)
    assert resumed.step == 6 and resumed.sampled_model is resumed.model
