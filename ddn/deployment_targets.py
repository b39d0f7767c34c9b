"""Which entries each deployment target (GPU Triton, CPU ``ddn-serve``) serves: ``targets.txt``, written by the export
and read as it is by every reader, with no naming rule of their own (format: docs/export.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ddn.repository_contract import RepositoryError

TARGETS_FILE = "targets.txt"
TARGETS = ("gpu", "cpu")
HEADER = """\
# Written by ddn-export: the entries each deployment target serves, one per line:
# <target> <served name> <entry folder>
# gpu: NVIDIA's Triton container (serving/deploy links these entries); cpu: ddn-serve.
"""
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True, order=True)
class Served:
    """One model a target serves: Triton's ``name`` for it, and the entry folder that holds it."""

    target: str
    name: str
    entry: str

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise RepositoryError(f"target {self.target!r} is none of {', '.join(TARGETS)}")
        for name in (self.name, self.entry):
            if not name or name.startswith(".") or not set(name) <= _NAME_CHARS:
                raise RepositoryError(f"{name!r} is no entry name (letters, digits, '_', '-', '.', not leading)")


def parse_targets(text: str, source: str = TARGETS_FILE) -> list[Served]:
    """The lines of a statement; RepositoryError naming ``source`` and the line for a malformed one."""
    served = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3:
            raise RepositoryError(f"{source}, line {number}: expected '<target> <served name> <entry>', "
                                  f"got {line.strip()!r}")
        try:
            served.append(Served(*fields))
        except RepositoryError as exc:
            raise RepositoryError(f"{source}, line {number}: {exc}") from None
    return served


def render_targets(served: Iterable[Served]) -> str:
    """The statement's text: the header, then the lines sorted by target and name."""
    return HEADER + "".join(f"{s.target} {s.name} {s.entry}\n" for s in sorted(set(served)))


def merge_targets(existing: Iterable[Served], written: Iterable[Served], entries: Iterable[str]) -> list[Served]:
    """``existing`` without the lines of ``entries`` (the ones an export rewrote), plus ``written``.

    RepositoryError if two entries would be served under one name on one target.
    """
    rewritten = set(entries)
    merged = sorted({s for s in existing if s.entry not in rewritten} | set(written))
    owners: dict[tuple[str, str], str] = {}
    for s in merged:
        other = owners.setdefault((s.target, s.name), s.entry)
        if other != s.entry:
            raise RepositoryError(f"the {s.target} target would serve both {other} and {s.entry} as {s.name!r}")
    return merged


def read_targets(repository: str | Path) -> list[Served]:
    """The statement of ``repository``; a one-line RepositoryError if it is missing (an older export)."""
    path = Path(repository) / TARGETS_FILE
    if not Path(repository).is_dir():
        raise RepositoryError(f"model repository not found: {Path(repository)}")
    if not path.is_file():
        raise RepositoryError(f"{path} not found: this repository was written by an older ddn-export that did not "
                              "state which entries each target serves; export its models again with ddn-export")
    try:
        text = path.read_text()
    except OSError as exc:
        raise RepositoryError(f"cannot read {path}: {exc}") from None
    return parse_targets(text, str(path))


def served_entries(repository: str | Path, target: str) -> dict[str, Path]:
    """Served name -> entry folder, for every model ``target`` serves from ``repository``.

    RepositoryError if the statement names an entry folder that is not there.
    """
    root = Path(repository).resolve()
    entries = {}
    for s in read_targets(root):
        if s.target != target:
            continue
        if not (root / s.entry).is_dir():
            raise RepositoryError(f"{root / TARGETS_FILE} lists {s.entry} for the {target} target, but {root / s.entry} "
                                  "is not there; export that model again")
        entries[s.name] = root / s.entry
    return dict(sorted(entries.items()))
