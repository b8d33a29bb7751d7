"""torch -> ONNX with either exporter, to one checked, self-contained file with a dynamic batch dimension.

torch 2.13's ``torch.onnx.export`` defaults to the dynamo exporter
(``dynamo=True``) and, on that path, to ``external_data=True`` (every tensor
over 256 bytes goes to a ``.onnx.data`` sidecar; with ``external_data=False``
it still does so above 1.5 GB).  The legacy TorchScript exporter
(``dynamo=False``) still works but warns that it is deprecated.  Both write
into a scratch folder here; the result is re-saved as one file (or one file +
one ``.data`` sidecar when asked), checked with ``onnx.checker`` and compared
with torch in onnxruntime on a batch of a different size than the example.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch

from hwloop.errors import HwloopError

INPUT, OUTPUT, BATCH = "input", "output", "batch"

#: the most a single ONNX protobuf can hold (larger models need external data)
PROTOBUF_LIMIT = 2**31 - 1

# Warnings torch raises about its own internals on these paths (nothing the caller can act on):
_TORCH_INTERNAL_WARNINGS = (
    "You are using the legacy TorchScript-based ONNX export",  # dynamo=False is what the caller asked for
    "The feature will be removed. Please remove usage of this function",  # legacy exporter's own helpers
    "`isinstance(treespec, LeafSpec)` is deprecated",  # torch.export's pytree internals
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the known torch-internal warnings and the 'torchvision is not installed' log lines."""
    reg_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg_log.level
    reg_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for msg in _TORCH_INTERNAL_WARNINGS:
                warnings.filterwarnings("ignore", message=".*" + re.escape(msg))
            yield
    finally:
        reg_log.setLevel(level)


def export_torch(model: torch.nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
                 dynamo: bool = False, opset: int | None = None, external_data: bool = False,
                 optimize: bool = True, atol: float = 1e-4, seed: int = 0) -> Path:
    """Export ``model`` (put in eval mode) to ``path`` and verify it; returns the path.

    ``optimize=False`` keeps the graph as traced: the legacy exporter's constant
    folding and the dynamo exporter's optimiser both fold an eval-mode
    BatchNorm into the preceding Conv, which hides it from the importer.
    ``seed`` draws the verification batch.  Raises ``HwloopError`` when the
    exported file disagrees with torch by more than ``atol``.
    """
    path = Path(path)
    model.eval()
    example_input = example_input.detach()
    if example_input.shape[0] < 2:
        # torch.export specialises a batch of 1 to a constant; keep dim 0 symbolic.
        example_input = torch.cat([example_input, example_input])
    with tempfile.TemporaryDirectory(prefix="hwloop-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with _quiet(), torch.no_grad():
            if dynamo:
                torch.onnx.export(model, (example_input,), raw, dynamo=True, opset_version=opset,
                                  input_names=[INPUT], output_names=[OUTPUT], optimize=optimize,
                                  dynamic_shapes=({0: torch.export.Dim(BATCH, min=1)},),
                                  external_data=True, verbose=False)
            else:
                torch.onnx.export(model, (example_input,), raw, dynamo=False, opset_version=opset,
                                  input_names=[INPUT], output_names=[OUTPUT],
                                  dynamic_axes={INPUT: {0: BATCH}, OUTPUT: {0: BATCH}},
                                  do_constant_folding=optimize)
        proto = onnx.load(raw)  # pulls any external data into memory
        with staged(path) as scratch:
            save_onnx(proto, scratch, external_data=external_data)
            check_torch_export(model, scratch, example_input, atol=atol, seed=seed, name=str(path))
    return path


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch file named like ``path``; moved onto ``path`` (with its ``.data`` sidecar) only if the block succeeds.

    So a failed export or verification leaves nothing half-written, and a
    stale sidecar from an earlier export to ``path`` is removed.
    """
    path = Path(path)
    if path.is_dir():
        raise HwloopError(f"{path}: is a folder; expected the path of an .onnx file")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the scratch folder sits beside the target, so moving the file in is one atomic rename (a kill
    # leaves the old file or the new one, never a partial copy from another file system)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".partial", dir=path.parent) as tmp:
        scratch = Path(tmp) / path.name
        yield scratch
        for src, dst in ((scratch.with_name(path.name + ".data"), path.with_name(path.name + ".data")),
                         (scratch, path)):
            if src.exists():
                os.replace(src, dst)
            elif dst.exists():
                dst.unlink()


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool = False) -> Path:
    """Write ``proto`` as one file, or with all tensors in one ``<name>.data`` sidecar when asked.

    The sidecar's location is recorded relative to ``path``, so the pair can be moved together.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".data")
    if not external_data and proto.ByteSize() > PROTOBUF_LIMIT:
        raise HwloopError(f"{path.name}: model is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB "
                          "single-file limit; export with external_data=True")
    if external_data:
        onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=sidecar.name, size_threshold=0)
    else:
        onnx.save(proto, path)
    return path


def check_torch_export(model: torch.nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
                       atol: float = 1e-4, seed: int = 0, name: str | None = None) -> float:
    """onnx.checker, a symbolic batch dimension, and onnxruntime vs torch on a fresh batch; returns max |diff|.

    ``name`` is the file named in error messages (default: ``path``).
    """
    import onnxruntime as ort

    path = Path(path)
    name = name or str(path)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(path, load_external_data=False)
    for io in (proto.graph.input[0], proto.graph.output[0]):
        dim0 = io.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            raise HwloopError(f"{name}: {io.name!r} has a fixed batch dimension {dim0.dim_value}, expected a symbolic one")
    # A batch size unlike the example's shows that the batch dimension is really dynamic.
    gen = torch.Generator().manual_seed(seed)
    batch = example_input.shape[0] + 3
    x = torch.rand((batch, *example_input.shape[1:]), generator=gen, dtype=example_input.dtype)
    with torch.no_grad():
        want = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != want.shape:
        raise HwloopError(f"{name}: onnxruntime gives shape {got.shape}, torch {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= atol:
        raise HwloopError(f"{name}: onnxruntime and torch differ by {diff:.3g} (> {atol:g})")
    return diff
