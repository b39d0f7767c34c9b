"""The learning rate's fall at the end of a run, by steps or by the time budget, and its resume."""
import json

import pytest

from ddn.training.lr_schedule import lr_factor
from ddn.training.train_loop import ConfigError, train
from ddn.training.train_state import LAST, PREVIOUS, read_run_checkpoint
from train_helpers import assert_bitwise_equal, one_thread, run_state, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_constant_then_linear_to_zero():
    assert [lr_factor(p, 0.5) for p in (0.0, 0.5, 0.75, 1.0, 1.2)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert lr_factor(0.99, 0.0) == 1.0  # no decay: constant


def logged_lr(run_dir) -> list[float]:
    return [json.loads(line)["lr"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_the_lr_falls_over_the_last_share_of_the_steps(tmp_path):
    result = train(tiny(steps=20, log_every=1, lr=1e-3, lr_decay=0.5), tmp_path / "run", progress=False)
    lrs = logged_lr(tmp_path / "run")  # the LR of each step, steps 0..19
    assert lrs[:11] == [pytest.approx(1e-3)] * 11
    assert lrs[11:] == [pytest.approx(1e-3 * (1 - s / 20) / 0.5) for s in range(11, 20)]
    assert result.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_resume_with_decay_lands_on_the_same_bits(tmp_path):
    config = tiny(steps=20, lr_decay=0.8)
    full = train(config, tmp_path / "full", progress=False)
    run = tmp_path / "run"
    train(tiny(steps=20, lr_decay=0.8, checkpoint_every=10), run, progress=False)
    (run / LAST).unlink()  # as if stopped after the step-10 checkpoint
    (run / PREVIOUS).rename(run / LAST)
    resumed = train(config, run, resume=True, progress=False)
    assert_bitwise_equal(run_state(full), run_state(resumed))


def test_a_time_budget_anneals_before_it_stops_and_resume_continues_its_clock(tmp_path):
    run = tmp_path / "run"
    first = train(tiny(steps=10**6, log_every=1, lr=1e-3, lr_decay=1.0), run, progress=False, max_seconds=2.0)
    assert first.stopped_early
    lrs = logged_lr(run)
    assert lrs[0] > 0.8e-3 and lrs[-1] < 0.1e-3 and lrs == sorted(lrs, reverse=True)
    seconds = read_run_checkpoint(run / LAST).train["train_seconds"]
    assert 2.0 <= seconds < 10.0  # the whole budget (stored to the millisecond: 2.0004 s reads 2.0)
    # Given as much time again, the resumed run starts half way through its budget.
    train(tiny(steps=10**6, log_every=1, lr=1e-3, lr_decay=1.0), run, resume=True, progress=False, max_seconds=seconds)
    resumed_lrs = logged_lr(run)[len(lrs):]
    assert resumed_lrs[0] == pytest.approx(0.5e-3, abs=0.1e-3) and resumed_lrs[-1] < 0.1e-3


def test_a_decay_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--lr-decay is a share of the run in \\[0, 1\\], got 1.5"):
        train(tiny(lr_decay=1.5), tmp_path / "run", progress=False)
