"""The trainer's benchmark scripts run and print the JSON they promise (tiny budgets)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddn.training.networks import build_generator
from ddn.training.presets import preset_config

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist_8k.npz"


def run_script(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_train_speed_times_split_and_prune_on_the_presets_it_names(tmp_path):
    report = run_script("-m", "benchmarks.train_speed", "--preset", "cpu", "--preset", "tiny",
                        "--rounds", "2", "--steps", "2", "--warmup", "1", cwd=ROOT)
    assert report["command"].startswith("python -m benchmarks.train_speed --preset cpu")
    assert sorted(report["presets"]) == ["cpu", "tiny"]
    for name, entry in report["presets"].items():
        assert entry["config"] == preset_config(name, 32, 1)
        model = build_generator(entry["config"])
        assert entry["parameters"] == sum(p.numel() for p in model.parameters())
        assert entry["steps_timed"] == entry["step"]["calls"] == 4
        assert entry["step"]["best_latency_ms"] <= entry["step"]["latency_ms"] <= entry["step"]["p99_ms"]
        assert entry["images_per_s"] * entry["ms_per_step"] / 1000 == pytest.approx(entry["batch"])
        assert entry["split_and_prune_share"] == pytest.approx(
            entry["split_and_prune_ms_per_step"] / entry["ms_per_step"])
        # A fresh model's branch usage is lopsided, so the timed steps really split and prune,
        # at most one pair per DDL and step.
        assert 0 < entry["splits_per_step"] <= len(model.ddls())


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason=f"needs {MNIST} (the shared data folder)")
def test_quality_scores_both_models_and_the_curve(tmp_path):
    report = run_script(str(ROOT / "benchmarks" / "quality.py"), "--minutes", "0.3", "--curve", "0.15", "--heldout", "300",
                        "--classifier-epochs", "1", "--no-progress", "--out", str(tmp_path / "q"), cwd=tmp_path)
    assert report["real_digits"] == {"blank": 0.0, "saturated": 0.0}  # the ink thresholds pass every real digit
    curve = report["default"]["scores"]
    assert [s["minutes"] for s in curve] == [0.15, 0.3]
    assert 0 < curve[0]["steps"] < curve[1]["steps"]  # the second budget resumed the same run
    for scores in (*curve, *report["official"]["scores"]):
        assert scores["frechet_distance"] > report["frechet_distance_real_floor"]
        assert scores["frechet_over_floor"] == pytest.approx(
            scores["frechet_distance"] / report["frechet_distance_real_floor"], rel=1e-2)
        assert 0 <= scores["blank"] + scores["saturated"] <= 1 and 0.1 <= scores["classifier_confidence"] <= 1
        assert Path(scores["samples_png"]).read_bytes()[:4] == b"\x89PNG"
    assert report["official"]["model"]["kind"] == "recurrence"
    # The official example samples its trained weights; the default recipe samples its weight average.
    assert report["official"]["train_config"]["ema_halflife_kimg"] == 0
    assert report["default"]["train_config"]["ema_halflife_kimg"] > 0
    assert report["side_by_side"]["recon_psnr_db_mean"]["default"] == curve[1]["recon_psnr_db_mean"]
