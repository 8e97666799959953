"""Checkpoints that never execute code on load.

A checkpoint is a directory with ``model.safetensors`` (weights and buffers), with
``ema.safetensors`` (the moving average of the weights, :mod:`.ema`) when the run keeps one, and
``state.pt`` (optimiser, strategy, objective, RNG states, history) loaded with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers: a
pickle payload that would construct arbitrary objects is refused. Writes are atomic: the
directory is written under a temporary name and swapped in with renames, so a crash leaves
either the old or the new checkpoint, never a mixture; ``state.pt`` is written last, so a
directory holding it is complete (:func:`is_complete`). :mod:`.recovery` picks up a
checkpoint stranded by a crash between the renames.
"""

from __future__ import annotations

import io
import pickle
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from . import fileio
from .errors import CheckpointError

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
WEIGHTS = ("ema", "raw")  # which weights of a checkpoint: the moving average or the trained ones


def save(directory: Path, model: nn.Module, state: dict[str, Any] | None = None, *,
         ema: dict[str, torch.Tensor] | None = None) -> None:
    """Atomically write ``directory`` (replacing an existing checkpoint there); ``ema``: the
    averaged weights' state dict, written next to the model's."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write_weights(tmp / MODEL_FILE, model.state_dict())
        if ema is not None:
            write_weights(tmp / EMA_FILE, ema)
        if state is not None:
            write_state(tmp, state)
        swap_in(tmp, directory)
    except BaseException:
        fileio.remove_tree(tmp)
        raise


def write_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    fileio.write_file(path, safetensors_bytes(tensors, metadata={"format": "adaptrain"}))


def write_state(directory: Path, state: dict[str, Any]) -> None:
    """``state.pt`` of a checkpoint directory (tensors and plain containers only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    fileio.write_file(Path(directory) / STATE_FILE, buf.getvalue())


def swap_in(new: Path, directory: Path) -> None:
    """Make the complete checkpoint ``new`` the one at ``directory``: the old one is renamed
    aside, ``new`` renamed into place, then the old one deleted."""
    old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
    if directory.exists():
        fileio.replace(directory, old)
    fileio.replace(new, directory)
    fileio.remove_tree(old)


def is_complete(directory: Path) -> bool:
    """Weights and training state both present (``state.pt`` is always written last)."""
    return (Path(directory) / MODEL_FILE).is_file() and (Path(directory) / STATE_FILE).is_file()


def resolve(path: str | Path, which: str = "best") -> Path:
    """A run directory, a checkpoint directory, or a weights file -> the file/dir to load."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        p = p / "checkpoints" / which
        if not p.is_dir():
            raise CheckpointError("checkpoint", f"{path} has no {which!r} checkpoint yet")
    if not p.exists():
        raise CheckpointError("checkpoint", f"{path} does not exist")
    return p


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a checkpoint dir, a ``.safetensors`` file, or a plain tensor-only ``.pt``."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CheckpointError("checkpoint", f"{p} does not exist")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError("checkpoint", f"{p} is not a valid safetensors file ({exc})") from None
    state = safe_torch_load(p)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("checkpoint", f"{p} holds no state dict of tensors")
    return state


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers; refuses pickled code."""
    try:
        with warnings.catch_warnings():  # torch warns of old pickle protocols: noise on our one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text is about its weights_only default and suggests turning the
        # protection off; say instead what the file holds and how to make it loadable
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (e.g. {found.group(1)})" if found else ""
        raise CheckpointError(
            "checkpoint",
            f"refusing to load {path}: it contains pickled Python objects{what}, which adaptrain "
            "never executes; re-save the weights as safetensors or as a plain state dict of "
            "tensors (torch.save(model.state_dict(), path))",
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError("checkpoint", f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def load_state(directory: Path) -> dict[str, Any]:
    p = Path(directory) / STATE_FILE
    if not p.is_file():
        raise CheckpointError("checkpoint", f"{p} does not exist (not a resumable checkpoint)")
    state = safe_torch_load(p)
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint", f"{p} is not an adaptrain training state")
    return state


def load_into(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load weights into ``model``; mismatched keys or shapes give a one-line error."""
    weights = load_weights(path)
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    bad = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if strict and (missing or unexpected or bad):
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape mismatch at {bad[:3]}")
        raise CheckpointError("checkpoint", f"{path} does not fit this model ({what}); "
                              "check model.name / model.width / data.name")
    model.load_state_dict(weights, strict=strict)
