"""model_repository/README.md shows what the current exporter writes: its generated block equals a fresh render."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient.grpc")

from ddn.export.repository_readme import BEGIN, END, README, generated_block, main, render_block  # noqa: E402


def test_the_readme_block_is_what_the_exporter_writes(tiny_repository: Path) -> None:
    assert generated_block(README.read_text()) == render_block(tiny_repository), (
        "model_repository/README.md is stale: run python -m ddn.export.repository_readme")


def test_a_changed_export_is_seen_and_the_script_rewrites_only_the_block(tiny_repository: Path,
                                                                         tmp_path: Path) -> None:
    changed = tmp_path / "model_repository"
    shutil.copytree(tiny_repository, changed, symlinks=True)
    config = changed / "tiny_python" / "config.pbtxt"
    config.write_text(config.read_text().replace('string_value: "cpu"', 'string_value: "cuda"'))
    assert render_block(changed) != generated_block(README.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{BEGIN}\nstale\n{END}\ntail\n")
    result = CliRunner().invoke(main, ["--readme", str(readme)])
    assert result.exit_code == 0, result.output
    assert readme.read_text() == f"# Title\n\n{BEGIN}\n{render_block(tiny_repository)}\n{END}\ntail\n"


def test_a_readme_without_markers_is_one_line(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    result = CliRunner().invoke(main, ["--readme", str(readme)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith(f"Error: {readme} needs the markers")
    assert readme.read_text() == "# no markers\n"
