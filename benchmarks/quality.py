"""Sample quality of DDNs trained on MNIST digits for fixed time budgets, side by side, as JSON.

Trains ddn-train's defaults and the official MNIST network with the project's loop, then scores them on
held-out digits (reconstruction PSNR, Frechet distance under self-trained classifiers, blank and
saturated shares); docs/benchmarks.md gives the models and scores in full.

Usage: python -m benchmarks.quality [--minutes 20] [--curve 5,10,40] [--models default,...] [--out runs/quality]
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.measure import BenchmarkRun, write_report
from ddn.images import save_grid
from ddn.training.datasets import load_images
from ddn.training.distributed import resolve_device
from ddn.training.networks import DDNGenerator
from ddn.training.run_outputs import images_to_uint8
from ddn.training.train_loop import TrainConfig, train

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/mnist_8k.npz"
# The official MNIST example's network and recipe: a constant learning rate, chain dropout at the example's 0, and
# like the example it samples its trained weights (no weight average).
OFFICIAL = dict(preset="mnist-recurrence", lr=1e-3, lr_decay=0.0, chain_dropout=0.0, split_and_prune=True,
                ema_halflife_kimg=0.0)
# The official example's batch (256) and the project's default (64: 4x more steps for the same images on a CPU).
OFFICIAL_BATCHES = (64, 256)
MODELS = ("default", *(f"official_batch_{batch}" for batch in OFFICIAL_BATCHES))
# TrainConfig fields the benchmark sets itself for every row (main's ``common``); --set cannot change them.
BENCHMARK_FIELDS = ("dataset", "image_size", "steps", "seed", "checkpoint_every", "log_every", "device")
BLANK_INK, SATURATED_INK = 0.01, 0.5  # share of pixels above mid-gray


class DigitClassifier(nn.Module):
    """Two conv stages and a 128-d feature layer; features() is what the Frechet distance compares."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Linear(64 * 16, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> DigitClassifier:
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets [N, D].

    Tr((S_a S_b)^1/2) is computed as the sum of square roots of the eigenvalues of
    S_a^1/2 S_b S_a^1/2 (symmetric, PSD): stable for the singular covariances that
    ReLU features with dead units give.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(cross).sum())


def psnr_db(reconstructions: torch.Tensor, originals: torch.Tensor) -> tuple[float, float]:
    """(mean per-image PSNR, PSNR of the mean MSE) for images in [-1, 1] (peak-to-peak 2)."""
    mse = (reconstructions.clamp(-1, 1) - originals).pow(2).flatten(1).mean(1)
    per_image = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
    return float(per_image.mean()), float(10 * math.log10(4.0 / float(mse.mean())))


def ink_shares(images: torch.Tensor) -> dict[str, float]:
    """Share of blank and of saturated images (pixels in [-1, 1]; ink is above mid-gray)."""
    ink = (images > 0).float().flatten(1).mean(1)
    return {"blank": float((ink < BLANK_INK).float().mean()), "saturated": float((ink > SATURATED_INK).float().mean())}


class FeatureSpace:
    """One classifier's features: the training digits' reference and the held-out real digits' distance (floor)."""

    def __init__(self, classifier: DigitClassifier, train_images: torch.Tensor, heldout: torch.Tensor):
        self.classifier = classifier
        self.reference = self.features(train_images)
        self.floor = frechet_distance(self.features(heldout), self.reference)

    def features(self, images: torch.Tensor) -> np.ndarray:
        return batched(self.classifier.features, images).numpy().astype(np.float64)

    def score(self, samples: torch.Tensor) -> dict[str, float]:
        """Frechet distance of ``samples`` to the training digits, over the floor, and the mean confidence."""
        fd = frechet_distance(self.features(samples), self.reference)
        confidence = batched(lambda x: self.classifier(x).softmax(1).max(1).values, samples).mean()
        return {"frechet_distance": round(fd, 3), "frechet_over_floor": round(fd / self.floor, 3),
                "classifier_confidence": round(float(confidence), 4)}


class Judge:
    """Everything a model is scored against: the held-out digits and one feature space per classifier."""

    def __init__(self, heldout: torch.Tensor, spaces: dict[str, FeatureSpace]):
        self.heldout, self.spaces = heldout, spaces

    def score(self, model: DDNGenerator, device: torch.device, grid: Path) -> dict:
        model = model.eval()
        recon = batched(lambda x: model.decode(model.encode(x.to(device))).cpu(), self.heldout)
        psnr_mean, psnr_of_mse = psnr_db(recon, self.heldout)
        samples = batched(lambda s: model.sample(seed=s.tolist()).cpu(), torch.arange(len(self.heldout))).clamp(-1, 1)
        save_grid(grid, images_to_uint8(samples[:100]), ncols=10)
        return {"recon_psnr_db_mean": round(psnr_mean, 3), "recon_psnr_db_of_mean_mse": round(psnr_of_mse, 3),
                **{k: round(v, 4) for k, v in ink_shares(samples).items()},
                "classifiers": {name: space.score(samples) for name, space in self.spaces.items()},
                "samples_png": str(grid)}


def run_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def train_and_score(name: str, config: TrainConfig, budgets_min: list[float], judge: Judge, out: Path,
                    device: torch.device, progress: bool) -> dict:
    """Train ``config`` once per budget, from scratch (its learning rate anneals to the budget's end); the scores per
    budget.
    """
    scores = []
    for budget in budgets_min:
        run_dir = out / f"{name}_{budget:g}min"
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        result = train(config, run_dir, progress=progress, max_seconds=budget * 60)
        log = run_log(run_dir)
        scores.append({"minutes": budget, "train_seconds": round(time.perf_counter() - started, 1),
                       "steps": result.step,
                       "images_seen": result.step * config.batch, "splits": result.splits,
                       "loss_last": round(log[-1]["loss"], 5), "loss_min": round(min(e["loss"] for e in log), 5),
                       **judge.score(result.sampled_model, device, out / f"{name}_{budget:g}min.png")})
        click.echo(f"{name} at {budget:g} min: " + json.dumps({k: v for k, v in scores[-1].items()
                                                               if k != "samples_png"}), err=True)
    model = result.sampled_model
    return {"train_config": {k: v for k, v in vars(config).items() if k not in ("dataset", "steps")},
            "model": model.config(), "parameters": sum(p.numel() for p in model.parameters()),
            "scores": scores, "loss_curve": [(e["step"], round(e["loss"], 5)) for e in log]}


def parse_minutes(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated minutes, got {text!r}") from None
    if values and values[0] <= 0:
        raise click.BadParameter(f"minutes must be positive, got {text!r}")
    return values


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected distinct seeds, got {text!r}")
    return seeds


def parse_models(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        raise click.BadParameter(f"unknown model row(s) {', '.join(unknown) or '(none given)'}; "
                                 f"expected some of {', '.join(MODELS)}")
    return names


def parse_settings(settings: tuple[str, ...]) -> dict:
    """``FIELD=VALUE`` pairs as TrainConfig keyword arguments, each value of its field's default's type."""
    defaults = TrainConfig()
    recipe = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        if name in BENCHMARK_FIELDS or not hasattr(defaults, name) or not value:
            raise click.BadParameter(f"expected FIELD=VALUE with a recipe field of TrainConfig, got {setting!r}")
        default = getattr(defaults, name)
        try:
            recipe[name] = (value.lower() in ("1", "true", "yes") if isinstance(default, bool)
                            else type(default)(value) if default is not None else int(value))
        except ValueError:
            raise click.BadParameter(f"{name} takes a {type(default).__name__}, got {value!r}") from None
    return recipe


def split_data(data: Path, heldout: int, out: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """The training split written to ``out`` for the trainer (it reads files), and images and labels [N]."""
    images = load_images(str(data), image_size=32)
    with np.load(data) as archive:
        labels = torch.from_numpy(archive["labels"].astype(np.int64))
        if len(labels) != len(images) or not 0 < heldout < len(images):
            raise click.UsageError(f"{data}: {len(images)} images, {len(labels)} labels, --heldout {heldout}")
        out.mkdir(parents=True, exist_ok=True)
        train_file = out / "train_split.npz"
        np.savez(train_file, images=archive["images"][:-heldout], labels=archive["labels"][:-heldout])
    return train_file, images, labels


def build_judge(images: torch.Tensor, labels: torch.Tensor, heldout: int, seeds: list[int],
                epochs: int) -> tuple[Judge, dict]:
    """A classifier per seed trained on the training split; the judge and each classifier's accuracy and floor."""
    train_images, test_images = images[:-heldout], images[-heldout:]
    spaces, described = {}, {}
    for seed in seeds:
        classifier = train_classifier(train_images, labels[:-heldout], epochs, seed)
        accuracy = float((batched(classifier, test_images).argmax(1) == labels[-heldout:]).float().mean())
        spaces[f"seed_{seed}"] = FeatureSpace(classifier, train_images, test_images)
        described[f"seed_{seed}"] = {"heldout_accuracy": round(accuracy, 4),
                                     "frechet_distance_real_floor": round(spaces[f"seed_{seed}"].floor, 3)}
    return Judge(test_images, spaces), described


SIDE_BY_SIDE_KEYS = ("images_seen", "recon_psnr_db_mean", "blank", "saturated", "classifiers")


def side_by_side(report: dict, minutes: float) -> dict:
    """Every model's scores at ``minutes``, key by key."""
    rows = {name: next(s for s in entry["scores"] if s["minutes"] == minutes)
            for name, entry in report.items() if isinstance(entry, dict) and "scores" in entry}
    return {"minutes": minutes, **{key: {name: row[key] for name, row in rows.items()} for key in SIDE_BY_SIDE_KEYS}}


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="npz with images uint8 [N, 28, 28] and labels [N]")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="budget of the side-by-side comparison (wall clock, training only)")
@click.option("--curve", default="", show_default=True,
              help="more budgets (minutes, comma-separated) for the default recipe, one run each; --minutes is "
                   "always one of them")
@click.option("--models", default=",".join(MODELS), show_default=True,
              help="comma-separated rows to train: default (scored at every --curve budget) and the official MNIST "
                   "network for --minutes at batch 64 and at its own 256")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="change one TrainConfig field of the default recipe (repeatable), e.g. --set lr_decay=0.5")
@click.option("--heldout", type=int, default=2000, show_default=True, help="digits kept out of training")
@click.option("--classifier-epochs", type=int, default=3, show_default=True)
@click.option("--classifier-seeds", default="0,1", show_default=True,
              help="one feature classifier per seed (comma-separated); every score is given under each")
@click.option("--seed", type=int, default=0, show_default=True, help="training seed")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/quality"),
              show_default=True, help="folder for the runs, the sample grids and result.json (replaced)")
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
@click.option("--progress/--no-progress", default=True)
def main(data: Path, minutes: float, curve: str, models: str, settings: tuple[str, ...], heldout: int,
         classifier_epochs: int, classifier_seeds: str, seed: int, device: str, out: Path, threads: int,
         progress: bool) -> None:
    run = BenchmarkRun()
    budgets = sorted(set(parse_minutes(curve)) | {minutes})
    seeds = parse_seeds(classifier_seeds)
    rows = parse_models(models)
    recipe = parse_settings(settings)
    if threads:
        torch.set_num_threads(threads)
    train_file, images, labels = split_data(data, heldout, out)
    judge, classifiers = build_judge(images, labels, heldout, seeds, classifier_epochs)
    dev = resolve_device(device)
    common = dict(dataset=str(train_file), image_size=32, steps=10**9, seed=seed, checkpoint_every=0, log_every=20,
                  device=device)
    report = {
        "data": str(data), "train_digits": len(images) - heldout, "heldout_digits": heldout,
        "torch_threads": torch.get_num_threads(), "classifiers": classifiers,
        "real_digits": ink_shares(judge.heldout),
        "fd_reference": "each classifier's penultimate features (128-d) of the training digits",
    }
    if "default" in rows:
        report["default"] = train_and_score("default", TrainConfig(**common, **recipe), budgets, judge, out, dev,
                                            progress)
    for batch in OFFICIAL_BATCHES:
        name = f"official_batch_{batch}"
        if name in rows:
            report[name] = train_and_score(name, TrainConfig(**common, **OFFICIAL, batch=batch), [minutes], judge,
                                           out, dev, progress)
    report["side_by_side"] = side_by_side(report, minutes)
    print(write_report(out / "result.json", run.report(**report)))


if __name__ == "__main__":
    main()
