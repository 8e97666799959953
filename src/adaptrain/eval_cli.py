"""``adaptrain eval``: load a model from a run / checkpoint and write an evaluation JSON."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .config import Config, build_config, load_config_file, parse_eval_attack
from .errors import ConfigError
from .registry import parse_number


def locate(target: str, which: str, config: str | None) -> tuple[Path, Config, Path | None]:
    """-> (weights path, config, run directory or None)."""
    p = Path(target)
    run_dir = None
    if (p / "config.yaml").is_file():
        run_dir = p
    elif p.is_dir() and (p.parent.parent / "config.yaml").is_file():
        run_dir = p.parent.parent
    if config is not None:
        cfg = build_config(config)
    elif run_dir is not None:
        cfg = load_config_file(run_dir / "config.yaml")
    else:
        raise ConfigError("--config", f"{target} is not inside a run directory; give the preset "
                          "or YAML it was trained with (--config NAME_OR_YAML)")
    return checkpoint.resolve(p, which), cfg, run_dir


def load_model(target: str, which: str = "best", config: str | None = None,
               device: str = "auto") -> tuple[torch.nn.Module, Config, Any, Path | None]:
    from .data import load_arrays
    from .models import build_model
    from .train import resolve_device

    weights, cfg, run_dir = locate(target, which, config)
    arrays = load_arrays(cfg.data.name, cfg.data.root, cfg.data.download)
    dev = resolve_device(device)
    model = build_model(cfg.model, arrays.spec).to(dev)
    checkpoint.load_into(model, weights)
    model.eval()
    return model, cfg, arrays, run_dir


def run_eval(args: argparse.Namespace) -> int:
    from .data import make_splits
    from .evaluate import evaluate_attacks
    from .train import versions

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for a in attacks:
        parse_eval_attack(a, "--attacks")
    if args.n < 1:
        raise ConfigError("--n", f"must be >= 1, got {args.n}")
    model, cfg, arrays, run_dir = load_model(args.target, args.checkpoint, args.config, args.device)
    eps = float(parse_number(args.eps)) if args.eps is not None else cfg.eval.eps
    step = float(parse_number(args.step_size)) if args.step_size is not None else cfg.eval.step_size
    if eps < 0:
        raise ConfigError("--eps", f"must be >= 0, got {eps}")
    norm = args.norm or cfg.attack.get("norm", "linf")
    if args.split == "test":
        x, y = arrays.x_test, arrays.y_test
    else:
        sp = make_splits(arrays, subset=None, val_size=cfg.data.val_size,
                         split_seed=cfg.data.split_seed)
        x, y = sp.x_val, sp.y_val
    x, y = x[: args.n], y[: args.n]
    t0 = time.perf_counter()
    res = evaluate_attacks(model, x, y, attacks, eps=eps, step_size=step, norm=norm,
                           batch_size=args.batch_size, seed=args.seed)
    out = {
        "n_examples": int(y.shape[0]), "eps": eps, "norm": norm, "step_size": step,
        "accuracy": {k: v.float().mean().item() for k, v in res.items()},
        "provenance": {**versions(), "target": str(args.target), "checkpoint": args.checkpoint,
                       "data": cfg.data.name, "split": args.split, "seed": args.seed,
                       "attacks": attacks, "wall_time_s": round(time.perf_counter() - t0, 3)},
    }
    dest = Path(args.out) if args.out else (
        (run_dir / "eval" / f"{args.checkpoint}.json") if run_dir else
        Path(str(args.target).rstrip("/") + ".eval.json"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print("| attack | accuracy |\n|---|---|")
    for k, v in out["accuracy"].items():
        print(f"| {k} | {v:.4f} |")
    print(f"written to {dest}")
    return 0
