"""What every command line of the package shares (ddn.cli): -h and --help, the package --version, sentence help
texts, usage errors exit 2 and runtime errors exit 1 with one line."""
from importlib.metadata import version

import click
import pytest
from click.testing import CliRunner

from ddn.cli import CommandError
from ddn.export.cli import main as ddn_export
from ddn.serving.generate_cli import main as ddn_generate
from ddn.serving.serve_cli import main as ddn_serve
from ddn.training.cli import main as ddn_train
from ddn.training.toy2d import main as toy2d
from ddn.training.zscg_cli import conditional as zscg
from cli_helpers import one_line_error, usage_error

# Every console script of pyproject.toml and every module with a command line.
COMMANDS = {"ddn-train": ddn_train, "ddn-export": ddn_export, "ddn-generate": ddn_generate, "ddn-serve": ddn_serve,
            "python -m ddn.training.toy2d": toy2d, "python -m ddn.training.zscg_cli": zscg}
# Help texts not written in sentences yet, each with the file that holds it (to be rewritten there):
# the condition options of ddn/condition_cli.py (ddn-generate, zscg_cli) and zscg_cli's own.
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


@pytest.mark.parametrize("name, runtime, message, usage, usage_message", [
    ("ddn-generate", ["--repository", "{tmp}", "--model", "nosuch", "--out", "{tmp}/out"],
     "Error: {tmp} has no model 'nosuch'; its models: (none: export one with ddn-export)",
     ["--n", "-1", "--out", "o"], "Error: Invalid value for '--n': -1 is not in the range x>=0."),
    ("ddn-serve", ["--repository", "{tmp}/none"], "Error: model repository not found: {tmp}/none",
     ["--instances", "0"], "Error: Invalid value for '--instances': 0 is not in the range x>=1."),
    ("python -m ddn.training.zscg_cli", ["--checkpoint", "{tmp}/none.safetensors", "--condition", "superres",
                                         "--input", "{tmp}/in.png"], "Error: checkpoint not found: {tmp}/none.safetensors",
     ["--checkpoint", "c.safetensors", "--n", "0"], "Error: Invalid value for '--n': 0 is not in the range x>=1."),
])
def test_serving_and_research_commands_exit_1_on_runtime_and_2_on_usage_errors(tmp_path, name, runtime, message,
                                                                                usage, usage_message):
    args = [arg.format(tmp=tmp_path) for arg in runtime]
    assert one_line_error(invoke(name, *args)) == message.format(tmp=tmp_path)
    assert usage_error(invoke(name, *usage)) == usage_message


def test_command_error_is_one_line_with_exit_code_1():
    error = CommandError(ValueError("first line\n  second   line"))
    assert (error.exit_code, error.format_message()) == (1, "first line second line")
    assert isinstance(error, click.ClickException) and not isinstance(error, click.UsageError)
