"""ddn-train through its command line: the no-argument path, run files, and one-line errors."""
import contextlib
import dataclasses
import fcntl
import gzip
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ddn.training.checkpoint import load_generator
from ddn.training.cli import main as ddn_train
from ddn.training.run_outputs import plot_run
from ddn.training.train_loop import TrainConfig
from ddn.training.train_state import LAST, read_run_checkpoint
from cli_helpers import one_line_error, usage_error
from train_helpers import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_ARGS = ["--preset", "tiny", "--batch", "16", "--no-progress"]
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # ddn.progress.utc_timestamp


def invoke(*args):
    return CliRunner().invoke(ddn_train, [str(a) for a in args])


def test_no_argument_run_leaves_a_usable_checkpoint_and_run_files(tmp_path, monkeypatch):
    """``ddn-train`` with nothing but a shorter --steps: the default model on the bundled digits."""
    monkeypatch.chdir(tmp_path)
    started = datetime.now(timezone.utc)
    result = invoke("--steps", 6, "--log-every", 3, "--no-progress")
    assert result.exit_code == 0, result.output
    ended = datetime.now(timezone.utc)
    run = tmp_path / "runs" / "digits-cpu"
    model = load_generator(run / LAST)
    assert model.config() == TrainConfig().model_config(1, 8)
    assert model.sample(seed=[0, 1]).shape == (2, 1, 8, 8)
    assert (run / "samples" / "step_0000006.png").exists() and (run / "training.png").exists()
    entries = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries] == [3, 6]
    times = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in entries]  # ISO 8601 UTC
    assert started <= times[0] <= times[1] <= ended
    # Without a bar, a timestamped line per log entry (on stderr).
    lines = [line for line in result.stderr.splitlines() if " step " in line]
    assert [re.fullmatch(rf"{TIMESTAMP} digits-cpu step (\d)/6 loss \d\.\d{{4}} \d+ img/s splits \d+", line)[1]
            for line in lines] == ["3", "6"], result.stderr
    assert entries[0]["images_per_s"] > 0 and len(entries[0]["usage_entropy"]) == len(model.ddls())
    # Every option left out is TrainConfig's default: the CLI declares no defaults of its own.
    assert json.loads((run / "config.json").read_text())["train"] == {
        **dataclasses.asdict(TrainConfig()), "steps": 6, "log_every": 3}

    again = invoke("--steps", 1, "--no-progress")  # a second default run gets its own folder
    assert again.exit_code == 0, again.output
    assert (tmp_path / "runs" / "digits-cpu-2" / LAST).exists()


def _train_process(out: Path, stderr) -> subprocess.CompletedProcess:
    """A real ddn-train (progress on, the default) writing its stderr to ``stderr``."""
    args = ["--steps", 4, "--log-every", 2, "--preset", "tiny", "--batch", 16, "--threads", 1, "--out", out]
    return subprocess.run([sys.executable, "-m", "ddn.training.cli", *map(str, args)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=stderr, timeout=600)


def test_progress_bar_on_a_terminal_only(tmp_path):
    """Piped, ddn-train prints plain timestamped lines; on a terminal it redraws a bar and prints no such lines."""
    piped = _train_process(tmp_path / "piped", subprocess.PIPE)
    assert piped.returncode == 0, piped.stderr.decode()
    assert b"\r" not in piped.stderr
    steps = re.findall(rf"^{TIMESTAMP} piped step (\d)/4 loss ", piped.stderr.decode(), re.M)
    assert steps == ["2", "4"], piped.stderr.decode()

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new pty is 0 columns wide
    try:
        on_tty = _train_process(tmp_path / "tty", secondary)
        os.close(secondary)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once everything written to the terminal has been read
            while chunk := os.read(primary, 65536):
                drawn += chunk
    finally:
        os.close(primary)
    assert on_tty.returncode == 0, drawn.decode(errors="replace")
    assert re.search(rb"\r(?!\n)", drawn), drawn  # a carriage return that redraws the bar (not a line end)
    assert b"4/4" in drawn and not re.search(rf"{TIMESTAMP} tty step".encode(), drawn)


def test_images_option_sets_the_step_count(tmp_path):
    result = invoke("--images", 100, "--out", tmp_path / "run", *TINY_ARGS)
    assert result.exit_code == 0, result.output
    assert read_run_checkpoint(tmp_path / "run" / LAST).train["step"] == 7  # ceil(100 / 16)


def test_time_limit_stops_with_a_checkpoint_that_resumes(tmp_path):
    run = tmp_path / "run"
    result = invoke("--steps", 50, "--minutes", 1e-6, "--log-every", 2, "--out", run, *TINY_ARGS)
    assert result.exit_code == 0, result.output
    assert "out of time at step 1" in result.output
    result = invoke("--resume", "--steps", 4, "--out", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert read_run_checkpoint(run / LAST).train["step"] == 4


def test_an_existing_run_is_not_overwritten(tmp_path):
    assert invoke("--steps", 1, "--out", tmp_path / "run", *TINY_ARGS).exit_code == 0
    assert "already holds a run; pass --resume" in one_line_error(invoke("--steps", 1, "--out", tmp_path / "run", *TINY_ARGS))


def test_fp16_needs_cuda_is_a_usage_error(tmp_path):
    error = usage_error(invoke("--device", "cpu", "--precision", "fp16", "--steps", 1, "--out", tmp_path / "r", *TINY_ARGS))
    assert error == "Error: fp16 mixed precision needs --device cuda (use bf16 on CPU)"


def _idx(path, magic):
    path.write_bytes(struct.pack(">IIII", magic, 1, 2, 2) + bytes(4))


def _bad_dataset(kind, tmp_path):
    if kind == "missing":
        return tmp_path / "nope.npz"
    if kind == "not_zip":
        (tmp_path / "junk.npz").write_bytes(b"\x80\x04 pickle-looking bytes")
        return tmp_path / "junk.npz"
    if kind == "no_images_key":
        np.savez(tmp_path / "x.npz", pixels=np.zeros((2, 8, 8), np.uint8))
        return tmp_path / "x.npz"
    if kind == "empty_folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if kind == "broken_png":
        (tmp_path / "imgs").mkdir()
        (tmp_path / "imgs" / "a.png").write_bytes(b"not a png")
        return tmp_path / "imgs"
    if kind == "idx_labels":
        _idx(tmp_path / "train-images-idx3-ubyte", 2049)
        return tmp_path / "train-images-idx3-ubyte"
    if kind == "idx_bad_gzip":
        (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"x" * 40)[:20])
        return tmp_path / "t10k-images-idx3-ubyte.gz"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, message", [
    ("missing", "dataset not found"),
    ("not_zip", "not a zip archive"),
    ("no_images_key", "has no 'images' array"),
    ("empty_folder", "no PNG/JPEG images"),
    ("broken_png", "cannot read image"),
    ("idx_labels", "bad magic 2049"),
    ("idx_bad_gzip", "corrupt gzip"),
])
def test_each_bad_dataset_is_one_line_error(tmp_path, kind, message):
    error = one_line_error(invoke("--dataset", _bad_dataset(kind, tmp_path), "--out", tmp_path / "run", *TINY_ARGS))
    assert message in error
    assert not (tmp_path / "run" / LAST).exists()


def test_bad_image_size_is_a_usage_error(tmp_path):
    assert usage_error(invoke("--image-size", 12, "--out", tmp_path / "run", *TINY_ARGS)) == (
        "Error: Invalid value for '--image-size': 12 is not a power of two (1, 2, 4, 8, ...)")


@pytest.mark.parametrize("entries, min_pixels", [(1, 20), (2, 200)], ids=["one_entry", "two_entries"])
def test_training_plot_shows_its_entries(tmp_path, entries, min_pixels):
    """The loss curve (tab:blue) is drawn from the first log entry on: a lone entry as a dot."""
    log = [{"step": 5 * (i + 1), "loss": 0.1 / (i + 1), "usage_entropy": [1.0, 1.5], "splits": i} for i in range(entries)]
    pixels = np.asarray(Image.open(plot_run(log, tmp_path / "training.png", [8, 8])).convert("RGB")).astype(int)
    loss_panel = pixels[:, : pixels.shape[1] // 2]
    assert (np.abs(loss_panel - (31, 119, 180)).sum(-1) < 40).sum() >= min_pixels
