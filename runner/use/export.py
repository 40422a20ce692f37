"""A run's trained model in a form other programs load: safetensors, TorchScript or ONNX.

safetensors holds the network's weights with runner's metadata (model, options, input
shape, classes, mean, std): what `final/model.safetensors` holds, for any weights of
the run. TorchScript and ONNX hold the whole `use.trained.Classifier`, normalisation
included: float32 pixels (N, C, H, W) on the 0..255 scale in, any batch size, logits
out; the same metadata rides along (TorchScript: extra file `runner.json`; ONNX:
metadata_props).
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from typing import TYPE_CHECKING

from runner import strict_json
from runner.errors import UserError

if TYPE_CHECKING:
    import onnx
    import torch

    from runner.use.trained import Trained

ONNX_MODULES = ("onnx", "onnxscript")  # torch.onnx.export (the dynamo exporter) needs both


def export(trained: Trained, fmt: str, url: str) -> int:
    """Write `trained` to `url` (a path or URL) as `fmt`; returns the bytes written."""
    from runner import storage

    data = WRITERS[fmt](trained)
    storage.write_output(url, data)
    return len(data)


def to_safetensors(trained: Trained) -> bytes:
    from runner import safetensors_file

    return safetensors_file.dumps(trained.model.net.state_dict(), trained.metadata)


def to_torchscript(trained: Trained) -> bytes:
    from concurrent.futures import ThreadPoolExecutor

    # The archive's debug tables (code/*.debug_pkl) hold the Python call stack the trace ran
    # in, down to its first frame: traced on a thread of its own, that stack is the same
    # whoever calls this (the CLI, a test, a notebook), so the same model gives the same bytes.
    with warnings.catch_warnings(), ThreadPoolExecutor(1, thread_name_prefix="runner-trace") as pool:
        # torch >= 2.10 deprecates TorchScript for authors in favour of torch.export, but it is
        # what libtorch (C++) and many model servers load; the warning means nothing to a user here.
        warnings.simplefilter("ignore", FutureWarning)
        return pool.submit(_trace_and_save, trained).result()


def _trace_and_save(trained: Trained) -> bytes:
    import torch

    buffer = io.BytesIO()
    traced = torch.jit.trace(trained.model, _example(trained))
    # Sorted keys: the same metadata gives the same bytes, whatever order a file held it in.
    # (torch.jit.save is deterministic itself: fixed zip dates, records in a fixed order.)
    runner_json = strict_json.dumps(trained.metadata, sort_keys=True)
    torch.jit.save(traced, buffer, _extra_files={"runner.json": runner_json})
    return buffer.getvalue()


def to_onnx(trained: Trained) -> bytes:
    require(ONNX_MODULES)
    import onnx
    import torch

    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        trained.model,
        (_example(trained),),
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_shapes={"pixels": {0: batch}},
        dynamo=True,
        verbose=False,  # no progress lines on stdout
    )
    proto = program.model_proto  # a new proto on each access: keep this one
    onnx.helper.set_model_props(proto, dict(sorted(trained.metadata.items())))  # the same bytes for the same metadata
    _drop_stack_traces(proto)
    onnx.checker.check_model(proto, full_check=True)  # never hand over a model ONNX itself rejects
    return proto.SerializeToString()


STACK_TRACE = "pkg.torch.onnx.stack_trace"  # the exporter's note on each node of the Python lines it came from


def _drop_stack_traces(proto: onnx.ModelProto) -> None:
    """Remove each node's stack trace: it names the files of this installation (runner's, the
    user model's), so the same model exported from two checkouts would differ in its bytes."""
    nodes = [*proto.graph.node, *(n for f in proto.functions for n in f.node)]
    for node in nodes:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


WRITERS = {"safetensors": to_safetensors, "torchscript": to_torchscript, "onnx": to_onnx}
FORMATS = tuple(WRITERS)  # what `runner export --format` offers; importing this module loads no torch


def require(modules: tuple[str, ...]) -> None:
    """A one-line UserError naming the extra to install if any of `modules` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"--format onnx needs the packages {', '.join(missing)} (not installed): pip install 'runner[onnx]'"
        )


def _example(trained: Trained) -> torch.Tensor:
    import torch

    # Two mid-grey images: tracing needs an input; a batch of 2 keeps the batch dimension general.
    return torch.full((2, *trained.input_shape), 127.0)
