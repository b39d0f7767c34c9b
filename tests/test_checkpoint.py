"""Checkpoint files: canonical bytes, digest on every load, bad configs refused in one line, a killed writer's leftovers."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ddn.export.cli import main as ddn_export
from ddn.training.checkpoint import CheckpointError, load_generator, read_checkpoint, save_checkpoint, tensor_digest
from ddn.training.networks import SingleShotGenerator
from ddn.training.train_loop import train
from ddn.training.train_state import LAST
from ddn.training.zscg_cli import conditional
from cli_helpers import one_line_error
from train_helpers import one_thread, tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def header_of(path: Path) -> bytes:
    data = path.read_bytes()
    return data[8:8 + int.from_bytes(data[:8], "little")]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, SingleShotGenerator(image_size=8, channels=16, blocks=1, k=8))
    return path


def test_two_identical_runs_write_identical_bytes(tmp_path: Path) -> None:
    for run in ("a", "b"):
        train(tiny(steps=4), tmp_path / run, progress=False)
    first, second = (tmp_path / run / LAST for run in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()
    # Canonical: sorted keys, no spaces, padded with spaces to 8 bytes; metadata in a fixed order.
    header = header_of(first)
    parsed = json.loads(header)
    assert header.rstrip(b" ") == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    assert len(header) % 8 == 0
    assert list(parsed["__metadata__"]) == ["ddn_config", "ddn_digest", "ddn_meta"]


def test_flipped_weight_byte_is_refused_by_every_reader(checkpoint: Path, tmp_path: Path) -> None:
    data = bytearray(checkpoint.read_bytes())
    data[-5] ^= 0x10  # inside the tensor bytes: safetensors itself cannot notice
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: its tensor bytes do not match"):
        load_generator(checkpoint)

    repository = tmp_path / "model_repository"
    line = one_line_error(CliRunner().invoke(ddn_export, [str(checkpoint), "--name", "t", "--repository",
                                                          str(repository)]))
    assert str(checkpoint) in line and "corrupt" in line
    assert not repository.exists() or not any(repository.iterdir())

    (tmp_path / "in.png").write_bytes(b"")  # never read: the checkpoint is refused first
    line = one_line_error(CliRunner().invoke(conditional, [
        "--checkpoint", str(checkpoint), "--condition", "superres", "--input", str(tmp_path / "in.png"),
        "--out", str(tmp_path / "out")]))
    assert str(checkpoint) in line and "corrupt" in line
    assert not (tmp_path / "out").exists()


def rewrite_config(path: Path, **changes) -> None:
    """Change fields of a checkpoint's model config, keeping its tensors and digest valid."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    header["ddn_config"] = json.dumps({**json.loads(header["ddn_config"]), **changes})
    save_file(load_file(str(path)), str(path), metadata=header)


@pytest.mark.parametrize("changes, message", [
    ({"k": -3}, "has an invalid model config: k must be in [1, 65536], got [-3, -3, -3, -3]"),
    ({"channels": 200000}, "has an invalid model config: channels must be in [2, 8192]"),
    ({"channels": 64}, "does not match its model config: tensor "),  # [16, ...] in the file, [64, ...] asked
    ({"blocks": [1, 1, 2, 1]}, "does not match its model config: tensor "),
    ({"kind": "transformer"}, "has an invalid model config: unknown generator kind 'transformer'"),
    ({"depth": 3}, "has an invalid model config: SingleShotGenerator.__init__() got an unexpected keyword"),
])
def test_bad_model_config_is_one_line_naming_the_file(checkpoint: Path, tmp_path: Path, changes, message) -> None:
    rewrite_config(checkpoint, **changes)
    with pytest.raises(CheckpointError) as error:
        load_generator(checkpoint)
    assert str(error.value).startswith(str(checkpoint)) and message in str(error.value)
    line = one_line_error(CliRunner().invoke(ddn_export, [str(checkpoint), "--name", "t", "--repository",
                                                          str(tmp_path / "model_repository")]))
    assert message in line


def test_digest_covers_every_tensor(checkpoint: Path) -> None:
    tensors, _, _ = read_checkpoint(checkpoint)
    header = json.loads(header_of(checkpoint))["__metadata__"]
    assert header["ddn_digest"] == tensor_digest(tensors)
    name = next(key for key in tensors if key.startswith("model/"))
    changed = dict(tensors, **{name: tensors[name] + 1})
    assert tensor_digest(changed) != header["ddn_digest"]


KILLED_WRITER = """
import sys, time
from pathlib import Path
from ddn.training.checkpoint import atomic_write

def half_written(f):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

atomic_write(Path(sys.argv[1]), half_written)
"""


def test_next_write_removes_a_killed_writers_temporary_file_only(checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    writers = [subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run / LAST)], stdout=subprocess.PIPE,
                                text=True) for _ in range(2)]
    killed, live = writers
    try:
        for writer in writers:
            assert writer.stdout.readline() == "writing\n"
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        temps = sorted(p.name for p in run.iterdir())
        assert len(temps) == 2 and all(name.startswith(f".{LAST}.") and name.endswith(".tmp") for name in temps)
        live_temp = [name for name in temps if f".{LAST}.{live.pid}-" in name]
        assert len(live_temp) == 1

        save_checkpoint(run / LAST, load_generator(checkpoint))

        assert sorted(p.name for p in run.iterdir()) == sorted([LAST, *live_temp])
        assert load_generator(run / LAST).config() == load_generator(checkpoint).config()
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
