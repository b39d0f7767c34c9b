"""The trainer's benchmark scripts run and print the JSON they promise (tiny budgets)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks import quality
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


def _head_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:  # no git
        return None
    return done.stdout.strip() if done.returncode == 0 else None


TREE_CHILD = """
import sys
sys.path.insert(0, {benchmarks!r})
from pathlib import Path
from train_step_worker import TreeFinder
sys.meta_path.insert(0, TreeFinder(Path({tree!r})))
import ddn.training.only_here
print(ddn.training.only_here.__file__)
try:
    import ddn.training.allocator  # in the installed checkout, not in this tree
except ModuleNotFoundError as error:
    print(error)
"""


def test_the_step_worker_imports_a_tree_and_nothing_else(tmp_path):
    """An older commit's modules come from its tree, and one it lacks is missing, not this checkout's."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "ddn" = "ddn", "ddn.training" = "training" }\n')
    for folder in ("ddn", "training"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "training" / "only_here.py").write_text("")
    child = TREE_CHILD.format(benchmarks=str(ROOT / "benchmarks"), tree=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "training" / "only_here.py"),
                                        f"No module named 'ddn.training.allocator' in {tmp_path}"]


@pytest.mark.skipif(_head_commit() is None, reason="needs the project's git history")
def test_train_speed_times_this_checkout_against_a_commit_in_its_own_processes():
    report = run_script("-m", "benchmarks.train_speed", "--preset", "tiny", "--rounds", "2", "--steps", "2",
                        "--warmup", "1", "--against", "HEAD", cwd=ROOT)
    against = report["against"]
    assert against["revision"] == "HEAD" and against["commit"] == _head_commit()
    tiny = against["presets"]["tiny"]
    for side in ("this_checkout", "commit"):
        assert tiny[side]["calls"] == 4
        assert tiny[side]["best_latency_ms"] <= tiny[side]["latency_ms"] <= tiny[side]["p99_ms"]
    assert tiny["speedup"] == pytest.approx(tiny["this_checkout"]["images_per_s"] / tiny["commit"]["images_per_s"],
                                            rel=1e-2)
    assert len(tiny["speedup_by_round"]) == 2 and all(r > 0 for r in tiny["speedup_by_round"])


def test_train_speed_names_a_revision_that_is_not_a_commit():
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--preset", "tiny", "--against",
                           "no-such-revision"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: Invalid value for '--against': 'no-such-revision' is not a commit of the repository at {ROOT}")


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason=f"needs {MNIST} (the shared data folder)")
def test_quality_scores_every_model_under_both_classifiers(tmp_path):
    report = run_script("-m", "benchmarks.quality", "--minutes", "0.3", "--curve", "0.15", "--heldout", "300",
                        "--set", "chain_dropout=0.3", "--classifier-epochs", "1", "--no-progress",
                        "--out", str(tmp_path / "q"), cwd=ROOT)
    assert report["default"]["train_config"]["chain_dropout"] == 0.3
    assert report["command"].startswith("python -m benchmarks.quality --minutes 0.3") and report["machine"]["cores"]
    assert report["real_digits"] == {"blank": 0.0, "saturated": 0.0}  # the ink thresholds pass every real digit
    classifiers = report["classifiers"]
    assert sorted(classifiers) == ["seed_0", "seed_1"]
    assert all(c["heldout_accuracy"] > 0.5 for c in classifiers.values())
    floors = {name: c["frechet_distance_real_floor"] for name, c in classifiers.items()}
    assert floors["seed_0"] != floors["seed_1"]  # another seed, another feature extractor
    curve = report["default"]["scores"]
    assert [s["minutes"] for s in curve] == [0.15, 0.3]
    assert 0 < curve[0]["steps"] < curve[1]["steps"]  # one run per budget, the longer one takes more steps
    official = {name: report[f"official_batch_{name}"] for name in (64, 256)}
    for scores in (*curve, *(entry["scores"][0] for entry in official.values())):
        assert sorted(scores["classifiers"]) == ["seed_0", "seed_1"]
        for name, under in scores["classifiers"].items():
            assert under["frechet_distance"] > floors[name]
            assert under["frechet_over_floor"] == pytest.approx(under["frechet_distance"] / floors[name], rel=1e-2)
            assert 0.1 <= under["classifier_confidence"] <= 1
        assert scores["classifiers"]["seed_0"]["frechet_distance"] != scores["classifiers"]["seed_1"]["frechet_distance"]
        assert 0 <= scores["blank"] + scores["saturated"] <= 1
        assert Path(scores["samples_png"]).read_bytes()[:4] == b"\x89PNG"
    for batch, entry in official.items():
        assert entry["model"]["kind"] == "recurrence" and entry["train_config"]["batch"] == batch
        assert entry["scores"][0]["images_seen"] == entry["scores"][0]["steps"] * batch
        # The official example samples its trained weights; the default recipe samples its weight average.
        assert entry["train_config"]["ema_halflife_kimg"] == 0
    assert report["default"]["train_config"]["ema_halflife_kimg"] > 0
    side = report["side_by_side"]
    assert side["recon_psnr_db_mean"]["default"] == curve[1]["recon_psnr_db_mean"]
    assert side["classifiers"]["official_batch_256"] == official[256]["scores"][0]["classifiers"]
    assert json.loads((tmp_path / "q" / "result.json").read_text()) == report


@pytest.mark.parametrize("setting, message", [
    ("steps=5", "expected FIELD=VALUE with a recipe field of TrainConfig, got 'steps=5'"),
    ("log_every=5", "expected FIELD=VALUE with a recipe field of TrainConfig, got 'log_every=5'"),
    ("no_such_field=1", "expected FIELD=VALUE with a recipe field of TrainConfig, got 'no_such_field=1'"),
    ("lr=fast", "lr takes a float, got 'fast'"),
])
def test_quality_refuses_a_setting_it_cannot_apply(tmp_path, setting, message):
    data = tmp_path / "digits.npz"  # never read: the setting is refused first
    data.write_bytes(b"")
    result = CliRunner().invoke(quality.main, ["--set", setting, "--data", str(data), "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "q").exists()  # refused before any work
