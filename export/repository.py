"""Atomic writes into a Triton model repository.

Everything an export writes is first assembled in a staging folder *beside* the
repository (same filesystem, so a rename moves it), mirroring the repository
layout, and only moved in after verification passed. The staging folder is not
inside the repository because Triton 2.51 loads every sub-folder of the
repository, dot-folders included (an unfinished ``.staging`` folder made the
server fail to start); inside a model folder it ignores non-numeric version
folders, but a new model has no folder yet.

Committing one entry ``G``:

* ``G`` does not exist: one rename puts the staged folder in place;
* ``G`` exists: the staged folder receives hard links of ``G``'s other versions
  (versions are never rewritten in place, so sharing inodes is safe), then the
  two folders are swapped in one step (``renameat2(RENAME_EXCHANGE)``; on
  kernels or filesystems without it, two renames with a microseconds-long gap)
  and the old folder is deleted. A reader sees either the old entry or the new
  one, never a half-written version, and other versions survive.

An export interrupted before the commit leaves the repository untouched; the
staging folder is removed on the way out. A killed process leaves it beside
the repository, where Triton never looks, named after the process
(:mod:`ddn.leftovers`), and the next export removes it.

After its entries, an export records which target serves them in the
repository's ``targets.txt`` (:mod:`ddn.deployment_targets`), merged with the
other models' lines under a lock on the repository folder and replaced in one rename.

An export never replaces another model's entries: every entry of a model
repository records its model in ddn.json, and an export refuses a name whose
entries (any graph, twin or engine) could be another model's
(:func:`check_name_is_free`).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ddn.deployment_targets import TARGETS_FILE, Served, merge_targets, read_targets, render_targets
from ddn.leftovers import remove_stale, tagged
from ddn.repository_contract import (CONFIG_FILE, DESCRIPTION_FILE, GRAPH_KINDS, PYTHON_SUFFIX, SEED_CODES_KIND,
                                     SEEDS_KIND, TRT_SUFFIX, RepositoryError, entry_name, read_description)
from ddn.training.checkpoint import atomic_write

# Triton model names become folder names and URL path segments.
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
# Entry names add up to 16 characters ("_superres_python") and must stay well inside a file name (255 bytes).
MAX_NAME_LENGTH = 128

ENTRY_FILES = (CONFIG_FILE, DESCRIPTION_FILE)


def check_model_name(name: str) -> str:
    if not name or name.startswith(".") or not set(name) <= _NAME_CHARS:
        raise RepositoryError(f"model name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    if len(name) > MAX_NAME_LENGTH:
        raise RepositoryError(f"model name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed")
    if TARGETS_FILE in possible_entries(name):
        raise RepositoryError(f"model name {name!r} is the repository's {TARGETS_FILE}; choose another --name")
    return name


def possible_entries(model: str) -> set[str]:
    """Every entry name an export of ``model`` may ever write.

    Each graph, its python twin and its engine, and the generate-by-seed
    entries: the seed step and the ensembles ending in the graph and in its engine.
    """
    graphs = {entry_name(model, kind, variant) for kind in GRAPH_KINDS for variant in ("", PYTHON_SUFFIX, TRT_SUFFIX)}
    return graphs | {entry_name(model, SEED_CODES_KIND), entry_name(model, SEEDS_KIND),
                     entry_name(model, SEEDS_KIND, TRT_SUFFIX)}


def check_name_is_free(repository: Path, model: str, entries: list[str]) -> None:
    """Refuse an export of ``model`` that would replace, or could later be confused with, another model's entry.

    ``entries`` are the ones this export writes: each may replace only an entry
    whose ddn.json names ``model``. And no model already in the repository may
    share a possible entry name with ``model`` (``t`` and ``t_encode``: t's
    encoding graph is the entry ``t_encode``), or clients would get one model's
    graph when they ask for the other's.
    """
    if not repository.is_dir():
        return
    for entry in entries:
        folder = repository / entry
        if folder.exists() or folder.is_symlink():
            try:
                owner = read_description(folder).details.get("model")
            except RepositoryError as exc:
                raise RepositoryError(f"{folder} exists and is not a ddn-export entry ({exc}); exporting {model!r} "
                                      "would replace it: remove it or choose another --name") from None
            if owner != model:
                raise RepositoryError(f"{folder} belongs to model {owner!r}; exporting {model!r} would replace it: "
                                      "choose another --name")
    mine = possible_entries(model)
    for folder in sorted(repository.iterdir()):
        try:
            owner = read_description(folder).details.get("model")
        except RepositoryError:
            continue  # not an entry of a ddn-export model: only its own name matters (checked above)
        shared = sorted(mine & possible_entries(owner)) if isinstance(owner, str) and owner != model else []
        if shared:
            raise RepositoryError(f"model name {model!r} collides with model {owner!r} in {repository}: both would "
                                  f"own the entry {shared[0]!r}; choose another --name")


@contextmanager
def staging_folder(repository: Path) -> Iterator[Path]:
    """A temporary folder beside ``repository`` on the same filesystem, removed on exit."""
    repository.mkdir(parents=True, exist_ok=True)
    prefix = f".{repository.name}.ddn-export-"
    remove_stale(repository.parent, prefix)
    folder = Path(tempfile.mkdtemp(prefix=tagged(prefix), dir=repository.parent))
    try:
        if os.stat(folder).st_dev != os.stat(repository).st_dev:
            raise RepositoryError(f"{repository} is on another filesystem than its parent folder; ddn-export "
                                  "stages entries beside the repository and moves them in with a rename")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _link_tree(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` as hard links (symlinks stay symlinks)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush the staged files so a crash right after the rename cannot leave empty files in place."""
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(Path(root))


def commit_entry(staged: Path, target: Path, version: int) -> None:
    """Move the staged entry folder onto ``target``, keeping ``target``'s other versions (see module doc)."""
    _fsync_tree(staged)
    if not target.exists():
        os.rename(staged, target)
        _fsync_dir(target.parent)
        return
    for item in target.iterdir():
        if item.name in ENTRY_FILES or item.name == str(version) or (staged / item.name).exists():
            continue
        if item.is_dir() and not item.is_symlink():
            _link_tree(item, staged / item.name)
        else:
            shutil.copy2(item, staged / item.name, follow_symlinks=False)
    if not _exchange(staged, target):
        retired = staged.with_name(staged.name + ".old")
        os.rename(target, retired)
        os.rename(staged, target)
        staged = retired
    _fsync_dir(target.parent)
    shutil.rmtree(staged)  # now the previous entry


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``folder`` itself: exports into one repository update its statement in turn."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_targets(repository: Path, served: Iterable[Served], entries: Iterable[str]) -> None:
    """Replace the statement's lines of ``entries`` (just committed) by ``served``, keeping every other line."""
    with _locked(repository):
        existing = read_targets(repository) if (repository / TARGETS_FILE).is_file() else []
        text = render_targets(merge_targets(existing, served, entries))
        atomic_write(repository / TARGETS_FILE, lambda f: f.write(text.encode()))
