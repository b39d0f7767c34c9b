"""Generation by seed through the served contract: ``NAME_seeds`` on a real Triton server, as any client sees it.

One tiny generator is exported once (its generation graph, which brings the
seed entries), plus one seed step per layout of tests/data/seed_vectors.json;
one server runs on the CPU view. Plain tritonclient (gRPC) and Triton's
HTTP/JSON API must get the bytes DDNClient gets for the same seeds.
"""
from __future__ import annotations

import ast
import json
import shutil
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
grpcclient = pytest.importorskip("tritonclient.grpc")

import torch  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import ddn.codes as codes_module  # noqa: E402
from ddn.codes import OUT_OF_RANGE_CODES, SEED_RULE  # noqa: E402
from ddn.deployment_targets import Served  # noqa: E402
from ddn.export.exporter import ModelExport  # noqa: E402
from ddn.export.repository import check_name_is_free, possible_entries, record_targets  # noqa: E402
from ddn.export.seed_entries import (MODEL_TEMPLATE, SEED_RULE_FILE, STALL_GUARD_FILE, SeedStepError,  # noqa: E402
                                     verify_seed_codes, write_seed_codes_entry)
from ddn.repository_contract import GraphLayout, RepositoryError, read_description  # noqa: E402
from ddn.serving.client import DDNClient  # noqa: E402
from ddn.serving.repository_view import cpu_entries, cpu_repository_view, read_config  # noqa: E402
from ddn.serving.triton_server import Address, TritonServer  # noqa: E402
from ddn.training.checkpoint import save_checkpoint  # noqa: E402
from ddn.training.networks import SingleShotGenerator  # noqa: E402

NAME = "tiny"
MAX_BATCH = 8
SEEDS = [0, 1, 42, 2**32 + 7, 2**63 - 1]
VECTORS = json.loads((Path(__file__).parent / "data" / "seed_vectors.json").read_text())["layouts"]


def vector_entry(index: int) -> str:
    return f"vectors{index}_seed_codes"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seeds")
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny.safetensors", SingleShotGenerator(image_size=8, channels=16, k=8))
    repository = folder / "model_repository"
    ModelExport(folder / "tiny.safetensors", NAME, repository, max_batch=MAX_BATCH).write_onnx(["generate"])
    for index, vectors in enumerate(VECTORS):  # the same step, written for each published layout
        layout = GraphLayout("seed_codes", vectors["num_layers"], tuple(vectors["branch_counts"]), 8, 1)
        write_seed_codes_entry(repository / vector_entry(index), 1, layout, MAX_BATCH, layout.parameters(), "vectors")
    entries = [vector_entry(index) for index in range(len(VECTORS))]
    record_targets(repository, [Served("cpu", entry, entry) for entry in entries], entries)
    return repository


@pytest.fixture(scope="module")
def server(repository: Path):
    with cpu_repository_view(repository) as view, TritonServer(view, http=Address()) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: TritonServer):
    with DDNClient(server.grpc_url, model=NAME) as c:
        yield c


def grpc_seeds(server: TritonServer, seeds: list[int], model: str = f"{NAME}_seeds",
               outputs: tuple[str, ...] = ("images", "images_float")) -> dict[str, np.ndarray]:
    """What a plain tritonclient user does: seeds INT64 [B, 1] in, the named outputs back."""
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("seeds", [len(seeds), 1], "INT64")
    tensor.set_data_from_numpy(np.array(seeds, np.int64).reshape(-1, 1))
    result = raw.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


def test_served_seed_entries_and_their_contract_parameters(server: TritonServer, client: DDNClient,
                                                           repository: Path) -> None:
    served = client.available_models()
    assert {NAME, f"{NAME}_seed_codes", f"{NAME}_seeds"} <= set(served) and f"{NAME}_seeds_trt" not in served
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    for model in (NAME, f"{NAME}_seeds", f"{NAME}_seed_codes"):
        parameters = {k: v["string_value"] for k, v in
                      raw.get_model_config(model, as_json=True)["config"]["parameters"].items()}
        assert parameters["ddn_num_layers"] == "8" and parameters["ddn_branch_counts"] == ",".join(["8"] * 8)
        assert parameters["ddn_seed_rule"] == SEED_RULE
        assert parameters["ddn_out_of_range_codes"] == OUT_OF_RANGE_CODES == "clamped to [0, K-1] per layer"
    # The same over HTTP (Triton's model configuration API), as curl reads it.
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{NAME}_seeds/config", timeout=30) as answer:
        config = json.loads(answer.read())
    assert config["parameters"]["ddn_branch_counts"]["string_value"] == ",".join(["8"] * 8)
    assert config["platform"] == "ensemble" and config["input"][0]["data_type"] == "TYPE_INT64"
    assert read_description(repository / f"{NAME}_seeds").details["steps"] == [f"{NAME}_seed_codes", NAME]


def test_the_server_loaded_the_configs_the_export_wrote(server: TritonServer, repository: Path) -> None:
    """Every field of each exported config is what Triton's model_config API reports, but the names it fills in."""
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    for name, entry in cpu_entries(repository).items():
        expected = read_config(entry)
        expected.name = name  # a twin's config names no model: Triton takes the folder's name
        for index, group in enumerate(expected.instance_group):
            group.name = f"{name}_{index}"  # Triton names each instance group
        loaded = raw.get_model_config(name).config
        for field, value in expected.ListFields():
            assert getattr(loaded, field.name) == value, (name, field.name)


def test_plain_grpc_seeds_give_the_bytes_ddnclient_gets(server: TritonServer, client: DDNClient) -> None:
    served = grpc_seeds(server, SEEDS)
    np.testing.assert_array_equal(served["images"], client.generate(seeds=SEEDS))
    np.testing.assert_array_equal(served["images_float"], client.generate(seeds=SEEDS, output="images_float"))
    assert served["images"].dtype == np.uint8 and served["images"].shape == (len(SEEDS), 8, 8, 1)


def test_http_json_seeds_give_the_bytes_ddnclient_gets(server: TritonServer, client: DDNClient) -> None:
    body = {"inputs": [{"name": "seeds", "shape": [len(SEEDS), 1], "datatype": "INT64", "data": SEEDS}],
            "outputs": [{"name": "images"}]}
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{NAME}_seeds/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        output = json.loads(answer.read())["outputs"][0]
    assert (output["name"], output["datatype"], output["shape"]) == ("images", "UINT8", [len(SEEDS), 8, 8, 1])
    images = np.array(output["data"], np.uint8).reshape(output["shape"])
    np.testing.assert_array_equal(images, client.generate(seeds=SEEDS))


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_served_seed_step_reproduces_the_published_vectors(server: TritonServer, index: int) -> None:
    vectors = VECTORS[index]
    codes = grpc_seeds(server, [int(s) for s in vectors["codes"]], vector_entry(index), ("codes",))["codes"]
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, np.array(list(vectors["codes"].values())))


def test_negative_seed_is_refused_in_one_line_and_the_server_keeps_serving(server: TritonServer,
                                                                           client: DDNClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        grpc_seeds(server, [5, -1])
    message = error.value.message()
    assert "seed -1 is negative; seeds are integers >= 0" in message and "\n" not in message
    np.testing.assert_array_equal(grpc_seeds(server, [5])["images"], client.generate(seeds=[5]))


def test_concurrent_seed_requests_are_batched_by_the_composing_models(server: TritonServer,
                                                                      client: DDNClient) -> None:
    raw = grpcclient.InferenceServerClient(server.grpc_url)

    def counts(model: str) -> tuple[int, int]:
        stats = raw.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    before = {m: counts(m) for m in (f"{NAME}_seed_codes", NAME)}
    clients, rounds = 8, 12
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(clients)

    def worker(i: int) -> None:
        start.wait()
        for r in range(rounds):
            seed = 1000 + i * rounds + r
            results[seed] = grpc_seeds(server, [seed], outputs=("images",))["images"][0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = {m: counts(m) for m in before}
    seeds = sorted(results)
    assert len(seeds) == clients * rounds
    np.testing.assert_array_equal(np.stack([results[s] for s in seeds]), client.generate(seeds=seeds))
    for model, (inferences, executions) in before.items():
        assert after[model][0] - inferences == clients * rounds, model
        # Fewer executions than requests: the scheduler put several requests into one execution.
        assert after[model][1] - executions < clients * rounds, (model, after[model][1] - executions)


def test_exporter_refuses_a_seed_step_that_needs_the_ddn_package(repository: Path, tmp_path: Path) -> None:
    layout = GraphLayout("seed_codes", 8, (8,) * 8, 8, 1)
    folder = tmp_path / "tiny_seed_codes"
    write_seed_codes_entry(folder, 1, layout, MAX_BATCH, layout.parameters(), "test")
    assert verify_seed_codes(folder / "1", layout)["seeds"] == [0, 1, 42, 2**32 + 7, 2**63 - 1]
    rule = folder / "1" / SEED_RULE_FILE
    rule.write_text("from ddn.codes import codes_from_seed\n")
    with pytest.raises(SeedStepError, match="does not run without the ddn package"):
        verify_seed_codes(folder / "1", layout)
    rule.write_text("import numpy as np\ndef codes_from_seed(seeds, num_layers, k):\n"
                    "    return np.zeros((len(seeds), num_layers), np.int32)\n")
    with pytest.raises(SeedStepError, match="codes differ from ddn.codes.codes_from_seed"):
        verify_seed_codes(folder / "1", layout)
    shutil.copyfile(codes_module.__file__, rule)
    guard = folder / "1" / STALL_GUARD_FILE
    guard.write_text("from ddn.export.stall_guard import StallGuard\n")
    with pytest.raises(SeedStepError, match=f"{STALL_GUARD_FILE} does not run without the ddn package"):
        verify_seed_codes(folder / "1", layout)


def test_the_seed_step_loads_the_files_the_exporter_copies() -> None:
    """triton_seed_codes_model.py runs without the ddn package, so it names the files itself: the same names."""
    template = ast.parse(MODEL_TEMPLATE.read_text())
    names = {node.targets[0].id: node.value.value for node in template.body
             if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}
    assert names["SEED_RULE_FILE"] == SEED_RULE_FILE and names["STALL_GUARD_FILE"] == STALL_GUARD_FILE


def test_engine_ensemble_needs_the_seed_step_in_the_repository(repository: Path, tmp_path: Path) -> None:
    job = ModelExport(repository.parent / "tiny.safetensors", NAME, tmp_path / "empty", max_batch=MAX_BATCH)
    with pytest.raises(RepositoryError, match=f"no {NAME}_seed_codes entry for {NAME}_seeds_trt"):
        job.write_tensorrt(["generate"])


def test_names_that_would_share_a_seed_entry_collide(repository: Path) -> None:
    assert {f"{NAME}_seeds", f"{NAME}_seed_codes", f"{NAME}_seeds_trt"} <= possible_entries(NAME)
    # Each one's generation entry is one of tiny's seed entries (tiny_seeds_trt is not written yet, but could be).
    for other in (f"{NAME}_seeds", f"{NAME}_seed_codes", f"{NAME}_seeds_trt"):
        with pytest.raises(RepositoryError, match=f"collides with model '{NAME}'.*'{other}'"):
            check_name_is_free(repository, other, [])
