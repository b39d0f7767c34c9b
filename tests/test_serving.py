"""Serving end to end: a real Triton server (the nvidia-pytriton binary) on an exported repository, over gRPC.

One tiny generator is exported once per module (generation, encoding and
inpainting graphs) and one server runs on its CPU view for all tests here;
ONNX Runtime in this process on the same files is the reference every
served result must match byte for byte.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytriton", reason="needs the nvidia-pytriton wheel (pip install 'ddn-serve[serving]')")
grpcclient = pytest.importorskip("tritonclient.grpc")

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from ddn.codes import codes_from_seed  # noqa: E402
from ddn.export.exporter import ModelExport  # noqa: E402
from ddn.export.graphs import build_graphs  # noqa: E402
from ddn.repository_contract import (ORT_PROVIDER_PARAMETER, PYTHON_SUFFIX, GraphLayout, entry_name,  # noqa: E402
                                     onnxruntime_session, read_description)
from ddn.serving.client import DDNClient, ServingError  # noqa: E402
from ddn.serving.endpoints import parse_urls  # noqa: E402
from ddn.serving.generate_cli import main as generate_main  # noqa: E402
from ddn.serving.onnx_model import OnnxModel  # noqa: E402
from ddn.serving.repository_view import cpu_repository_view, cpu_settings, cpu_entries, read_config  # noqa: E402
from ddn.serving.triton_server import TritonServer, _free_ports  # noqa: E402
from ddn.training.checkpoint import load_generator, save_checkpoint  # noqa: E402
from ddn.training.networks import SingleShotGenerator  # noqa: E402
from cli_helpers import one_line_error  # noqa: E402
from serve_helpers import take_kept_log  # noqa: E402

NAME = "tiny"
MAX_BATCH = 8
KINDS = ("generate", "encode", "inpaint")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    checkpoint = folder / "tiny.safetensors"
    save_checkpoint(checkpoint, SingleShotGenerator(image_size=8, channels=16, k=8))
    repository = folder / "model_repository"
    ModelExport(checkpoint, NAME, repository, max_batch=MAX_BATCH).write_onnx(KINDS)
    return repository


@pytest.fixture(scope="module")
def client(server: TritonServer):
    with DDNClient(server.grpc_url, model=NAME, concurrency=4) as c:
        yield c


def raw_infer(server: TritonServer, array: np.ndarray, datatype: str = "INT32", model: str = NAME) -> np.ndarray:
    """A request straight through tritonclient: none of DDNClient's checks."""
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("codes", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return raw.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("images")]).as_numpy("images")


def assert_still_serving(client: DDNClient, local: OnnxModel) -> None:
    np.testing.assert_array_equal(client.generate(seeds=[7, 8]), local.generate(seeds=[7, 8]))


def test_served_names_and_parameters(client: DDNClient) -> None:
    assert client.available_models() == [NAME, f"{NAME}_encode", f"{NAME}_inpaint", f"{NAME}_seed_codes",
                                         f"{NAME}_seeds"]
    layout = client.layout
    assert (layout.num_layers, layout.branch_counts, layout.image_shape) == (8, (8,) * 8, (8, 8, 1))
    assert client.info.max_batch_size == MAX_BATCH


def test_every_reader_reads_back_what_the_exporter_wrote(repository: Path, client: DDNClient,
                                                        local: OnnxModel) -> None:
    """ddn.json, config.pbtxt, the CPU view, the local runner, the Triton client and the twin's model.py."""
    model = load_generator(repository.parent / "tiny.safetensors")
    graphs = build_graphs(model)
    for kind in KINDS:
        layout = GraphLayout(kind, model.num_layers, tuple(model.branch_counts), model.image_size,
                             model.image_channels)
        io = (tuple(graphs[kind].inputs()), tuple(graphs[kind].outputs()))
        for entry in (entry_name(NAME, kind), entry_name(NAME, kind, PYTHON_SUFFIX)):
            description = read_description(repository / entry)
            assert (description.layout, description.max_batch_size) == (layout, MAX_BATCH)
            assert (description.inputs, description.outputs) == io
            config = read_config(repository / entry)
            assert GraphLayout.from_parameters({k: v.string_value for k, v in config.parameters.items()}) == layout
            assert config.max_batch_size == MAX_BATCH
            assert [(t.name, tuple(t.dims)) for t in config.input] == [(s.name, s.shape) for s in io[0]]
        info = client.model_info(client.graph(kind))
        assert (info.layout, info.max_batch_size, (info.inputs, info.outputs)) == (layout, MAX_BATCH, io)
    seed_entries = {entry: repository / entry for entry in (f"{NAME}_seed_codes", f"{NAME}_seeds")}
    assert cpu_entries(repository) == {**{entry_name(NAME, kind): repository / entry_name(NAME, kind, PYTHON_SUFFIX)
                                          for kind in KINDS}, **seed_entries}
    # The local runner takes its layout and batch limit from ddn.json; the twin behind the client runs
    # the same session settings: 2 * MAX_BATCH + 3 codes, in batches of MAX_BATCH, match one whole-batch run.
    assert (local.layout, local.batch_size) == (client.layout, MAX_BATCH)
    assert OnnxModel.from_repository(repository, NAME, batch_size=10 * MAX_BATCH).batch_size == MAX_BATCH
    codes = local.codes_for_seeds(range(2 * MAX_BATCH + 3))
    whole = onnxruntime_session(repository / NAME / "1" / "model.onnx").run(["images"], {"codes": codes})[0]
    np.testing.assert_array_equal(local.generate(codes=codes), whole)
    np.testing.assert_array_equal(client.generate(codes=codes), whole)


def test_twins_are_exported_on_the_cpu_provider(repository: Path) -> None:
    config = read_config(repository / entry_name(NAME, "generate", PYTHON_SUFFIX))
    assert config.parameters[ORT_PROVIDER_PARAMETER].string_value == "cpu"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider: the twin would load")
def test_twin_asked_for_cuda_without_it_fails_to_load_naming_the_provider(repository: Path) -> None:
    with cpu_repository_view(repository, cpu_settings(ort_provider="cuda")) as view:
        with pytest.raises(RuntimeError, match="failed to load") as error:
            TritonServer(view, startup_timeout=60).start()
    assert "ort_execution_provider 'cuda' needs CUDAExecutionProvider" in str(error.value)
    assert "install onnxruntime-gpu" in str(error.value)
    assert "CUDAExecutionProvider" in take_kept_log(str(error.value))


def test_generate_from_seeds_is_byte_identical_to_local_onnx(client: DDNClient, local: OnnxModel) -> None:
    served = client.generate(seeds=range(6))
    assert served.dtype == np.uint8 and served.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(served, local.generate(seeds=range(6)))
    np.testing.assert_array_equal(client.generate(codes=codes_from_seed(range(6), 8, 8)), served)
    np.testing.assert_array_equal(client.generate(seeds=[3], output="images_float"),
                                  local.generate(seeds=[3], output="images_float"))


@pytest.mark.parametrize("codes, message", [
    (np.zeros((2, 8), np.float32), "must be integers"),
    (np.zeros((2, 9), np.int32), r"shape \[B, 8\]"),
    (np.full((2, 8), 8, np.int32), r"out of range \[0, 8\)"),
    (np.full((1, 8), -1, np.int64), "out of range"),
])
def test_client_rejects_bad_codes_before_sending(client: DDNClient, local: OnnxModel, codes, message) -> None:
    with pytest.raises(ServingError, match=message):
        client.generate(codes=codes)
    assert_still_serving(client, local)


def test_server_refuses_bad_requests_that_bypass_the_client(server: TritonServer, client: DDNClient,
                                                            local: OnnxModel) -> None:
    good = codes_from_seed([1, 2], 8, 8)
    with pytest.raises(InferenceServerException, match="data-type is 'INT64'"):
        raw_infer(server, good.astype(np.int64), "INT64")
    assert_still_serving(client, local)
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        raw_infer(server, np.zeros((2, 5), np.int32))
    assert_still_serving(client, local)
    with pytest.raises(InferenceServerException, match=f"batch-size must be <= {MAX_BATCH}"):
        raw_infer(server, np.zeros((MAX_BATCH + 1, 8), np.int32))
    assert_still_serving(client, local)
    with pytest.raises(InferenceServerException, match="unknown model"):
        raw_infer(server, good, model="nope")
    assert_still_serving(client, local)


def test_out_of_range_codes_are_clamped_by_the_graph(server: TritonServer, client: DDNClient,
                                                     local: OnnxModel) -> None:
    wild = np.array([[99, -5, 7, 0, 1000, -2**31, 2**31 - 1, 3]], np.int32)
    clamped = np.clip(wild, 0, 7)
    np.testing.assert_array_equal(raw_infer(server, wild), local.generate(codes=clamped))
    assert_still_serving(client, local)


def closed_admin_header(server: TritonServer) -> tuple[bytes, bytes]:
    """The header the server asks of administrative requests, read from its command line as any local user can."""
    argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    setting = next(a for a in argv if a.startswith(b"--grpc-restricted-protocol=")).split(b":", 1)[1]
    key, value = setting.split(b"=", 1)
    return key, value


def test_the_backends_shared_memory_cannot_be_used_to_crash_the_server(server: TritonServer, client: DDNClient,
                                                                       local: OnnxModel) -> None:
    """Register a python-backend region as client memory, then write an output into it: refused, still serving.

    Triton's HTTP frontend is never started and ddn-serve's HTTP gateway does not route these APIs
    (test_server_hardening), so gRPC is the only way to them.
    """
    before = client.generate(seeds=[7, 8])
    regions = server.shared_memory_regions
    assert regions, "the python backend has shared-memory regions, named after the server"
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    key, value = closed_admin_header(server)
    for region in regions:
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            raw.register_system_shared_memory("victim", "/" + region.name, 1 << 20)
        # The header in the command line cannot be sent: gRPC lower-cases its name, HTTP cannot carry its value.
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            raw.register_system_shared_memory("victim", "/" + region.name, 1 << 20, headers={
                f"triton-grpc-protocol-{key.decode().lower()}": value.decode().replace("\n", " ")})
    codes = codes_from_seed([7, 8], 8, 8)
    request = grpcclient.InferInput("codes", list(codes.shape), "INT32")
    request.set_data_from_numpy(codes)
    into_region = grpcclient.InferRequestedOutput("images")
    into_region.set_shared_memory("victim", 256)
    with pytest.raises(InferenceServerException, match="victim"):
        raw.infer(NAME, [request], outputs=[into_region])
    np.testing.assert_array_equal(client.generate(seeds=[7, 8]), before)
    np.testing.assert_array_equal(before, local.generate(seeds=[7, 8]))
    assert server.shared_memory_regions == regions


def test_log_settings_cannot_be_changed_without_the_key(server: TritonServer) -> None:
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    for call in (lambda: raw.update_log_settings({"log_verbose_level": 3}), raw.get_log_settings,
                 lambda: raw.update_trace_settings(settings={"trace_file": "/tmp/x"})):
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            call()


def test_unknown_model_lists_the_served_ones(server: TritonServer, client: DDNClient) -> None:
    with DDNClient(server.grpc_url, model="nope") as unknown, pytest.raises(
            ServingError, match=r"model 'nope' is not served by .*; available models: tiny, tiny_encode"):
        unknown.generate(seeds=[0])
    with pytest.raises(ServingError, match="'tiny_colorize' is not served"):
        client.conditional("colorize", gray=np.zeros((1, 8, 8, 1), np.uint8))


def test_client_connects_on_first_use_and_names_an_unreachable_url() -> None:
    url = f"127.0.0.1:{_free_ports('127.0.0.1', 1)[0]}"
    with DDNClient(url, model=NAME, connect_timeout_s=2) as unreachable:  # constructing talks to nobody
        with pytest.raises(ServingError, match=f"cannot reach the Triton server at {url}"):
            unreachable.generate(seeds=[0])


def test_request_over_max_batch_is_split_and_reassembled(client: DDNClient, local: OnnxModel) -> None:
    seeds = list(range(100, 100 + 3 * MAX_BATCH + 5))  # 4 requests, the last one short
    np.testing.assert_array_equal(client.generate(seeds=seeds), local.generate(seeds=seeds))
    assert client.generate(seeds=[]).shape == (0, 8, 8, 1)


def test_concurrent_burst_returns_everything_in_order(server: TritonServer, local: OnnxModel) -> None:
    burst = [list(range(start, start + size)) for start, size in zip(range(0, 4000, 200), [1, 3, 8, 13, 29] * 4)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    with DDNClient(server.grpc_url, model=NAME, concurrency=8) as shared:
        def worker(i: int) -> None:
            try:
                results[i] = shared.generate(seeds=burst[i])
            except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(burst))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    assert sorted(results) == list(range(len(burst)))
    for i, seeds in enumerate(burst):
        np.testing.assert_array_equal(results[i], local.generate(seeds=seeds))


def test_encode_and_conditional_match_local_onnx(client: DDNClient, local: OnnxModel, repository: Path) -> None:
    images = local.generate(seeds=range(10))
    encoder = ort.InferenceSession(str(repository / f"{NAME}_encode" / "1" / "model.onnx"))
    np.testing.assert_array_equal(client.encode(images), encoder.run(["codes"], {"images": images})[0])

    mask = np.zeros((10, 8, 8, 1), np.uint8)
    mask[:, :4] = 1  # top half known
    served = client.conditional("inpaint", image=images, mask=mask)
    inpaint = ort.InferenceSession(str(repository / f"{NAME}_inpaint" / "1" / "model.onnx"))
    want = dict(zip(["images", "codes"], inpaint.run(["images", "codes"], {"image": images, "mask": mask})))
    assert sorted(served) == ["codes", "images"]
    for name in want:
        np.testing.assert_array_equal(served[name], want[name])

    with pytest.raises(ServingError, match="'images' must be uint8, got float32"):
        client.encode(images.astype(np.float32))
    with pytest.raises(ServingError, match="inpaint takes inputs image, mask; got image"):
        client.conditional("inpaint", image=images)


def test_ddn_generate_onnx_and_server_write_identical_pngs_and_resume(
        server: TritonServer, repository: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--n", "21", "--seed", "40", "--no-progress"]
    onnx_file = repository / NAME / "1" / "model.onnx"
    local_run = runner.invoke(generate_main, [*common, "--onnx", str(onnx_file), "--out", str(tmp_path / "local"),
                                              "--codes", str(tmp_path / "codes.npz"),
                                              "--grid", str(tmp_path / "grid.png")])
    assert local_run.exit_code == 0, local_run.output
    served_args = [*common, "--url", server.grpc_url, "--model", NAME, "--out", str(tmp_path / "served"),
                   "--batch", "3", "--concurrency", "2"]
    served_run = runner.invoke(generate_main, served_args)
    assert served_run.exit_code == 0, served_run.output

    names = [f"{seed:06d}.png" for seed in range(40, 61)]
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == names
    for name in names:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "served" / name).read_bytes(), name
    saved = np.load(tmp_path / "codes.npz")
    np.testing.assert_array_equal(saved["seeds"], np.arange(40, 61))
    np.testing.assert_array_equal(saved["codes"], codes_from_seed(range(40, 61), 8, 8))
    assert (tmp_path / "grid.png").is_file()

    # Rerun: every file is already there, nothing is rewritten; a deleted one comes back identical.
    stamps = {name: (tmp_path / "served" / name).stat().st_mtime_ns for name in names}
    rerun = runner.invoke(generate_main, served_args)
    assert rerun.exit_code == 0 and "0 written, 21 already there" in rerun.output
    assert stamps == {name: (tmp_path / "served" / name).stat().st_mtime_ns for name in names}
    (tmp_path / "served" / names[5]).unlink()
    rerun = runner.invoke(generate_main, served_args)
    assert "1 written, 20 already there" in rerun.output
    assert (tmp_path / "served" / names[5]).read_bytes() == (tmp_path / "local" / names[5]).read_bytes()


def test_ddn_generate_explains_a_missing_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(generate_main, ["--n", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "give exactly one source" in result.output
    url = f"127.0.0.1:{_free_ports('127.0.0.1', 1)[0]}"
    result = CliRunner().invoke(generate_main, ["--n", "2", "--out", str(tmp_path), "--url", url, "--model", NAME])
    assert result.exit_code == 1 and f"cannot reach the Triton server at {url}" in result.output


def test_ddn_generate_refuses_an_encoding_entry_as_the_local_path_does(server: TritonServer, repository: Path,
                                                                       tmp_path: Path) -> None:
    """The same message on both paths, before any progress bar (progress stays on) or output folder."""
    reason = (f"is the 'encode' graph, not a generation graph; ddn-generate generates from a model's generation "
              f"entry: --model {NAME}")
    served = one_line_error(CliRunner().invoke(generate_main, ["--url", server.grpc_url, "--model", f"{NAME}_encode",
                                                               "--out", str(tmp_path / "out")]))
    assert served == f"Error: model '{NAME}_encode' on {server.grpc_url} {reason}"
    local = one_line_error(CliRunner().invoke(generate_main, ["--repository", str(repository), "--model",
                                                              f"{NAME}_encode", "--out", str(tmp_path / "out")]))
    assert local.endswith(reason)
    assert not (tmp_path / "out").exists()


def test_ddn_generate_at_an_http_port_names_the_grpc_port(server: TritonServer, tmp_path: Path) -> None:
    url = f"127.0.0.1:{server.metrics_port}"  # the server's HTTP gateway (/metrics)
    line = one_line_error(CliRunner().invoke(generate_main, ["--url", url, "--model", NAME, "--out",
                                                             str(tmp_path / "out"), "--connect-timeout", "10"]))
    assert line.startswith(f"Error: cannot reach the Triton server at {url} (gRPC): ")
    assert line.endswith(f"; {url} answers HTTP, not gRPC: give the server's gRPC port (8001 by default)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("given, target", [("127.0.0.1", "127.0.0.1:8001"), ("grpc://triton", "triton:8001"),
                                           ("[::1]", "[::1]:8001"), ("[::1]:9001", "[::1]:9001"),
                                           ("host:8005", "host:8005"), ("dns:///pods:8001", "dns:///pods:8001")])
def test_an_endpoint_without_a_port_gets_tritons_grpc_port(given: str, target: str) -> None:
    """gRPC would take a bare host as port 443."""
    assert parse_urls(given) == (target,)
