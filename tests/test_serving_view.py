"""The CPU view of an exported repository: the entries targets.txt gives the cpu target, under their served names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")

from ddn.deployment_targets import (TARGETS_FILE, Served, merge_targets, parse_targets,  # noqa: E402
                                    read_targets, render_targets)
from ddn.serving.repository_view import (  # noqa: E402
    RepositoryError, build_cpu_view, cpu_entries, cpu_repository_view, cpu_settings, read_config)

PRODUCTION = 'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\ndynamic_batching { }\n'
TWIN = 'backend: "python"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500 }\n'
ENSEMBLE = ('name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\nensemble_scheduling { step [ '
            '{ model_name: "mnist_seed_codes" model_version: -1 }, { model_name: "{generator}" model_version: -1 } ] }\n')


def entry(repository: Path, directory: str, config: str, *served: Served) -> Path:
    """An entry folder, and the statement's lines for it (``served``)."""
    (repository / directory / "1").mkdir(parents=True)
    (repository / directory / "config.pbtxt").write_text(config)
    (repository / directory / "1" / "model.py").write_text("# twin\n")
    existing = read_targets(repository) if (repository / TARGETS_FILE).is_file() else []
    (repository / TARGETS_FILE).write_text(render_targets(merge_targets(existing, served, [directory])))
    return repository / directory


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "model_repository"
    for graph in ("mnist", "mnist_encode"):
        entry(root, graph, PRODUCTION.replace("{name}", graph), Served("gpu", graph, graph))
        entry(root, f"{graph}_python", TWIN, Served("cpu", graph, f"{graph}_python"))
    entry(root, "mnist_trt", 'name: "mnist_trt"\nbackend: "tensorrt"\n', Served("gpu", "mnist_trt", "mnist_trt"))
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


def test_ensembles_are_linked_unchanged(repository: Path, tmp_path: Path) -> None:
    both = ("gpu", "cpu")
    entry(repository, "mnist_seed_codes", 'name: "mnist_seed_codes"\n' + TWIN,
          *(Served(t, "mnist_seed_codes", "mnist_seed_codes") for t in both))
    entry(repository, "mnist_seeds", ENSEMBLE.replace("{name}", "mnist_seeds").replace("{generator}", "mnist"),
          *(Served(t, "mnist_seeds", "mnist_seeds") for t in both))
    entry(repository, "mnist_seeds_trt", ENSEMBLE.replace("{name}", "mnist_seeds_trt")
          .replace("{generator}", "mnist_trt"), Served("gpu", "mnist_seeds_trt", "mnist_seeds_trt"))
    entries = build_cpu_view(repository, tmp_path / "view")
    assert sorted(entries) == ["mnist", "mnist_encode", "mnist_seed_codes", "mnist_seeds"]
    assert (tmp_path / "view" / "mnist_seeds").resolve() == (repository / "mnist_seeds").resolve()
    with cpu_repository_view(repository, cpu_settings(instances=2)) as view:
        assert (view / "mnist_seeds").is_symlink() and not (view / "mnist_seed_codes").is_symlink()
        assert [g.count for g in read_config(view / "mnist_seed_codes").instance_group] == [2]


def test_the_statement_alone_decides_what_the_cpu_serves(repository: Path) -> None:
    """No suffix rule: a python entry the statement gives no cpu line is left out, whatever its name."""
    entry(repository, "mnist_denoise_python", TWIN, Served("gpu", "mnist_denoise_python", "mnist_denoise_python"))
    entry(repository, "hand_made", TWIN, Served("cpu", "hand_made", "hand_made"))
    assert sorted(cpu_entries(repository)) == ["hand_made", "mnist", "mnist_encode"]


def test_an_ensemble_whose_step_the_cpu_does_not_serve_is_refused(repository: Path) -> None:
    entry(repository, "mnist_seeds_trt", ENSEMBLE.replace("{name}", "mnist_seeds_trt")
          .replace("{generator}", "mnist_trt"), Served("cpu", "mnist_seeds_trt", "mnist_seeds_trt"))
    with pytest.raises(RepositoryError, match="the ensemble 'mnist_seeds_trt' runs 'mnist_seed_codes', which the "
                                              "cpu target does not serve"):
        cpu_entries(repository)


def test_twin_that_names_itself_is_refused(repository: Path) -> None:
    (repository / "mnist_python" / "config.pbtxt").write_text('name: "mnist_python"\n' + TWIN)
    with pytest.raises(RepositoryError, match="must not set a name"):
        cpu_entries(repository)


def test_a_repository_without_a_statement_is_told_to_re_export(repository: Path, tmp_path: Path) -> None:
    (repository / TARGETS_FILE).unlink()
    with pytest.raises(RepositoryError) as error:
        cpu_entries(repository)
    assert str(error.value) == (
        f"{repository.resolve() / TARGETS_FILE} not found: this repository was written by an older ddn-export "
        "that did not state which entries each target serves; export its models again with ddn-export")
    with pytest.raises(RepositoryError, match="model repository not found"):
        cpu_entries(tmp_path / "missing")


def test_a_statement_without_cpu_lines_or_with_a_missing_entry_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    entry(root, "mnist", PRODUCTION.replace("{name}", "mnist"), Served("gpu", "mnist", "mnist"))
    with pytest.raises(RepositoryError, match="lists no entry for the cpu target"):
        cpu_entries(root)
    (root / TARGETS_FILE).write_text(render_targets([Served("cpu", "mnist", "mnist_python")]))
    with pytest.raises(RepositoryError, match="lists mnist_python for the cpu target, but .* is not there"):
        cpu_entries(root)


@pytest.mark.parametrize("line, message", [
    ("gpu mnist", "line 2: expected '<target> <served name> <entry>', got 'gpu mnist'"),
    ("tpu mnist mnist", "line 2: target 'tpu' is none of gpu, cpu"),
    ("gpu mnist ../etc", "line 2: '../etc' is no entry name"),
])
def test_malformed_statement_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(RepositoryError, match=re.escape(message)):
        parse_targets(f"# comment\n{line}\n")


def test_merging_keeps_other_entries_and_refuses_two_entries_under_one_name() -> None:
    old = [Served("gpu", "a", "a"), Served("cpu", "a", "a_python"), Served("gpu", "b", "b")]
    merged = merge_targets(old, [Served("gpu", "a", "a"), Served("gpu", "a_trt", "a_trt")], ["a", "a_trt"])
    assert merged == sorted([Served("cpu", "a", "a_python"), Served("gpu", "a", "a"), Served("gpu", "a_trt", "a_trt"),
                             Served("gpu", "b", "b")])
    assert parse_targets(render_targets(merged)) == merged
    with pytest.raises(RepositoryError, match="the cpu target would serve both a_python and b as 'a'"):
        merge_targets(old, [Served("cpu", "a", "b")], ["b"])


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


GENERATION_TWIN = TWIN + ('input [ { name: "codes" data_type: TYPE_INT32 dims: [ 4 ] } ]\n'
                          'parameters { key: "ddn_graph" value: { string_value: "generate" } }\n')
SEED_CODES = TWIN + ('input [ { name: "seeds" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
                     'parameters { key: "ddn_graph" value: { string_value: "generate" } }\n')


def model_family_entries(repository: Path, model: str) -> None:
    """What ddn-export gives the cpu target for one model: its twins, its seed step and its seeds ensemble."""
    entry(repository, f"{model}_python", GENERATION_TWIN, Served("cpu", model, f"{model}_python"))
    entry(repository, f"{model}_encode_python", TWIN, Served("cpu", f"{model}_encode", f"{model}_encode_python"))
    entry(repository, f"{model}_seed_codes", SEED_CODES, Served("cpu", f"{model}_seed_codes", f"{model}_seed_codes"))
    entry(repository, f"{model}_seeds", ENSEMBLE.replace("{name}", f"{model}_seeds").replace("{generator}", model)
          .replace("mnist_seed_codes", f"{model}_seed_codes"), Served("cpu", f"{model}_seeds", f"{model}_seeds"))


def test_models_select_their_families_and_the_steps_they_run(tmp_path: Path) -> None:
    """--model NAME: the model's entries, not those of a model whose name starts with NAME_; a single served
    name brings the steps of its ensemble; an unknown name lists the models."""
    repository = tmp_path / "model_repository"
    for model in ("mnist", "mnist_big"):
        model_family_entries(repository, model)
    family = ["mnist", "mnist_encode", "mnist_seed_codes", "mnist_seeds"]
    assert sorted(cpu_entries(repository, ["mnist"])) == family
    assert sorted(cpu_entries(repository, ["mnist_big"])) == [name.replace("mnist", "mnist_big") for name in family]
    assert sorted(cpu_entries(repository, ["mnist_seeds"])) == ["mnist", "mnist_seed_codes", "mnist_seeds"]
    assert len(cpu_entries(repository)) == 8
    with pytest.raises(RepositoryError, match=r"^the repository serves no model 'nosuch' on the cpu target; "
                                              r"its models: mnist, mnist_big$"):
        cpu_entries(repository, ["nosuch"])
