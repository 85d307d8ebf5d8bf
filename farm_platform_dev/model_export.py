"""A torch module as a file in a foreign format, for model folders that test and show the
exported-model path (models/foreign_family.py, the model-format tests)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def export_model(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    fmt: str,
    outputs: list[str] | None = None,
    static: bool = False,
    **onnx: Any,
) -> Path:
    """`module` traced on `example` into TorchScript (`fmt` "torchscript") or exported to ONNX
    (otherwise: input `images`, `outputs` (default ["output"]), the batch dimension dynamic
    unless `static`, `onnx` passed on to torch.onnx.export), written at `path`."""
    import torch

    outputs = outputs or ["output"]
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter and torch.jit are deprecated
        if fmt == "torchscript":
            torch.jit.trace(module, example, check_trace=False).save(str(path))
        else:
            axes = {} if static else {name: {0: "batch"} for name in ["images", *outputs]}
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=outputs,
                dynamic_axes=axes,
                **onnx,
            )
    return path
