"""What every command line of the package shares: ``-h``/``--help``, ``--version``, defaults in the help, and click's
exit codes (usage errors 2; :class:`CommandError`, one ``Error:`` line, 1). Declare commands with
``@ddn.cli.command()``.
"""
from __future__ import annotations

from typing import Any, Callable

import click

PACKAGE = "ddn-serve"
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


class CommandError(click.ClickException):
    """A runtime failure, reported as one ``Error: ...`` line with exit code 1 (whitespace folded to one line)."""

    exit_code = 1

    def __init__(self, message: object):
        super().__init__(" ".join(str(message).split()) or type(message).__name__)


class Command(click.Command):
    """A click command whose ``--version`` (the package version) refuses to be combined with other arguments.

    ``--version`` is eager: without this check ``tool ARG --version 3`` would print
    the version and exit 0 without doing anything, a silent no-op in a script.
    """

    version_note = ""  # set by command(): what the user may have meant instead

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--version" in args and len(args) > 1:
            raise click.UsageError(f"--version prints the package version and takes no other arguments"
                                   f"{'; ' + self.version_note if self.version_note else ''}", ctx)
        return super().parse_args(ctx, args)


def power_of_two(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Option callback: refuse a value that is not a power of two (None passes: the option was left out)."""
    if value is not None and (value < 1 or value & (value - 1)):
        raise click.BadParameter(f"{value} is not a power of two (1, 2, 4, 8, ...)", ctx, param)
    return value


def command(name: str | None = None, version_note: str = "") -> Callable[[Callable[..., Any]], Command]:
    """``@click.command`` with the package's settings and a ``--version`` option reporting the installed package."""

    def decorate(function: Callable[..., Any]) -> Command:
        # Named package_version so that a command's own "version" parameter cannot clash with it.
        with_version = click.version_option(None, "--version", "package_version", package_name=PACKAGE,
                                            message="%(prog)s (ddn-serve) %(version)s",
                                            help="Show the package version and exit.")(function)
        cmd = click.command(name, cls=Command, context_settings=CONTEXT_SETTINGS)(with_version)
        cmd.version_note = version_note
        return cmd

    return decorate
