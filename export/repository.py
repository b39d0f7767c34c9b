"""Atomic writes into a Triton model repository: entries are staged beside it, moved in only after verification and
swapped in one step, so a reader never sees half a version and an interrupted export leaves the repository as it
was; an export never replaces another model's entries (docs/export.md).
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
    """Every entry name an export of ``model`` may ever write: each graph, its twin and engine, and the
    generate-by-seed entries.
    """
    graphs = {entry_name(model, kind, variant) for kind in GRAPH_KINDS for variant in ("", PYTHON_SUFFIX, TRT_SUFFIX)}
    return graphs | {entry_name(model, SEED_CODES_KIND), entry_name(model, SEEDS_KIND),
                     entry_name(model, SEEDS_KIND, TRT_SUFFIX)}


def check_name_is_free(repository: Path, model: str, entries: list[str]) -> None:
    """Refuse an export that would replace another model's entry, or share a possible entry name with another model
    (``t`` and ``t_encode``), since clients would get one model's graph when they ask for the other's.
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
    # Beside, not inside: Triton loads every sub-folder of a repository, dot-folders included.
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
