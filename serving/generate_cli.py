"""``ddn-generate``: write many samples as PNG files, from a local ONNX file or a Triton server.

Image i uses seed ``seed + i`` through :func:`ddn.codes.codes_from_seed` on every path, and both paths
run the same ONNX graph, so a seed gives a byte-identical PNG locally and through a server. Existing
files are skipped and each PNG is written atomically, so rerunning finishes an interrupted run.
"""
from __future__ import annotations

import os
import sys
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO, Protocol, Sequence

import click
import numpy as np
from tqdm import tqdm

from ddn.cli import CommandError, command
from ddn.condition_cli import condition_files, condition_options
from ddn.images import load_png, save_grid, save_png
from ddn.repository_contract import ONNX_FILE, GraphLayout

from .shards import Shard, ShardParam

GRID_MAX = 64  # the grid shows the first images of the run; thousands of tiles help nobody
GRID_MIN_TILE = 32  # smaller images are repeated (nearest) up to this size: 8x8 digits are unreadable as they are
# Seeds are what numpy's default_rng takes: 64-bit unsigned.
SEED_RANGE = click.IntRange(0, 2**64 - 1)
# Options of generation by seed, which a conditional run does not take.
SEED_ONLY_OPTIONS = {"count": "--n", "seed": "--seed", "shard": "--shard", "codes_path": "--codes", "grid": "--grid"}


class ImageSource(Protocol):
    """Where the images come from: OnnxModel (local) and DDNClient (Triton) both provide this."""

    @property
    def layout(self) -> GraphLayout: ...

    def codes_for_seeds(self, seeds: Sequence[int]) -> np.ndarray: ...

    def generate(self, seeds=None, codes=None, output: str = "images") -> np.ndarray: ...

    def close(self) -> None: ...


def png_name(seed: int) -> str:
    return f"{seed:06d}.png"


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``path`` atomically; its folder is made with the first file, so a failed run leaves no empty one."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        save_png(temp, image)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(temp, image)
    os.replace(temp, path)


class CodesFile:
    """The .npz of ``--codes`` (``seeds`` int64 [N], ``codes`` int32 [N, L]), written as the codes are made.

    np.savez needs whole arrays in memory; this writes the same file one wave
    at a time (the seeds, an arithmetic run, first), so its memory stays
    constant for any N. It is written under a temporary name and renamed when
    complete.
    """

    def __init__(self, path: Path, seeds: range, num_layers: int):
        self.path, self.temp = path, path.with_name(f".{path.name}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.zip = zipfile.ZipFile(self.temp, "w", zipfile.ZIP_STORED, allowZip64=True)
        with self._array("seeds", np.int64, (len(seeds),)) as f:
            for start in range(0, len(seeds), 1 << 20):
                part = seeds[start:start + (1 << 20)]
                f.write(np.arange(part.start, part.stop, dtype=np.int64).tobytes())
        self.codes = self._array("codes", np.int32, (len(seeds), num_layers))

    def _array(self, name: str, dtype: type, shape: tuple[int, ...]) -> BinaryIO:
        f = self.zip.open(f"{name}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        return f

    def append(self, codes: np.ndarray) -> None:
        self.codes.write(np.ascontiguousarray(codes, dtype=np.int32).tobytes())

    def __enter__(self) -> CodesFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_) -> None:
        self.codes.close()
        self.zip.close()
        if exc_type is None:
            os.replace(self.temp, self.path)
        else:
            self.temp.unlink(missing_ok=True)


def generate_pngs(source: ImageSource, seeds: range, out_dir: Path, wave: int, progress: bool = True,
                  codes_file: CodesFile | None = None) -> int:
    """Write ``<seed>.png`` for every seed whose file is missing; returns how many were written.

    Seeds go to the model ``wave`` at a time (the model cuts a wave into its own
    batches; a Triton client keeps several of them in flight), and nothing is
    held beyond one wave, so memory stays the same for any number of seeds.
    """
    written = 0
    with tqdm(total=len(seeds), unit="img", disable=not progress, desc="generating") as bar:
        for start in range(0, len(seeds), wave):
            part = seeds[start:start + wave]
            missing = [i for i, seed in enumerate(part) if not (out_dir / png_name(seed)).is_file()]
            codes = source.codes_for_seeds(part) if missing or codes_file else None
            if codes_file is not None:
                codes_file.append(codes)
            if missing:
                for i, image in zip(missing, source.generate(codes=codes[missing])):
                    write_png(out_dir / png_name(part[i]), image)
            written += len(missing)
            bar.update(len(part))
    return written


def remote_options(command: click.Command) -> click.Command:
    """--url (repeatable, comma lists) and how requests reach the servers: timeouts, retries, TLS."""
    options = [
        click.option("--url", "urls", multiple=True,
                     help="Triton gRPC endpoint HOST[:PORT] (port 8001 if left out). Repeat it or give a comma "
                          "list to spread the run over several servers (each request goes to the one with the "
                          "fewest in flight); dns:///NAME:PORT stands for every address NAME resolves to "
                          "(a headless Service)."),
        click.option("--resolve-interval", type=click.FloatRange(min=0, min_open=True), default=10.0,
                     help="Seconds between resolutions of a dns:/// endpoint (addresses join and leave)."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
                     help="Seconds a request may take before it is retried on another endpoint."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
                     help="Seconds for a health probe or a read of a server's models."),
        click.option("--retries", type=click.IntRange(min=0), default=3,
                     help="Times a request that failed for the server's sake (killed, hung, overloaded) is resent."),
        click.option("--tls-root-cert", type=click.Path(dir_okay=False), help="Connect over TLS, trusting this PEM "
                     "root certificate (ddn-serve --tls-cert's certificate, for a self-signed one)."),
        click.option("--tls", is_flag=True, help="Connect over TLS, trusting the system's root certificates."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def onnx_file(onnx: str) -> Path:
    """The model.onnx that ``--onnx`` names (a file, or an entry's version folder); CommandError for anything else."""
    path = Path(onnx)
    if path.is_dir():
        path = path / ONNX_FILE
    if path.suffix == ".onnx":
        return path
    entry = path.parent.parent if path.parent.name.isdigit() else path.parent
    raise CommandError(f"--onnx takes a {ONNX_FILE} file (or an entry's version folder), not {onnx}; to run the "
                       f"entry {entry.name!r}, give --repository {entry.parent} --model {entry.name}")


def open_image_source(onnx: str | None, repository: str | None, urls: Sequence[str], model: str | None,
                      batch: int, concurrency: int, **remote) -> ImageSource:
    """The source the options name, checked to be a generation graph; ``remote`` are DDNClient's keywords."""
    sources = [name for name, given in (("--onnx", onnx), ("--repository", repository), ("--url", urls)) if given]
    if len(sources) != 1:
        raise click.UsageError("give exactly one source: --onnx FILE, --repository DIR --model NAME, "
                               f"or --url HOST:PORT --model NAME (got {', '.join(sources) or 'none'})")
    if (repository or urls) and not model:
        raise click.UsageError(f"{sources[0]} needs --model NAME")
    try:
        if onnx:
            from .onnx_model import OnnxModel
            return OnnxModel(onnx_file(onnx), batch_size=batch)
        if repository:
            from .onnx_model import OnnxModel
            return OnnxModel.from_repository(repository, model, batch_size=batch)
        # gRPC's C core logs every failed TLS handshake to stderr; the one-line error already says what failed.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        from .client import DDNClient
        from .onnx_model import check_generation_graph
        client = DDNClient(urls, model=model, concurrency=concurrency, batch_size=batch, **remote)
        try:
            check_generation_graph(client.layout, model, f"model {model!r} on {client.url}")
        except BaseException:
            client.close()
            raise
        return client
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CommandError(exc) from None


@command()
@click.option("--n", "count", type=click.IntRange(min=0), default=16, help="Number of images.")
@click.option("--seed", type=SEED_RANGE, default=0, help="Seed of the first image; image i uses seed + i.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the PNG files (made when the first one is written).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Also write the first {GRID_MAX} images as one PNG grid.")
@click.option("--codes", "codes_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the seeds and their codes [N, L] to this .npz file.")
@click.option("--onnx", type=click.Path(), help="Exported model.onnx (or its version folder), run locally with "
              "ONNX Runtime.")
@click.option("--repository", type=click.Path(file_okay=False), help="Exported model repository, run locally.")
@remote_options
@click.option("--model", help="Model name in the repository or on the server (the generation entry).")
@click.option("--batch", type=click.IntRange(min=1), default=64, help="Images per request.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, help="Requests in flight (server).")
@click.option("--shard", type=ShardParam(), help="Write only seeds s with s % N == I (shard I of N runs, "
              "e.g. the pods of an Indexed Job); the N shards together write every seed exactly once.")
@condition_options(required=False)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def main(count: int, seed: int, out_dir: Path, grid: Path | None, codes_path: Path | None, onnx: str | None,
         repository: str | None, urls: tuple[str, ...], resolve_interval: float, timeout: float,
         connect_timeout: float, retries: int,
         tls_root_cert: str | None, tls: bool, model: str | None, batch: int, concurrency: int,
         shard: Shard | None, condition: str | None, progress: bool, **condition_paths: Path | None) -> None:
    """Generate N images (seeds SEED .. SEED+N-1) as PNG files into OUT.

    With --shard I/N only the seeds s with s % N == I of them. With
    --condition: one result per --input image (a file, or every image in a
    folder), written as OUT/<input name>.png, by the model's exported
    condition graph.
    """
    files = condition_files(condition, condition_paths)
    if condition is not None:
        context = click.get_current_context()
        for name, option in SEED_ONLY_OPTIONS.items():
            if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                raise click.UsageError(f"{option} does not apply to --condition (one result per --input image)")
    source = open_image_source(onnx, repository, urls, model, batch, concurrency, timeout_s=timeout,
                               connect_timeout_s=connect_timeout, retries=retries, tls=tls,
                               root_certificates=tls_root_cert, resolve_interval_s=resolve_interval)
    try:
        if condition is not None:
            from .conditional_pngs import generate_conditional_pngs  # here: it imports write_png from this module

            written, total = generate_conditional_pngs(source, condition, files, out_dir, batch * concurrency,
                                                       progress)
            click.echo(f"{written} written, {total - written} already there, in {out_dir}", err=True)
            return
        seeds = range(seed, seed + count)
        if shard is not None:
            seeds = shard.seeds(seeds)
        with CodesFile(codes_path, seeds, source.layout.num_layers) if codes_path else nullcontext() as codes:
            written = generate_pngs(source, seeds, out_dir, batch * concurrency, progress, codes)
        if grid and seeds:
            tiles = np.stack([load_png(out_dir / png_name(s)) for s in seeds[:GRID_MAX]])
            save_grid(grid, tiles, scale=-(-GRID_MIN_TILE // tiles.shape[1]))
    except (ValueError, RuntimeError) as exc:
        raise CommandError(exc) from None
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}") from None
    finally:
        source.close()
    click.echo(f"{written} written, {len(seeds) - written} already there, in {out_dir}", err=True)


if __name__ == "__main__":
    sys.exit(main())
