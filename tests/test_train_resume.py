"""Resuming a run lands on the same bits as never stopping; damaged checkpoints are refused and survived."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from ddn.training.checkpoint import CheckpointError, load_generator
from ddn.training.cli import main as ddn_train
from ddn.training.train_loop import train
from ddn.training.train_state import LAST, PREVIOUS, find_resumable, read_run_checkpoint
from cli_helpers import usage_error
from train_helpers import assert_bitwise_equal, one_thread, run_state, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", [dict(preset="tiny"), dict(preset="mnist-recurrence", channels=8, iterations=3, k=8)],
                         ids=["single_shot", "recurrence"])
def test_resume_equals_uninterrupted(tmp_path, model):
    s = 10
    model = dict(model, lr_decay=0.0)  # the run is extended from s to 2s steps: a decay would stretch
    full = train(tiny(**model, steps=2 * s), tmp_path / "full", progress=False)
    first = train(tiny(**model, steps=s), tmp_path / "split", progress=False)
    assert first.step == s
    resumed = train(tiny(**model, steps=2 * s), tmp_path / "split", resume=True, progress=False)
    assert full.splits > 0 and resumed.splits == full.splits
    assert_bitwise_equal(run_state(full), run_state(resumed))
    # The RNG streams (data order, chain dropout) end in the same state too.
    full_ckpt, resumed_ckpt = (read_run_checkpoint(d / LAST) for d in (tmp_path / "full", tmp_path / "split"))
    for stream in ("data", "dropout"):
        assert torch.equal(full_ckpt.rng[stream][0], resumed_ckpt.rng[stream][0])
    steps_logged = [e["step"] for e in map(json.loads, (tmp_path / "split" / "log.jsonl").read_text().splitlines())]
    assert steps_logged == [5, 10, 15, 20]


def test_truncated_last_falls_back_to_previous_and_still_matches(tmp_path):
    full = train(tiny(steps=20), tmp_path / "full", progress=False)
    run = tmp_path / "run"
    train(tiny(steps=20, checkpoint_every=10), run, progress=False)  # previous: step 10, last: step 20
    data = (run / LAST).read_bytes()
    (run / LAST).write_bytes(data[: len(data) // 2])
    good_previous = (run / PREVIOUS).read_bytes()

    state = find_resumable(run)
    assert state.train["step"] == 10
    assert len(state.notes) == 1 and "corrupt or truncated" in state.notes[0] and "\n" not in state.notes[0]
    assert (run / (LAST + ".bad")).exists() and not (run / LAST).exists()
    assert (run / PREVIOUS).read_bytes() == good_previous

    resumed = train(tiny(steps=20), run, resume=True, progress=False)
    assert_bitwise_equal(run_state(full), run_state(resumed))
    assert read_run_checkpoint(run / PREVIOUS).train["step"] == 10  # the good one was kept, not the bad last


def test_flipped_byte_is_caught_by_the_digest(tmp_path):
    run = tmp_path / "run"
    train(tiny(steps=4), run, progress=False)
    data = bytearray((run / LAST).read_bytes())
    data[-3] ^= 0x40  # inside the tensor bytes: safetensors itself cannot notice
    (run / LAST).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: its tensor bytes do not match"):
        read_run_checkpoint(run / LAST)


def test_cli_refuses_unusable_checkpoints_in_one_line(tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(ddn_train, ["--resume", "--out", str(run)])
    assert result.exit_code == 1 and "nothing to resume" in result.output

    train(tiny(steps=4, checkpoint_every=2), run, progress=False)
    for name in (LAST, PREVIOUS):
        (run / name).write_bytes((run / name).read_bytes()[:100])
    result = runner.invoke(ddn_train, ["--resume", "--out", str(run), "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "corrupt or truncated" in lines[0], result.output

    (run / LAST).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # a valid, empty safetensors file
    with pytest.raises(CheckpointError, match="not a DDN checkpoint"):
        read_run_checkpoint(run / LAST)


def test_resume_refuses_to_change_the_model(tmp_path):
    run = tmp_path / "run"
    train(tiny(steps=2), run, progress=False)
    result = CliRunner().invoke(ddn_train, ["--resume", "--out", str(run), "--k", "4", "--no-progress"])
    # A usage error (exit 2): None is the preset's K.
    assert usage_error(result).startswith("Error: --k cannot change on resume (checkpoint has None, got 4); only ")
    result = CliRunner().invoke(ddn_train, ["--resume", "--out", str(run), "--preset", "cpu", "--no-progress"])
    assert "--preset cannot change on resume (checkpoint has 'tiny', got 'cpu')" in usage_error(result)


def test_killed_process_resumes_to_the_same_bits(tmp_path):
    """SIGKILL a real ddn-train process after its first checkpoints, resume, compare with a run never stopped."""
    config = tiny(steps=300)
    full = train(config, tmp_path / "full", progress=False)
    run = tmp_path / "run"
    args = ["--dataset", "digits", "--preset", "tiny", "--steps", "300",
            "--batch", "16", "--chain-dropout", "0.5", "--checkpoint-every", "5", "--log-every", "5",
            "--sample-seeds", "4", "--seed", "3", "--device", "cpu", "--out", str(run), "--no-progress"]
    code = "import sys; from ddn.training.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.monotonic() + 120
    while not (run / PREVIOUS).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    stopped_at = find_resumable(run).train["step"]
    assert 0 < stopped_at < 300
    resumed = train(config, run, resume=True, progress=False)
    assert_bitwise_equal(run_state(full), run_state(resumed))
    assert load_generator(run / LAST).num_layers == full.model.num_layers
