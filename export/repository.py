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
staging folder is removed on the way out (a killed process leaves it beside
the repository, where Triton never looks).
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ddn.repository_contract import CONFIG_FILE, DESCRIPTION_FILE, RepositoryError

# Triton model names become folder names and URL path segments.
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")

ENTRY_FILES = (CONFIG_FILE, DESCRIPTION_FILE)


def check_model_name(name: str) -> str:
    if not name or name.startswith(".") or not set(name) <= _NAME_CHARS:
        raise RepositoryError(f"model name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    return name


@contextmanager
def staging_folder(repository: Path) -> Iterator[Path]:
    """A temporary folder beside ``repository`` on the same filesystem, removed on exit."""
    repository.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{repository.name}.ddn-export-", dir=repository.parent))
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
