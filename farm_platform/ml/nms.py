"""Non-maximum suppression of raw per-anchor detector predictions, by onnxruntime's
`NonMaxSuppression` (the ONNX standard operator), not a hand-written loop.

torchvision.ops.nms would be the other field choice, but no torchvision build loads beside
this project's CPU torch 2.13.0 (PyPI's torchvision 0.28.0 is built against CUDA torch and
fails on import: "operator torchvision::nms does not exist"); onnxruntime is a dependency
already, for ONNX models. This is the one place to change if torchvision comes.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# The operator's semantics since opset 11; the IR version onnxruntime has long read.
_OPSET = 11
_IR_VERSION = 7


@functools.cache
def _session() -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", "a", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 1, "a"]),
        helper.make_tensor_value_info("max_per_image", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("iou_threshold", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("score_threshold", TensorProto.FLOAT, [1]),
    ]
    node = helper.make_node("NonMaxSuppression", [i.name for i in inputs], ["selected"])
    selected = helper.make_tensor_value_info("selected", TensorProto.INT64, ["s", 3])
    graph = helper.make_graph([node], "leaf_nms", inputs, [selected])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """boxes (N, A, 4) x0, y0, x1, y1 and scores (N, A) -> per image the kept boxes (k, 4)
    and scores (k,), best first: scores above `score_threshold`, no two kept boxes
    overlapping by more than `iou_threshold` IoU, at most `max_detections`."""
    n = boxes.shape[0]
    if boxes.shape[1] == 0:
        return [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in range(n)]
    selected = _session().run(
        None,
        {
            "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
            "scores": np.ascontiguousarray(scores[:, None, :], dtype=np.float32),
            "max_per_image": np.array([max_detections], dtype=np.int64),
            "iou_threshold": np.array([iou_threshold], dtype=np.float32),
            "score_threshold": np.array([score_threshold], dtype=np.float32),
        },
    )[0]
    results = []
    for i in range(n):
        kept = selected[selected[:, 0] == i, 2]
        kept = kept[np.argsort(-scores[i, kept], kind="stable")][:max_detections]
        results.append((boxes[i, kept].astype(np.float32), scores[i, kept].astype(np.float32)))
    return results
