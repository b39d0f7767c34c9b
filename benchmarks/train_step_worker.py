"""One process that runs the trainer's own step of one source tree, on request: ``train_speed --against`` times this
checkout and an older commit side by side with one of these each.

    python benchmarks/train_step_worker.py TREE PRESET BATCH DEVICE THREADS    (Python 3.11 or newer: tomllib)

``TREE`` is a checkout of this project (this one or an extracted commit); its ``ddn`` packages are imported from
there, whatever is installed. The worker starts a run as ``ddn-train`` does (the tree's own ``_start``: its
optimizer, allocator policy, weight average and recipe defaults) and prints ``ready`` and the trainer's file;
then for each line ``N`` on stdin it runs N steps (``_Run.train_one_step``) and prints their wall seconds as a
JSON list. A separate process per tree: the allocator policy is per process, and two trees cannot share one
``ddn`` import.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import tempfile
import time
import tomllib
from pathlib import Path


class TreeFinder(importlib.abc.MetaPathFinder):
    """Finds the project's packages (``ddn``, ``ddn.training``, ...) in one source tree, laid out as its
    pyproject.toml's ``package-dir`` says, and their modules only there: a module the tree lacks is missing, never
    taken from the installed checkout.
    """

    def __init__(self, tree: Path):
        settings = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]
        self.tree = tree
        self.packages = {name: tree / folder for name, folder in settings["package-dir"].items()}

    def find_spec(self, name, path=None, target=None):
        folder = self.packages.get(name)
        if folder is not None:
            return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
        if name.partition(".")[0] not in self.packages:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)  # path: the parent package's, in the tree
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} in {self.tree}", name=name)
        return spec


def main(tree: str, preset: str, batch: str, device: str, threads: str) -> None:
    replies, sys.stdout = sys.stdout, sys.stderr  # whatever the tree prints cannot garble the replies
    sys.meta_path.insert(0, TreeFinder(Path(tree)))
    import torch

    torch.set_num_threads(int(threads))
    from ddn.training import train_loop
    from ddn.training.distributed import Ranks
    from ddn.training.train_loop import TrainConfig, _start

    config = TrainConfig(preset=preset, image_size=32, batch=int(batch), device=device)
    with tempfile.TemporaryDirectory() as out_dir:
        run = _start(config, Path(out_dir), None, Ranks.from_env(device), lambda message: None)
        print("ready", train_loop.__file__, file=replies, flush=True)  # where the trainer came from, to check
        for line in sys.stdin:
            times = []
            for _ in range(int(line)):
                start = time.perf_counter()
                run.train_one_step(0.5)
                if run.ranks.device.type == "cuda":
                    torch.cuda.synchronize(run.ranks.device)
                times.append(time.perf_counter() - start)
            print(json.dumps(times), file=replies, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
