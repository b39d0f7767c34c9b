"""Write a checkpoint's graphs into a Triton model repository (what ``ddn-export`` runs): each graph's entries
(production, python twin, TensorRT) and the generate-by-seed entries, named as :mod:`ddn.repository_contract` says
and verified in staging before the first is moved in (docs/export.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ddn.deployment_targets import Served
from ddn.repository_contract import (GRAPH_KINDS, ONNX_DIGEST_PARAMETER, ONNX_FILE,
                                     ORT_PROVIDER_PARAMETER, ORT_THREADS_PARAMETER, PLAN_FILE, PYTHON_MODEL_FILE,
                                     PYTHON_SUFFIX, SEED_CODES_KIND, SEEDS_INPUT, SEEDS_KIND, TRT_SUFFIX,
                                     EntryDescription, RepositoryError, entry_name, write_description)
from ddn.training.checkpoint import load_generator

from .graphs import ConditionGraph, GeneratorGraph, build_graphs
from .onnx_export import OPSET, export_onnx, verify_onnx
from .repository import check_model_name, check_name_is_free, commit_entry, record_targets, staging_folder
from .seed_entries import codes_spec, verify_seed_codes, write_seed_codes_entry, write_seeds_ensemble
from .triton_config import INSTANCE_KINDS, graph_config, write_config

PYTHON_MODEL_TEMPLATE = Path(__file__).with_name("triton_python_model.py")
TRT_VERIFY_BATCHES = (1, 3)


class ExportError(RuntimeError):
    """An export that cannot proceed (bad arguments, unsupported graph)."""


@dataclass
class EntryReport:
    """One repository entry written by an export."""

    entry: str
    kind: str
    backend: str
    verification: dict = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelExport:
    """One checkpoint's export into ``repository`` under ``name``/``version``."""

    def __init__(self, checkpoint: str | Path, name: str, repository: str | Path = "model_repository",
                 version: int = 1, max_batch: int = 64, superres_factor: int = 4, instance_kind: str = "auto"):
        if version < 1:
            raise ExportError(f"version must be >= 1 (Triton version folders are positive integers), got {version}")
        if max_batch < 1:
            raise ExportError(f"max batch size must be >= 1, got {max_batch}")
        if instance_kind not in INSTANCE_KINDS:
            raise ExportError(f"instance kind must be one of {sorted(INSTANCE_KINDS)}, got {instance_kind!r}")
        self.checkpoint = Path(checkpoint)
        self.name = check_model_name(name)
        self.repository = Path(repository).expanduser().resolve()
        self.version = version
        self.max_batch = max_batch
        self.instance_kind = INSTANCE_KINDS[instance_kind]
        self.generator = load_generator(self.checkpoint)
        self.checkpoint_sha256 = sha256_file(self.checkpoint)
        try:
            self.graphs: dict[str, GeneratorGraph] = build_graphs(self.generator, superres_factor)
        except ValueError as exc:
            raise ExportError(str(exc)) from None

    # -- what gets written ---------------------------------------------------------
    def kinds(self, requested: Sequence[str] | None = None) -> list[str]:
        """The graph kinds to export: all this model supports, or ``requested`` (checked)."""
        if not requested:
            return list(self.graphs)
        for kind in requested:
            if kind not in GRAPH_KINDS:
                raise ExportError(f"unknown graph {kind!r}; choose from {', '.join(GRAPH_KINDS)}")
            if kind not in self.graphs:
                raise ExportError(f"graph {kind!r} needs an RGB model; this one has "
                                  f"{self.generator.image_channels} channel(s)")
        return list(dict.fromkeys(requested))

    def _details(self, backend: str, verification: dict) -> dict:
        """ddn.json's provenance part: model, version, backend, checkpoint, exporter, checks."""
        return {
            "model": self.name,
            "version": self.version,
            "backend": backend,
            "checkpoint": {"file": self.checkpoint.name, "sha256": self.checkpoint_sha256},
            "generator_config": self.generator.config(),
            "onnx": {"opset": OPSET, "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}"},
            "verification": verification,
        }

    def description(self, graph: GeneratorGraph, backend: str, verification: dict) -> EntryDescription:
        """The ddn.json beside an entry's config."""
        details = self._details(backend, verification)
        if isinstance(graph, ConditionGraph):
            details["condition"] = graph.spec.description()
        return EntryDescription(graph.layout(), tuple(graph.inputs()), tuple(graph.outputs()), self.max_batch, details)

    def _comment(self, graph: GeneratorGraph, backend: str) -> str:
        lines = [f"Written by ddn-export: graph {graph.kind!r} of {self.checkpoint.name} "
                 f"(sha256 {self.checkpoint_sha256[:16]}...), see ddn.json."]
        if backend == "onnxruntime" and self.instance_kind == "KIND_GPU":
            lines += ["KIND_GPU: Triton refuses to load this entry on a host without a visible GPU",
                      "(\"has kind KIND_GPU but no GPUs are available\"). There, serve the python twin",
                      f"{entry_name(self.name, graph.kind, PYTHON_SUFFIX)} (ddn-serve does) or export with "
                      "--instance-kind auto (GPU if present, else CPU)."]
        if backend == "onnxruntime" and self.instance_kind == "KIND_AUTO":
            lines += ["instance_group without kind: KIND_AUTO, protobuf's default (the GPU if present, else the CPU)."]
        if backend == "python":
            lines += ["Python-backend twin: runs ../<entry>/<version>/model.onnx with ONNX Runtime",
                      "(ort_execution_provider: cpu, or cuda / tensorrt with onnxruntime-gpu).",
                      "No name: Triton takes it from the folder, so a CPU view can serve it as the plain entry name."]
        return "\n".join(lines)

    def _write_entry(self, folder: Path, graph: GeneratorGraph, backend: str, name: str | None,
                     instance_kind: str, verification: dict, onnx_path: Path,
                     extra_parameters: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        description = self.description(graph, backend, verification)
        parameters = {**description.layout.parameters(), ONNX_DIGEST_PARAMETER: sha256_file(onnx_path),
                      **(extra_parameters or {})}
        config = graph_config(name=name, backend=backend, max_batch=self.max_batch, inputs=description.inputs,
                              outputs=description.outputs, parameters=parameters, instance_kind=instance_kind)
        write_config(folder, config, self._comment(graph, backend))
        write_description(folder, description)

    # -- ONNX ------------------------------------------------------------------------
    def write_onnx(self, kinds: Sequence[str] | None = None,
                   step: Callable[[str], None] = lambda entry: None) -> list[EntryReport]:
        """Export, verify and stage every graph, then move all entries into the repository; raises, writing nothing, if
        any graph fails. ``step(entry)`` is called before each graph.
        """
        kinds = self.kinds(kinds)
        seed_entries = [entry_name(self.name, SEED_CODES_KIND), entry_name(self.name, SEEDS_KIND)] \
            if "generate" in kinds else []
        check_name_is_free(self.repository, self.name, [entry_name(self.name, kind, variant) for kind in kinds
                                                        for variant in ("", PYTHON_SUFFIX)] + seed_entries)
        reports: list[EntryReport] = []
        v = str(self.version)
        with staging_folder(self.repository) as staging:
            for kind in kinds:
                graph, entry = self.graphs[kind], entry_name(self.name, kind)
                step(entry)
                onnx_path = staging / entry / v / ONNX_FILE
                onnx_path.parent.mkdir(parents=True)
                export_onnx(graph, onnx_path, self.max_batch)
                verification = verify_onnx(graph, onnx_path)
                self._write_entry(staging / entry, graph, "onnxruntime", entry, self.instance_kind, verification,
                                  onnx_path)
                twin = staging / entry_name(self.name, kind, PYTHON_SUFFIX)
                self._write_entry(twin, graph, "python", None, "KIND_CPU", verification, onnx_path,
                                  {ORT_THREADS_PARAMETER: "0", ORT_PROVIDER_PARAMETER: "cpu"})
                (twin / v).mkdir()
                shutil.copyfile(PYTHON_MODEL_TEMPLATE, twin / v / PYTHON_MODEL_FILE)
                (twin / v / ONNX_FILE).symlink_to(Path("..", "..", entry, v, ONNX_FILE))
                reports.append(EntryReport(entry, kind, "onnxruntime", verification))
            seed_reports = []
            if "generate" in kinds:
                seed_reports.append(self._stage_seed_codes(staging))
                generate_entry = entry_name(self.name, "generate")
                seed_reports.append(self._stage_seeds_ensemble(staging, generate_entry,
                                                               staging / generate_entry / v / ONNX_FILE))
            # Production entries first: each python twin's model.onnx links into one.
            for report in reports:
                commit_entry(staging / report.entry, self.repository / report.entry, self.version)
            for report in reports:
                twin = entry_name(self.name, report.kind, PYTHON_SUFFIX)
                commit_entry(staging / twin, self.repository / twin, self.version)
            for report in seed_reports:  # after the entries they run
                commit_entry(staging / report.entry, self.repository / report.entry, self.version)
        self._record_onnx_targets(reports, seed_reports)
        return reports + seed_reports

    def _record_onnx_targets(self, reports: list[EntryReport], seed_reports: list[EntryReport]) -> None:
        """State the targets: the GPU serves the production entries, the CPU their twins under the same names (so the
        ensemble's step ``NAME`` is the twin there), both the seed entries.
        """
        served, entries = [], []
        for report in reports:
            twin = entry_name(self.name, report.kind, PYTHON_SUFFIX)
            served += [Served("gpu", report.entry, report.entry), Served("cpu", report.entry, twin)]
            entries += [report.entry, twin]
        for report in seed_reports:
            served += [Served(target, report.entry, report.entry) for target in ("gpu", "cpu")]
            entries.append(report.entry)
        record_targets(self.repository, served, entries)

    # -- generation by seed --------------------------------------------------------------
    def _stage_seed_codes(self, staging: Path) -> EntryReport:
        """Stage and verify ``NAME_seed_codes``: seeds -> codes by ddn.codes' rule, numpy only."""
        layout = dataclasses.replace(self.graphs["generate"].layout(), graph=SEED_CODES_KIND)
        folder = staging / entry_name(self.name, SEED_CODES_KIND)
        comment = (f"Written by ddn-export: the seed step of {entry_name(self.name, SEEDS_KIND)} for "
                   f"{self.checkpoint.name}, see ddn.json.\nseeds INT64 [B, 1] -> codes INT32 [B, L] by "
                   "seed_rule.py (a copy of ddn/codes.py; numpy only).")
        write_seed_codes_entry(folder, self.version, layout, self.max_batch, layout.parameters(), comment)
        verification = verify_seed_codes(folder / str(self.version), layout)
        write_description(folder, EntryDescription(layout, (SEEDS_INPUT,), (codes_spec(layout),), self.max_batch,
                                                   self._details("python", verification)))
        return EntryReport(folder.name, SEED_CODES_KIND, "python", verification)

    def _stage_seeds_ensemble(self, staging: Path, generate_entry: str, onnx_path: Path, variant: str = "") -> EntryReport:
        """Stage the ensemble ``NAME_seeds<variant>``: ``NAME_seed_codes`` then ``generate_entry``."""
        graph = self.graphs["generate"]
        layout = dataclasses.replace(graph.layout(), graph=SEEDS_KIND)
        folder = staging / entry_name(self.name, SEEDS_KIND, variant)
        seed_codes = entry_name(self.name, SEED_CODES_KIND)
        comment = (f"Written by ddn-export: generation by seed of {self.checkpoint.name}, see ddn.json.\n"
                   f"seeds INT64 [B, 1] -> {seed_codes} -> codes -> {generate_entry} -> images, the bytes\n"
                   "DDNClient.generate(seeds=...) gets. Seed rule, L and K per layer: the ddn_* parameters.")
        parameters = {**layout.parameters(), ONNX_DIGEST_PARAMETER: sha256_file(onnx_path)}
        write_seeds_ensemble(folder, self.version, seed_codes, generate_entry, layout, graph.outputs(), self.max_batch,
                             parameters, comment)
        details = {**self._details("ensemble", {}), "steps": [seed_codes, generate_entry]}
        write_description(folder, EntryDescription(layout, (SEEDS_INPUT,), tuple(graph.outputs()), self.max_batch,
                                                   details))
        return EntryReport(folder.name, SEEDS_KIND, "ensemble")

    # -- TensorRT ----------------------------------------------------------------------
    def write_tensorrt(self, kinds: Sequence[str] | None = None, fp16: bool = False,
                       timing_cache: Path | None = None,
                       step: Callable[[str], None] = lambda entry: None) -> list[EntryReport]:
        """Build and verify an engine from each committed ONNX entry and add ``<entry>_trt``; fp16 applies to the
        generation graph only, as fp16 rounding would flip the guided graphs' argmin.
        """
        from .tensorrt_build import build_engine, verify_engine

        kinds = self.kinds(kinds)
        seeds_trt = [entry_name(self.name, SEEDS_KIND, TRT_SUFFIX)] if "generate" in kinds else []
        check_name_is_free(self.repository, self.name,
                           [entry_name(self.name, kind, TRT_SUFFIX) for kind in kinds] + seeds_trt)
        if seeds_trt and not (self.repository / entry_name(self.name, SEED_CODES_KIND)).is_dir():
            raise RepositoryError(f"{self.repository} has no {entry_name(self.name, SEED_CODES_KIND)} entry for "
                                  f"{seeds_trt[0]} to run; export the ONNX entries of this version again first")
        reports: list[EntryReport] = []
        v = str(self.version)
        rng = np.random.default_rng(2)
        with staging_folder(self.repository) as staging:
            for kind in kinds:
                graph, entry = self.graphs[kind], entry_name(self.name, kind)
                step(entry_name(self.name, kind, TRT_SUFFIX))
                onnx_path = self.repository / entry / v / ONNX_FILE
                half = fp16 and kind == "generate"
                plan = build_engine(onnx_path, self.max_batch, fp16=half, timing_cache=timing_cache)
                names = [spec.name for spec in graph.inputs()]
                examples = [dict(zip(names, graph.example_inputs(b, rng))) for b in (*TRT_VERIFY_BATCHES, self.max_batch)]
                verification = verify_engine(plan, onnx_path, examples, fp16=half)
                folder = staging / entry_name(self.name, kind, TRT_SUFFIX)
                (folder / v).mkdir(parents=True)
                (folder / v / PLAN_FILE).write_bytes(plan)
                self._write_entry(folder, graph, "tensorrt", folder.name, "KIND_GPU", verification, onnx_path)
                reports.append(EntryReport(folder.name, kind, "tensorrt", verification))
            if seeds_trt:
                generate_entry = entry_name(self.name, "generate")
                reports.append(self._stage_seeds_ensemble(staging, entry_name(self.name, "generate", TRT_SUFFIX),
                                                          self.repository / generate_entry / v / ONNX_FILE, TRT_SUFFIX))
            for report in reports:
                commit_entry(staging / report.entry, self.repository / report.entry, self.version)
        # Engines, and the ensemble that ends in one, run on the GPU server only.
        record_targets(self.repository, [Served("gpu", r.entry, r.entry) for r in reports], [r.entry for r in reports])
        return reports
