"""The exported sampled-path graph (codes -> images) computes what the PyTorch generator computes."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ddn.export.graphs import GenerateGraph
from ddn.export.onnx_export import EXPORT_BATCH, export_onnx, operator_counts, verify_onnx
from ddn.repository_contract import onnxruntime_session
from ddn.images import to_uint8
from ddn.training.networks import RecurrenceGenerator, SingleShotGenerator

GENERATORS = {
    "single_shot": lambda: SingleShotGenerator(image_size=8, image_channels=1, channels=16, k=8),
    "recurrence": lambda: RecurrenceGenerator(image_size=8, image_channels=3, base=8, iterations=4, k=8),
}


@pytest.fixture(scope="module", params=sorted(GENERATORS))
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = GENERATORS[request.param]().eval()
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_onnx(GenerateGraph(model), path, max_batch=64)
    return model, path, onnxruntime_session(path)


def run(session, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, images_float = session.run(["images", "images_float"], {"codes": codes.astype(np.int32)})
    return images, images_float


def reference(model, codes: np.ndarray) -> np.ndarray:
    """PyTorch decode as float [B, H, W, C] clamped into [-1, 1]."""
    return model.decode(codes).clamp(-1, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("batch", [1, 3, 64])  # export traced batch 2; none of these
def test_onnx_equals_pytorch_at_any_batch_size(exported, batch):
    model, _, session = exported
    assert batch != EXPORT_BATCH
    codes = np.random.default_rng(batch).integers(0, 8, (batch, model.num_layers))
    images, images_float = run(session, codes)
    want = reference(model, codes)
    assert images.dtype == np.uint8 and images.shape == (batch, 8, 8, model.image_channels)
    assert images_float.dtype == np.float32 and images_float.shape == images.shape
    np.testing.assert_allclose(images_float, want, rtol=0, atol=1e-5)
    assert np.abs(images.astype(int) - to_uint8(want).astype(int)).max() <= 1


def test_out_of_range_codes_raise_in_python_and_are_clamped_in_the_graph(exported):
    model, _, session = exported
    codes = np.random.default_rng(0).integers(0, 8, (4, model.num_layers))
    codes[0, 0], codes[1, -1], codes[2, 1], codes[3, 2] = 8, -1, 1000, -(2 ** 31)
    for bad in (codes[:1], codes[1:2]):
        with pytest.raises(ValueError, match="out of range"):
            model.decode(bad)
    _, images_float = run(session, codes)
    np.testing.assert_allclose(images_float, reference(model, np.clip(codes, 0, 7)), rtol=0, atol=1e-5)


def block_conv_calls(model) -> int:
    """How many Conv2d calls the blocks make in one walk (the DDLs make none on the sampled path)."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model.decode(torch.zeros(1, model.num_layers, dtype=torch.long))
    finally:
        for hook in hooks:
            hook.remove()
    return len(calls)


def test_graph_computes_only_the_chosen_candidate(exported):
    """No K-wide candidate conv: the convs are the blocks', each DDL is two gathered-row matmuls."""
    model, path, _ = exported
    graph = onnx.load(str(path)).graph
    ops = operator_counts(onnx.load(str(path)))
    layers = model.num_layers
    assert ops["Conv"] == block_conv_calls(model)
    # One product per layer applies the chosen rows to the image half and the leak half at once.
    assert ops["MatMul"] == layers
    assert ops["Gather"] == 2 * layers and "GatherND" not in ops  # per layer: its codes column, the chosen rows
    # No shape arithmetic on the dynamic batch: only the starting state reads the batch size.
    assert ops.get("Shape", 0) <= 1
    weights = {init.name: init for init in graph.initializer}
    k_rows = {ddl.k * model.image_channels for ddl in model.ddls()}
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if weight is not None:  # no 1x1 conv with K * C_img outputs: no layer computes every candidate
            assert not (list(weight.dims[2:]) == [1, 1] and weight.dims[0] in k_rows)
    assert {i.name: i.type.tensor_type.elem_type for i in graph.input} == {"codes": onnx.TensorProto.INT32}
    outputs = {o.name: o.type.tensor_type for o in graph.output}
    assert outputs["images"].elem_type == onnx.TensorProto.UINT8
    assert outputs["images_float"].elem_type == onnx.TensorProto.FLOAT
    assert outputs["images"].shape.dim[0].dim_param  # dynamic batch axis


def test_each_group_norm_scales_and_shifts_in_one_batch_normalization(tmp_path):
    """Trained scales and shifts (not the initial ones and zeros) come out of the graph as out of PyTorch."""
    torch.manual_seed(0)
    model = GENERATORS["single_shot"]().eval()
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    path = tmp_path / "model.onnx"
    export_onnx(GenerateGraph(model), path, max_batch=8)
    ops = operator_counts(onnx.load(str(path)))
    assert ops["BatchNormalization"] == ops["InstanceNormalization"] == len(norms)
    codes = np.random.default_rng(0).integers(0, 8, (5, model.num_layers))
    _, images_float = run(onnxruntime_session(path), codes)
    np.testing.assert_allclose(images_float, reference(model, codes), rtol=0, atol=1e-5)


def test_verification_reports_checker_errors_and_operators(exported):
    model, path, _ = exported
    report = verify_onnx(GenerateGraph(model), path)
    assert report["checker"] == "ok" and report["batch_sizes"] == [1, 5]
    assert report["max_abs_error"]["images"] <= 1 and report["max_abs_error"]["images_float"] < 1e-4
    assert report["operators"]["MatMul"] == model.num_layers
