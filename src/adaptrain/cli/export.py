"""``adaptrain export RUN --format state_dict|torchscript|onnx --out FILE``.

Writes the run's ``best`` (or ``--checkpoint last``) model with its normalisation inside (the
file takes [0, 1] images; :mod:`adaptrain.export`), then reloads the file as its consumer
would and prints max |delta logit| against the run's model on the first ``--check-n`` test
images; a difference above :data:`TOLERANCE` is an error (exit code 1, the file is removed).
Flags are checked before anything is read; an existing ``--out`` is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TrainingError
from .args import choice, integer

CHECKPOINTS = ("best", "last")
TOLERANCE = 1e-4  # logits; float32 rounding of a reordered graph stays orders of magnitude below


def _out(args: argparse.Namespace) -> Path:
    from ..export import check_destination

    if args.out is None or not str(args.out).strip():
        raise ConfigError("--out", "give the file to write, e.g. --out model.onnx")
    out = Path(args.out)
    check_destination(args.format, out)
    if out.is_dir():
        raise ConfigError("--out", f"{out} is a directory; give a file in it")
    if out.exists() and not args.force:
        raise ConfigError("--out", f"{out} exists; choose another file or pass --force to replace it")
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import export as export_mod
    from ..models import build_model
    from ..runs import examples, load_model
    from .eval import check_writable

    choice(args.format, "--format", export_mod.FORMATS)
    choice(args.checkpoint, "--checkpoint", CHECKPOINTS)
    n = integer(args.check_n, "--check-n", 1, 100_000)
    out = _out(args)
    check_writable(out)
    try:
        model, cfg, arrays, _ = load_model(args.run, args.checkpoint, None, "cpu")
    except ConfigError as exc:
        if exc.field != "--config":
            raise
        raise ConfigError("adaptrain export", f"{args.run} is not a run directory (no config.yaml "
                          "in it or two levels up)") from None
    x, _ = examples(cfg, arrays, "test", n, say=None)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    export_mod.export(model, args.format, out, x[:2])
    diff = export_mod.max_logit_diff(model, args.format, out, x,
                                     rebuild=lambda: build_model(cfg.model, arrays.spec))
    what = f"{args.run} ({args.checkpoint}) as {args.format} to {out}"
    if diff is None:
        print(f"exported {what}; not checked: onnxruntime is not installed (pip install onnxruntime)")
        return 0
    if diff > TOLERANCE:
        out.unlink(missing_ok=True)
        raise TrainingError("--format", f"the exported {args.format} model's logits differ from the "
                            f"run's by up to {diff:.3g} (> {TOLERANCE:g}) on {x.shape[0]} test "
                            "images; nothing written")
    print(f"exported {what}; max |delta logit| against the run on {x.shape[0]} test images: {diff:.3g}")
    return 0


def add_parser(sub: Any) -> None:
    e = sub.add_parser("export", help="write a run's model as a state dict, TorchScript or ONNX file")
    e.set_defaults(fn=run)
    e.add_argument("run", help="run directory (or a checkpoint directory inside one)")
    e.add_argument("--format", required=True, metavar="{state_dict,torchscript,onnx}",
                   help="state_dict (.safetensors or .pt), torchscript (.pt), onnx (.onnx)")
    e.add_argument("--out", default=None, help="the file to write")
    e.add_argument("--checkpoint", default="best", metavar="{best,last}")
    e.add_argument("--check-n", default=64, help="test images the round-trip check compares (default 64)")
    e.add_argument("--force", action="store_true", help="replace an existing --out")
