"""What every command line built on ddn.cli shares: -h and --help, the package --version, sentence help texts."""
from importlib.metadata import version

import click
import pytest
from click.testing import CliRunner

from ddn.cli import CommandError
from ddn.export.cli import main as ddn_export
from ddn.training.cli import main as ddn_train
from ddn.training.toy2d import main as toy2d
from cli_helpers import one_line_error, usage_error

COMMANDS = {"ddn-train": ddn_train, "ddn-export": ddn_export, "python -m ddn.training.toy2d": toy2d}


def invoke(name: str, *args: str) -> click.testing.Result:
    return CliRunner().invoke(COMMANDS[name], list(args), prog_name=name)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flags(name, flag):
    result = invoke(name, flag)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {name} ") and "-h, --help" in result.output and "--version" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_version_is_the_installed_package_version(name):
    result = invoke(name, "--version")
    assert result.exit_code == 0 and result.output == f"{name} (ddn-serve) {version('ddn-serve')}\n"


def test_version_with_other_arguments_is_a_usage_error_not_a_silent_no_op(tmp_path):
    """``ddn-export CKPT --version 3`` (the model version's old spelling) must not print a version and exit 0."""
    line = usage_error(invoke("ddn-export", str(tmp_path / "c.safetensors"), "--name", "m", "--version", "3"))
    assert line == ("Error: --version prints the package version and takes no other arguments; "
                    "the model version to write is --model-version N")


@pytest.mark.parametrize("name", COMMANDS)
def test_help_texts_are_sentences(name):
    command = COMMANDS[name]
    texts = {"(command)": command.help.split("\n")[0]}
    texts.update({param.name: param.help.split("  [")[0] for param in command.params
                  if isinstance(param, click.Option) and param.help})
    fragments = {key: text for key, text in texts.items() if not (text[0].isupper() and text.endswith("."))}
    assert not fragments


def test_runtime_errors_exit_1_and_usage_errors_exit_2(tmp_path):
    assert one_line_error(invoke("ddn-train", "--dataset", str(tmp_path / "none.npz"), "--out", str(tmp_path / "r"),
                                 "--preset", "tiny")).startswith("Error: dataset not found")
    assert usage_error(invoke("ddn-train", "--steps", "0")) == (
        "Error: Invalid value for '--steps': 0 is not in the range x>=1.")
    assert one_line_error(invoke("ddn-export", str(tmp_path / "none.safetensors"), "--name", "m")).startswith(
        "Error: checkpoint not found")
    assert usage_error(invoke("ddn-export", "c.safetensors")) == "Error: Missing option '--name'."


def test_command_error_is_one_line_with_exit_code_1():
    error = CommandError(ValueError("first line\n  second   line"))
    assert (error.exit_code, error.format_message()) == (1, "first line second line")
    assert isinstance(error, click.ClickException) and not isinstance(error, click.UsageError)
