"""Sample quality of a DDN trained on MNIST digits for a fixed time budget, as JSON.

* Data: ``mnist_8k.npz`` (8,000 real MNIST digits, 28x28 padded to 32x32). The
  last ``--heldout`` digits are never trained on.
* The DDN is trained by the project's own loop (``train``) for ``--minutes``.
* Reconstruction: PSNR of encode -> decode on the held-out digits.
* Frechet distance in the 128-d penultimate features of a small CNN digit
  classifier that this script trains itself on the training digits (no
  downloaded weights): generated vs. training digits, and, as the floor, the
  held-out real digits vs. the same training digits (same sample count).
* Writes the sample grid PNG and result.json into ``--out``.

Usage: python benchmarks/quality.py [--minutes 20] [--data PATH] [--out runs/quality]
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddn.images import save_grid
from ddn.training.datasets import load_images
from ddn.training.run_outputs import images_to_uint8
from ddn.training.train_loop import TrainConfig, resolve_device, train

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/mnist_8k.npz"


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


def result_loss(run_dir: Path) -> float | None:
    """The training loss of the last logged interval."""
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return round(json.loads(lines[-1])["loss"], 5) if lines else None


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
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


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="npz with images uint8 [N, 28, 28] and labels [N]")
@click.option("--minutes", type=float, default=20.0, show_default=True, help="DDN training budget (wall clock)")
@click.option("--heldout", type=int, default=1000, show_default=True, help="digits kept out of training")
@click.option("--channels", type=int, default=64, show_default=True)
@click.option("--blocks-per-scale", type=int, default=2, show_default=True)
@click.option("--k", type=int, default=64, show_default=True)
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--chain-dropout", type=float, default=TrainConfig.chain_dropout, show_default=True)
@click.option("--split-and-prune/--no-split-and-prune", default=True, show_default=True)
@click.option("--classifier-epochs", type=int, default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/quality"),
              show_default=True, help="folder for the run, the sample grid and result.json (replaced)")
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
@click.option("--progress/--no-progress", default=True)
def main(data: Path, minutes: float, heldout: int, channels: int, blocks_per_scale: int, k: int, batch: int,
         chain_dropout: float, split_and_prune: bool, classifier_epochs: int, seed: int, device: str, out: Path, threads: int, progress: bool) -> None:
    if threads:
        torch.set_num_threads(threads)
    images = load_images(str(data), image_size=32)
    with np.load(data) as archive:
        labels = torch.from_numpy(archive["labels"].astype(np.int64))
    if len(labels) != len(images) or not 0 < heldout < len(images):
        raise click.UsageError(f"{data}: {len(images)} images, {len(labels)} labels, --heldout {heldout}")
    train_images, test_images = images[:-heldout], images[-heldout:]
    train_labels, test_labels = labels[:-heldout], labels[-heldout:]

    # The trainer reads datasets from files: give it the training split only.
    out.mkdir(parents=True, exist_ok=True)
    train_file = out / "train_split.npz"
    with np.load(data) as archive:
        np.savez(train_file, images=archive["images"][:-heldout], labels=archive["labels"][:-heldout])
    run_dir = out / "run"
    for stale in ("last.safetensors", "previous.safetensors", "log.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    config = TrainConfig(dataset=str(train_file), image_size=32, kind="single_shot", channels=channels,
                         blocks_per_scale=blocks_per_scale, k=k, steps=10**9, batch=batch, seed=seed,
                         chain_dropout=chain_dropout, split_and_prune=split_and_prune,
                         checkpoint_every=1000, log_every=20, device=device)
    started = time.perf_counter()
    result = train(config, run_dir, progress=progress, max_seconds=minutes * 60)
    train_seconds = time.perf_counter() - started
    model = result.model.eval()
    dev = resolve_device(device)

    recon = batched(lambda x: model.decode(model.encode(x.to(dev))).cpu(), test_images)
    psnr_mean, psnr_of_mse = psnr_db(recon, test_images)

    samples = batched(lambda s: model.sample(seed=s.tolist()).cpu(), torch.arange(heldout))
    save_grid(out / "samples.png", images_to_uint8(samples[:100]), ncols=10)

    classifier = train_classifier(train_images, train_labels, classifier_epochs, seed)
    accuracy = float((batched(classifier, test_images).argmax(1) == test_labels).float().mean())
    reference = batched(classifier.features, train_images).numpy().astype(np.float64)
    fd_generated = frechet_distance(batched(classifier.features, samples.clamp(-1, 1)).numpy().astype(np.float64), reference)
    fd_real = frechet_distance(batched(classifier.features, test_images).numpy().astype(np.float64), reference)

    report = {
        "data": str(data), "train_digits": len(train_images), "heldout_digits": heldout,
        "model": model.config(), "chain_dropout": chain_dropout, "split_and_prune": split_and_prune,
        "final_loss": result_loss(run_dir), "minutes_budget": minutes, "train_seconds": round(train_seconds, 1),
        "steps": result.step, "images_seen": result.step * batch, "splits": result.splits,
        "recon_psnr_db_mean": round(psnr_mean, 3), "recon_psnr_db_of_mean_mse": round(psnr_of_mse, 3),
        "classifier_heldout_accuracy": round(accuracy, 4),
        "frechet_distance_generated": round(fd_generated, 3),
        "frechet_distance_real_floor": round(fd_real, 3),
        "fd_samples": heldout, "fd_reference": "classifier penultimate features (128-d) of the training digits",
        "samples_png": str(out / "samples.png"),
    }
    (out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
