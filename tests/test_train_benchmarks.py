"""The trainer's benchmark scripts run and print the JSON they promise (tiny budgets)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist_8k.npz"


def run_script(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_train_speed_reports_both_models(tmp_path):
    report = run_script(str(ROOT / "benchmarks" / "train_speed.py"), "--rounds", "1", "--steps", "2", "--warmup", "1",
                        cwd=tmp_path)
    for name in ("digits_default", "mnist_32"):
        entry = report[name]
        assert entry["images_per_s"] > 0 and 0 < entry["split_and_prune_share"] < 1
    assert report["mnist_32"]["config"]["image_size"] == 32


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason=f"needs {MNIST} (the shared data folder)")
def test_quality_reports_psnr_and_frechet_distances(tmp_path):
    report = run_script(str(ROOT / "benchmarks" / "quality.py"), "--minutes", "0.2", "--heldout", "300",
                        "--classifier-epochs", "1", "--no-progress", "--out", str(tmp_path / "q"), cwd=tmp_path)
    assert report["steps"] > 0 and report["recon_psnr_db_mean"] > 0
    assert report["frechet_distance_real_floor"] < report["frechet_distance_generated"]
    assert (tmp_path / "q" / "samples.png").exists() and (tmp_path / "q" / "result.json").exists()
