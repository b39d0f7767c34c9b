"""A CPU view of a model repository written by ``ddn-export``.

The Triton binary shipped in the nvidia-pytriton wheel has only the python
backend, so it is pointed at a view: a folder that links each entry the
repository's targets.txt gives the ``cpu`` target under its served name
(:mod:`ddn.deployment_targets`): the python twin ``G_python`` as ``G``, the
seed step and the ensembles ``G_seeds`` as they are. The twin's config.pbtxt
has no ``name`` field, so Triton takes the model name from the link's name and
clients use the same model names on a CPU host as on a GPU host.

Nothing in the exported repository is modified; the view is a folder of links
(plus, when a config is rewritten, a private copy of that one config.pbtxt).
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Collection, Iterator

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ddn.deployment_targets import TARGETS_FILE, served_entries
from ddn.leftovers import remove_stale, tagged
from ddn.repository_contract import CONFIG_FILE, ORT_PROVIDER_PARAMETER, ORT_THREADS_PARAMETER, RepositoryError

ConfigEdit = Callable[[model_config_pb2.ModelConfig], None]
VIEW_PREFIX = "ddn-cpu-view-"
GRAPH_PARAMETER = "ddn_graph"  # the config parameter naming an entry's graph (GraphLayout.parameters)


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """Parse ``model_dir/config.pbtxt`` (protobuf text format) or raise RepositoryError naming the file."""
    path = model_dir / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise RepositoryError(f"cannot read {path}: {exc}") from None


def cpu_entries(repository: str | Path, models: Collection[str] = ()) -> dict[str, Path]:
    """Served name -> directory, for every model the repository's targets.txt gives the CPU server.

    With ``models``, only those models' families and the steps their ensembles
    run (see :func:`model_family`). Checks what the CPU server relies on: a
    twin served under another name than its folder's sets no ``name`` in its
    config, and every ensemble's steps are served too.
    """
    entries = served_entries(repository, "cpu")
    if not entries:
        raise RepositoryError(f"{Path(repository).resolve() / TARGETS_FILE} lists no entry for the cpu target; "
                              "export a model with ddn-export")
    if models:
        entries = _selected(entries, models)
    for name, model_dir in entries.items():
        config = read_config(model_dir)
        if config.name and config.name != name:
            raise RepositoryError(
                f"{model_dir / CONFIG_FILE} sets name {config.name!r}; a CPU view serves it as {name!r}, "
                "so the config must not set a name (Triton then takes it from the directory)")
        missing = sorted({step.model_name for step in config.ensemble_scheduling.step} - entries.keys())
        if missing:
            raise RepositoryError(f"the ensemble {name!r} runs {missing[0]!r}, which the cpu target does not serve")
    return entries


def model_family(model: str, names: Collection[str], models: Collection[str]) -> set[str]:
    """The served names that belong to ``model``: itself and ``<model>_<suffix>`` (encode, conditions, seeds, ...).

    A name that belongs to a longer model name (``t_big_seeds`` when ``t_big``
    is a model too) is left to that model.
    """
    def belongs(name: str, owner: str) -> bool:
        return name == owner or name.startswith(f"{owner}_")

    longer = [other for other in models if other != model and belongs(other, model)]
    return {name for name in names if belongs(name, model) and not any(belongs(name, o) for o in longer)}


def _selected(entries: dict[str, Path], wanted: Collection[str]) -> dict[str, Path]:
    """``entries`` cut to the families of the ``wanted`` models (or single served names) and their ensembles' steps."""
    models = sorted(name for name, folder in entries.items() if _is_generation_entry(folder))
    chosen: set[str] = set()
    for name in wanted:
        if name in models:
            chosen |= model_family(name, entries, models)
        elif name in entries:
            chosen.add(name)
        else:
            raise RepositoryError(f"the repository serves no model {name!r} on the cpu target; its models: "
                                  f"{', '.join(models) or '(none)'}")
    steps = [name for name in chosen if read_config(entries[name]).platform == "ensemble"]
    while steps:  # an ensemble's steps may be ensembles of their own
        new = {s.model_name for s in read_config(entries[steps.pop()]).ensemble_scheduling.step} - chosen
        chosen |= {name for name in new if name in entries}
        steps += [name for name in new if name in entries and read_config(entries[name]).platform == "ensemble"]
    return {name: entries[name] for name in sorted(chosen)}


def _is_generation_entry(folder: Path) -> bool:
    """Whether ``folder`` runs a generation graph on codes (a model, as ddn-generate --model names it).

    The seed entries carry the generation layout too, but take seeds (and the
    ensemble has no graph of its own), so the input decides.
    """
    config = read_config(folder)
    parameter = config.parameters.get(GRAPH_PARAMETER)
    return (parameter is not None and parameter.string_value == "generate" and config.platform != "ensemble"
            and any(tensor.name == "codes" for tensor in config.input))


def build_cpu_view(repository: str | Path, view: str | Path, edit: ConfigEdit | None = None,
                   models: Collection[str] = ()) -> dict[str, Path]:
    """Fill the empty folder ``view`` with one entry per python-backend model; returns served name -> source.

    Without ``edit`` each entry is a symlink to the source directory. With
    ``edit`` (a function that changes a parsed config in place, e.g. to turn
    dynamic batching off for a benchmark) each entry is a real directory with
    the edited config.pbtxt and links to the source's version folders and files;
    ensembles stay links (they have no instances or batching of their own).
    ``models`` limits the view to those models (see :func:`cpu_entries`).
    """
    view = Path(view)
    view.mkdir(parents=True, exist_ok=True)
    if any(view.iterdir()):
        raise RepositoryError(f"view folder {view} is not empty")
    entries = cpu_entries(repository, models)
    for name, source in entries.items():
        target = view / name
        if edit is None or read_config(source).platform == "ensemble":
            target.symlink_to(source, target_is_directory=True)
            continue
        target.mkdir()
        for item in source.iterdir():
            if item.name != CONFIG_FILE:
                (target / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
        config = read_config(source)
        edit(config)
        (target / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return entries


def cpu_settings(instances: int | None = None, ort_threads: int | None = None, max_queue_delay_us: int | None = None,
                 dynamic_batching: bool = True, ort_provider: str | None = None) -> ConfigEdit | None:
    """A config edit for this host: python-backend instances, ONNX Runtime threads and provider, batching.

    ``None`` keeps what the export wrote (and with nothing to change, no edit
    is returned, so the view stays plain links). On a CPU server, one
    single-threaded instance per core keeps every core busy without the
    threads of one instance spinning against each other, and a queue delay of
    0 stops a lone request from waiting for company: ONNX Runtime's cost per
    image on a CPU hardly falls with batch size, so waiting buys nothing
    (requests that queue while the instances are busy are still batched).
    ``ort_provider`` (cpu, cuda, tensorrt) is the ONNX Runtime execution
    provider the twins run on: on a GPU host the wheel's server reaches the GPU
    this way, its instances still being python-backend (KIND_CPU) processes.
    """
    if instances is None and ort_threads is None and max_queue_delay_us is None and dynamic_batching \
            and ort_provider is None:
        return None

    def edit(config: model_config_pb2.ModelConfig) -> None:
        if instances is not None:
            del config.instance_group[:]
            config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=instances)
        if ort_threads is not None:
            config.parameters[ORT_THREADS_PARAMETER].string_value = str(ort_threads)
        if ort_provider is not None:
            config.parameters[ORT_PROVIDER_PARAMETER].string_value = ort_provider
        if max_queue_delay_us is not None and config.HasField("dynamic_batching"):
            config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
        if not dynamic_batching:
            config.ClearField("dynamic_batching")

    return edit


@contextmanager
def cpu_repository_view(repository: str | Path, edit: ConfigEdit | None = None,
                        models: Collection[str] = ()) -> Iterator[Path]:
    """A temporary CPU view of ``repository`` (see :func:`build_cpu_view`), removed on exit."""
    # Named after this process, so that the next view removes one a killed process left behind.
    remove_stale(tempfile.gettempdir(), VIEW_PREFIX)
    folder = Path(tempfile.mkdtemp(prefix=tagged(VIEW_PREFIX)))
    try:
        view = folder / "models"
        build_cpu_view(repository, view, edit, models)
        yield view
    finally:
        shutil.rmtree(folder, ignore_errors=True)
