"""The trainer's benchmark scripts run and print the JSON they promise (tiny budgets)."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from ddn.training.networks import build_generator
from ddn.training.train_loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist_8k.npz"


def run_script(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_train_speed_times_split_and_prune_on_the_models_it_names(tmp_path):
    report = run_script(str(ROOT / "benchmarks" / "train_speed.py"), "--rounds", "2", "--steps", "2", "--warmup", "1",
                        cwd=tmp_path)
    shared = runpy.run_path(str(ROOT / "benchmarks" / "measured_model.py"))
    assert report["mnist_32"]["config"] == shared["measured_model"]().config()
    assert report["digits_default"]["config"] == build_generator(TrainConfig().model_config(1, 8)).config()
    for name in ("digits_default", "mnist_32"):
        entry = report[name]
        model = build_generator(entry["config"])
        assert entry["parameters"] == sum(p.numel() for p in model.parameters())
        assert entry["steps_timed"] == 4
        assert entry["images_per_s"] * entry["ms_per_step"] / 1000 == pytest.approx(entry["batch"])
        assert entry["split_and_prune_share"] == pytest.approx(
            entry["split_and_prune_ms_per_step"] / entry["ms_per_step"])
        # A fresh model's branch usage is lopsided, so the timed steps really split and prune,
        # at most one pair per DDL and step.
        assert 0 < entry["splits_per_step"] <= len(model.ddls())


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason=f"needs {MNIST} (the shared data folder)")
def test_quality_reports_psnr_and_frechet_distances(tmp_path):
    report = run_script(str(ROOT / "benchmarks" / "quality.py"), "--minutes", "0.2", "--heldout", "300",
                        "--classifier-epochs", "1", "--no-progress", "--out", str(tmp_path / "q"), cwd=tmp_path)
    assert report["steps"] > 0 and report["recon_psnr_db_mean"] > 0
    assert report["frechet_distance_real_floor"] < report["frechet_distance_generated"]
    assert (tmp_path / "q" / "samples.png").exists() and (tmp_path / "q" / "result.json").exists()
