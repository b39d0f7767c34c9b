"""python -m benchmarks.train_speed_ranks at a tiny budget: DDP and the flat all-reduce both run on two gloo ranks."""
import statistics
from pathlib import Path

import torch

from test_train_benchmarks import run_script

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_and_the_flat_all_reduce_train_the_same_weights(tmp_path):
    report = run_script("-m", "benchmarks.train_speed_ranks", "--preset", "tiny", "--batch", "16",
                        "--rounds", "2", "--steps", "2", cwd=ROOT)
    assert report["command"] == "python -m benchmarks.train_speed_ranks --preset tiny --batch 16 --rounds 2 --steps 2"
    assert len(report["load_average"]["after"]) == 3 and report["machine"]["torch"] == torch.__version__
    assert report["ranks"] == 2 and sorted(report["ms_per_step_rounds"]) == ["ddp", "flat_all_reduce"]
    rounds = report["ms_per_step_rounds"]
    assert all(len(times) == 2 and min(times) > 0 for times in rounds.values())
    assert report["ddp_over_flat"] == statistics.median(d / f for d, f in zip(rounds["ddp"], rounds["flat_all_reduce"]))
    # Both replicas took the same 6 steps (warm-up included), split-and-prune among them: DDP averaged exactly.
    assert report["same_weights"] is True
