"""A trained model as a file other programs load: a state dict, TorchScript or ONNX.

Every format keeps the contract of adaptrain models: the exported model takes images in
[0, 1] of shape (B, C, H, W), float32, and returns logits (B, num_classes); the data set's
normalisation (the model's ``mean`` / ``std`` buffers) is inside it, so nothing else has to
travel with the file. The batch size is free in every format.

* ``state_dict``: the weights and buffers, as safetensors (``.safetensors``) or a torch file
  of tensors only (``.pt`` / ``.pth``, loadable with ``weights_only=True``); load them into the
  architecture (``adaptrain.models.build_model`` or ``adaptrain.load_run``). Exact.
* ``torchscript``: ``torch.jit.trace`` of the model in eval mode; ``torch.jit.load`` runs it
  without adaptrain.
* ``onnx``: ``torch.onnx.export`` (needs the ``onnx`` and ``onnxscript`` packages), input
  ``images``, output ``logits``, dynamic batch; checked with ``onnxruntime`` when installed.

Files are written atomically (a temporary name in the same folder, then a rename).
:func:`max_logit_diff` reloads a file as its consumer would and measures max |delta logit|.
"""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from . import checkpoint, fileio
from .errors import ConfigError

FORMATS = ("state_dict", "torchscript", "onnx")
SUFFIXES = {"state_dict": (".safetensors", ".pt", ".pth"), "torchscript": (".pt", ".pth", ".ts"),
            "onnx": (".onnx",)}
INPUT, OUTPUT = "images", "logits"  # the ONNX graph's names


def check_destination(fmt: str, out: Path) -> None:
    """The file name says the format's container; refuse a mismatch (one line naming --out)."""
    if out.suffix not in SUFFIXES[fmt]:
        raise ConfigError("--out", f"a {fmt} export is written to a {' / '.join(SUFFIXES[fmt])} "
                          f"file, got {out.name!r}")


def export(model: nn.Module, fmt: str, out: Path, example: torch.Tensor) -> None:
    """Write ``model`` (eval mode, on the CPU) to ``out`` in ``fmt``; ``example`` is a batch of
    [0, 1] images the tracing exporters run once."""
    model = model.eval().cpu()
    example = example.detach().cpu().float()
    if fmt == "state_dict":
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if out.suffix == ".safetensors":
            data = safetensors_bytes(tensors, metadata={"format": "adaptrain"})
        else:
            buf = io.BytesIO()
            torch.save(tensors, buf)
            data = buf.getvalue()
        fileio.write_file(out, data)
    elif fmt == "torchscript":
        with torch.no_grad(), _jit_quietly():
            traced = torch.jit.trace(model, example)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
        fileio.write_file(out, buf.getvalue())
    elif fmt == "onnx":
        _export_onnx(model, out, example)
    else:
        raise ConfigError("--format", f"{fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")


def _export_onnx(model: nn.Module, out: Path, example: torch.Tensor) -> None:
    missing = [m for m in ("onnx", "onnxscript") if not _importable(m)]
    if missing:
        raise ConfigError("--format", f"onnx export needs {' and '.join(missing)}: "
                          "pip install onnx onnxscript")
    tmp = out.with_name(f".{out.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(model, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
        program.save(str(tmp))
        fileio.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _jit_quietly() -> Iterator[None]:
    """torch 2.14 marks torch.jit deprecated (FutureWarning on every call); the format is still
    what C++ / mobile consumers load, and choosing it is the user's explicit request."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def runner(fmt: str, path: Path, rebuild: Callable[[], nn.Module] | None = None
           ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The exported file loaded as its consumer would: [0, 1] images -> logits (CPU tensors).
    ``state_dict`` needs ``rebuild`` (a fresh architecture); ``onnx`` needs onnxruntime
    (None when it is not installed)."""
    if fmt == "state_dict":
        if rebuild is None:
            raise ValueError("a state_dict is loaded into an architecture: pass rebuild")
        model = rebuild()
        checkpoint.load_into(model, path)
        model.eval()
        return _no_grad(model)
    if fmt == "torchscript":
        with _jit_quietly():
            return _no_grad(torch.jit.load(str(path), map_location="cpu").eval())
    if not _importable("onnxruntime"):
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([OUTPUT], {INPUT: x.detach().cpu().float().numpy()})
        return torch.from_numpy(logits)

    return run


def _no_grad(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.float())
    return run


def max_logit_diff(model: nn.Module, fmt: str, path: Path, x: torch.Tensor,
                   rebuild: Callable[[], nn.Module] | None = None) -> float | None:
    """max |logit of the file - logit of ``model``| over the [0, 1] images ``x``, or None when
    the format's runtime is not installed (onnxruntime)."""
    run = runner(fmt, path, rebuild)
    if run is None:
        return None
    with torch.no_grad():
        want = model.eval().cpu()(x.float())
    return float((run(x) - want).abs().max())
