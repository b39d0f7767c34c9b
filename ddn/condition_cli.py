"""The command-line side of the condition registry: ``--condition`` and its file options, shared by ``ddn-generate``
and ``python -m ddn.training.zscg_cli`` so both accept the same conditions (click and numpy only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import click

from ddn.conditions import CONDITIONS

Command = TypeVar("Command", bound=Callable)


def file_options() -> dict[str, str]:
    """Each file option of the registry (without "--") and its help: what it holds for each condition."""
    helps: dict[str, list[str]] = {}
    for spec in CONDITIONS.values():
        for item in spec.inputs:
            helps.setdefault(item.option, []).append(f"{spec.name}: {item.meaning}")
    return {option: "; ".join(lines) for option, lines in helps.items()}


def _param(option: str) -> str:
    return f"{option}_path"


def condition_options(required: bool) -> Callable[[Command], Command]:
    """Add --condition (required or not) and one file option per option name in the registry (--input, ...)."""
    summaries = "; ".join(f"{spec.name}: {spec.summary}" for spec in CONDITIONS.values())
    options = [click.option("--condition", type=click.Choice(list(CONDITIONS)), required=required,
                            help=f"Zero-shot condition to run ({summaries}).")]
    options += [click.option(f"--{option}", _param(option), type=click.Path(path_type=Path), default=None,
                             help=f"Image file of the condition ({text}).") for option, text in file_options().items()]

    def add(command: Command) -> Command:
        for option in reversed(options):
            command = option(command)
        return command

    return add


def condition_files(condition: str | None, params: Mapping[str, Any]) -> dict[str, Path]:
    """The files of ``condition`` by option name from a command's parameters (none without a condition).

    click.UsageError if one it needs is missing or one it does not take is given.
    """
    needed = {item.option: item.meaning for item in CONDITIONS[condition].inputs} if condition else {}
    for option, meaning in needed.items():
        if params.get(_param(option)) is None:
            raise click.UsageError(f"--condition {condition} needs --{option} ({meaning})")
    for option in file_options():
        if option not in needed and params.get(_param(option)) is not None:
            raise click.UsageError(f"--{option} does not apply to --condition {condition}" if condition
                                   else f"--{option} needs --condition")
    return {option: params[_param(option)] for option in needed}
