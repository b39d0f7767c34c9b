"""The CPU view of an exported repository: python-backend twins under their production names, and ensembles."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")

from ddn.serving.repository_view import (  # noqa: E402
    RepositoryError, build_cpu_view, cpu_entries, cpu_repository_view, cpu_settings, read_config)

PRODUCTION = 'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\ndynamic_batching { }\n'
TWIN = 'backend: "python"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500 }\n'
ENSEMBLE = ('name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\nensemble_scheduling { step [ '
            '{ model_name: "mnist_seed_codes" model_version: -1 }, { model_name: "{generator}" model_version: -1 } ] }\n')


def entry(repository: Path, directory: str, config: str) -> Path:
    (repository / directory / "1").mkdir(parents=True)
    (repository / directory / "config.pbtxt").write_text(config)
    (repository / directory / "1" / "model.py").write_text("# twin\n")
    return repository / directory


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "model_repository"
    for graph in ("mnist", "mnist_encode"):
        entry(root, graph, PRODUCTION.replace("{name}", graph))
        entry(root, f"{graph}_python", TWIN)
    entry(root, "mnist_trt", 'name: "mnist_trt"\nbackend: "tensorrt"\n')
    return root


def test_view_serves_python_twins_under_plain_names(repository: Path, tmp_path: Path) -> None:
    view = tmp_path / "view"
    entries = build_cpu_view(repository, view)
    assert sorted(entries) == ["mnist", "mnist_encode"]
    assert sorted(p.name for p in view.iterdir()) == ["mnist", "mnist_encode"]
    assert (view / "mnist").resolve() == (repository / "mnist_python").resolve()
    assert read_config(view / "mnist").backend == "python"


def test_view_with_edited_config_leaves_the_repository_alone(repository: Path) -> None:
    before = (repository / "mnist_python" / "config.pbtxt").read_text()
    with cpu_repository_view(repository, edit=lambda c: c.ClearField("dynamic_batching")) as view:
        assert not read_config(view / "mnist").HasField("dynamic_batching")
        assert (view / "mnist" / "1" / "model.py").read_text() == "# twin\n"
        folder = view.parent
    assert not folder.exists()
    assert (repository / "mnist_python" / "config.pbtxt").read_text() == before


def test_ensembles_are_linked_unchanged_when_the_view_serves_their_steps(repository: Path, tmp_path: Path) -> None:
    entry(repository, "mnist_seed_codes", 'name: "mnist_seed_codes"\n' + TWIN)
    for name, generator in (("mnist_seeds", "mnist"), ("mnist_seeds_trt", "mnist_trt")):
        entry(repository, name, ENSEMBLE.replace("{name}", name).replace("{generator}", generator))
    entries = build_cpu_view(repository, tmp_path / "view")
    assert sorted(entries) == ["mnist", "mnist_encode", "mnist_seed_codes", "mnist_seeds"]
    assert (tmp_path / "view" / "mnist_seeds").resolve() == (repository / "mnist_seeds").resolve()
    with cpu_repository_view(repository, cpu_settings(instances=2)) as view:
        assert (view / "mnist_seeds").is_symlink() and not (view / "mnist_seed_codes").is_symlink()
        assert [g.count for g in read_config(view / "mnist_seed_codes").instance_group] == [2]
    # An ensemble in the production folder of a graph whose twin the view serves under that name.
    (repository / "mnist_encode" / "config.pbtxt").write_text(ENSEMBLE.replace("{name}", "mnist_encode")
                                                              .replace("{generator}", "mnist"))
    with pytest.raises(RepositoryError, match="would both be served as 'mnist_encode'"):
        cpu_entries(repository)


def test_twin_that_names_itself_is_refused(repository: Path) -> None:
    (repository / "mnist_python" / "config.pbtxt").write_text('name: "mnist_python"\n' + TWIN)
    with pytest.raises(RepositoryError, match="must not set a name"):
        cpu_entries(repository)


def test_repository_without_twins_is_refused(tmp_path: Path) -> None:
    entry(tmp_path / "repo", "mnist", PRODUCTION.replace("{name}", "mnist"))
    with pytest.raises(RepositoryError, match="no python-backend models"):
        cpu_entries(tmp_path / "repo")
    with pytest.raises(RepositoryError, match="not found"):
        cpu_entries(tmp_path / "missing")


def test_cpu_settings_rewrite_instances_threads_and_batching(repository: Path) -> None:
    assert cpu_settings() is None
    with cpu_repository_view(repository, cpu_settings(instances=3, ort_threads=1, max_queue_delay_us=0)) as view:
        assert read_config(view / "mnist").dynamic_batching.max_queue_delay_microseconds == 0
    with cpu_repository_view(repository, cpu_settings(instances=3, ort_threads=1, dynamic_batching=False)) as view:
        config = read_config(view / "mnist")
    assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_CPU, 3)]
    assert config.parameters["ort_intra_op_threads"].string_value == "1"
    assert not config.HasField("dynamic_batching") and config.max_batch_size == 8


def test_cpu_settings_set_the_execution_provider_and_keep_the_rest(repository: Path) -> None:
    with cpu_repository_view(repository, cpu_settings(ort_provider="cuda")) as view:
        config = read_config(view / "mnist")
    assert config.parameters["ort_execution_provider"].string_value == "cuda"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500 and not config.instance_group
