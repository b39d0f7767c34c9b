"""static_reshapes: shape bookkeeping on the dynamic batch replaced by constants, results unchanged."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ddn.export.onnx_export import operator_counts, static_reshapes
from ddn.repository_contract import onnxruntime_session


def group_norm_like_graph() -> onnx.ModelProto:
    """x [B, 4, 2, 2] -> Reshape [B, 2, -1] -> Neg -> Reshape to Shape(x) -> Reshape to [-1, 4, 2, 2] (a no-op)."""
    nodes = [
        helper.make_node("Reshape", ["x", "groups"], ["grouped"]),
        helper.make_node("Neg", ["grouped"], ["negated"]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Reshape", ["negated", "x_shape"], ["back"]),
        helper.make_node("Reshape", ["back", "same"], ["same_shape"]),
        helper.make_node("Relu", ["same_shape"], ["y"]),
    ]
    dims = ["batch", 4, 2, 2]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializer=[numpy_helper.from_array(np.array([0, 2, -1], np.int64), "groups"),
                     numpy_helper.from_array(np.array([-1, 4, 2, 2], np.int64), "same")],
        value_info=[helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in
                    (("grouped", ["batch", 2, 8]), ("negated", ["batch", 2, 8]), ("back", dims))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_reshape_to_a_shape_node_becomes_a_constant_and_no_op_reshapes_go():
    model = group_norm_like_graph()
    x = np.random.default_rng(0).standard_normal((3, 4, 2, 2)).astype(np.float32)
    before = onnxruntime_session(model.SerializeToString()).run(None, {"x": x})[0]
    static_reshapes(model)
    onnx.checker.check_model(model, full_check=True)
    assert operator_counts(model) == {"Reshape": 2, "Neg": 1, "Relu": 1}
    back = next(n for n in model.graph.node if n.output[0] == "back")
    constant = next(t for t in model.graph.initializer if t.name == back.input[1])
    assert numpy_helper.to_array(constant).tolist() == [-1, 4, 2, 2]
    assert {t.name for t in model.graph.initializer} == {"groups", back.input[1]}  # the unused "same" is gone
    for batch in (1, 3):
        after = onnxruntime_session(model.SerializeToString()).run(None, {"x": x[:batch]})[0]
        np.testing.assert_array_equal(after, before[:batch])


def test_shapes_with_another_dynamic_axis_are_left_alone():
    model = group_norm_like_graph()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    static_reshapes(model)
    assert operator_counts(model)["Shape"] == 1
