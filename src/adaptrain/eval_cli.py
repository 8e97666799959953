"""``adaptrain eval``: load a model from a run / checkpoint, evaluate it, write JSON + markdown.

Writes ``RUN/eval/<checkpoint>.json`` (or ``--out``), a markdown table next to it, the
eps-curve plot when a curve was asked for, and while running a ``.state.json`` from which an
interrupted evaluation resumes (delete it, or pass ``--fresh``, to start over).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .config import Config, build_config, load_config_file
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
    from .rundir import resolve_device

    weights, cfg, run_dir = locate(target, which, config)
    arrays = load_arrays(cfg.data.name, cfg.data.root, cfg.data.download)
    dev = resolve_device(device)
    model = build_model(cfg.model, arrays.spec).to(dev)
    checkpoint.load_into(model, weights)
    model.eval()
    return model, cfg, arrays, run_dir


SAAT_CURVE = "0,2/255,4/255,8/255,12/255,16/255"


def _budgets(text: str | None, where: str) -> list[float]:
    if not text:
        return []
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            v = float(parse_number(item.strip()))
        except ValueError:
            raise ConfigError(where, f"cannot parse {item!r}; write e.g. 0,2/255,4/255,8/255") from None
        if v < 0:
            raise ConfigError(where, f"budgets must be >= 0, got {item!r}")
        out.append(v)
    return out


def settings_from_args(args: argparse.Namespace, cfg: Config | None = None):
    """EvalSettings from the command line; ``cfg`` (the run's config) supplies the defaults of
    eps, step and norm. Called once without it to refuse bad arguments before any loading."""
    from .evaluate import EvalSettings, parse_list, parse_spec, parse_step

    aa_attacks = tuple(a.strip() for a in args.aa_attacks.split(",")) if args.aa_attacks else None
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    parse_list(attacks, aa_version=args.aa_version, aa_attacks=aa_attacks)  # fail early
    if args.n < 1:
        raise ConfigError("--n", f"must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"must be >= 1, got {args.batch_size}")
    cfg = cfg or Config()
    eps = float(parse_number(args.eps)) if args.eps is not None else cfg.eval.eps
    if eps < 0:
        raise ConfigError("--eps", f"must be >= 0, got {eps}")
    step = args.step_size if args.step_size is not None else cfg.eval.step_size
    parse_step(step)
    curve_arg = args.eps_curve
    if curve_arg is None and cfg.strategy.get("name") == "saat":
        curve_arg = SAAT_CURVE  # SAAT runs report robustness disparity by default
    curve = _budgets(curve_arg, "--eps-curve")
    if curve:
        parse_spec(args.curve_attack, "--curve-attack", aa_version=args.aa_version,
                   aa_attacks=aa_attacks)
        parse_step(args.curve_step, "--curve-step")
    corruptions: list[str] = []
    if args.corruptions:
        from .corruptions import CORRUPTIONS, GROUPS

        for item in args.corruptions.split(","):
            item = item.strip()
            if item in ("all", "common"):
                corruptions += list(CORRUPTIONS)
            elif item in GROUPS:
                corruptions += list(GROUPS[item])
            elif item in CORRUPTIONS:
                corruptions.append(item)
            elif item:
                raise ConfigError("--corruptions", f"unknown {item!r}; allowed: all, "
                                  f"{', '.join(GROUPS)}, {', '.join(CORRUPTIONS)}")
    try:
        severities = [int(s) for s in args.severities.split(",") if s.strip()]
    except ValueError:
        raise ConfigError("--severities", f"cannot parse {args.severities!r}; e.g. 1,2,3,4,5") from None
    if any(s < 0 or s > 5 for s in severities):
        raise ConfigError("--severities", f"must be in 0..5, got {args.severities}")
    norm = args.norm or cfg.attack.get("norm", "linf")
    return EvalSettings(attacks=attacks, eps=eps, step=step, norm=norm, seed=args.seed,
                        batch_size=args.batch_size, cascade=args.cascade,
                        aa_version=args.aa_version, aa_attacks=aa_attacks, curve=curve,
                        curve_attack=args.curve_attack, curve_step=args.curve_step,
                        corruptions=list(dict.fromkeys(corruptions)), severities=severities,
                        corruption_table=args.corruption_table, bf16=args.bf16)


def run_eval(args: argparse.Namespace) -> int:
    from .data import make_splits
    from .evaluate import checks as checks_mod
    from .evaluate import evaluate, plot_curves
    from .evaluate.aa import version as aa_version
    from .evaluate.results import json_ready, to_markdown
    from .rundir import versions

    settings_from_args(args)  # bad arguments stop here, before any loading
    model, cfg, arrays, run_dir = load_model(args.target, args.checkpoint, args.config, args.device)
    settings = settings_from_args(args, cfg)
    if args.split == "test":
        x, y = arrays.x_test, arrays.y_test
    else:
        sp = make_splits(arrays, subset=None, val_size=cfg.data.val_size,
                         split_seed=cfg.data.split_seed)
        x, y = sp.x_val, sp.y_val
    x, y = x[: args.n], y[: args.n]
    dest = Path(args.out) if args.out else (
        (run_dir / "eval" / f"{args.checkpoint}.json") if run_dir else
        Path(str(args.target).rstrip("/") + ".eval.json"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    state_path = dest.with_name(dest.stem + ".state.json")
    if args.fresh and state_path.exists():
        state_path.unlink()
    t0 = time.perf_counter()
    result = evaluate(model, x, y, settings, state_path=state_path,
                      progress=False if args.quiet else None, log=print)
    provenance = {
        **versions(), "autoattack": aa_version(), "target": str(args.target),
        "checkpoint": args.checkpoint, "data": cfg.data.name, "split": args.split,
        "seed": args.seed, "n": int(y.shape[0]), "eps": settings.eps, "norm": settings.norm,
        "attacks": settings.attacks, "aa_version": settings.aa_version,
        "aa_attacks": list(settings.aa_attacks) if settings.aa_attacks else None,
        "jobs_run": list(result["_state"].jobs), "batch_size": settings.batch_size,
        "device": str(next(model.parameters()).device), "bf16": settings.bf16,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    doc = json_ready(result, provenance)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(dest)
    md = to_markdown(doc)
    dest.with_suffix(".md").write_text(md)
    if doc.get("curve"):
        plot_curves({args.checkpoint: doc["curve"]}, dest.with_suffix(".curve.png"),
                    title=f"{doc['curve']['attack']} accuracy vs eps")
    result["_state"].remove()
    print(md, end="")
    checks_mod.report(doc["checks"])
    print(f"written to {dest}")
    return 0


def add_arguments(e: argparse.ArgumentParser) -> None:
    from .evaluate.specs import HELP

    e.add_argument("target", help="run directory, checkpoint directory or weights file")
    e.add_argument("--attacks", default="clean,pgd-20",
                   help=f"comma list ({HELP}); default clean,pgd-20")
    e.add_argument("--aa-version", default="standard", choices=["standard", "rand", "plus", "custom"],
                   help="AutoAttack version for 'aa' (custom: the --aa-attacks list)")
    e.add_argument("--aa-attacks", default=None,
                   help="custom AutoAttack subset, e.g. apgd-ce,apgd-t (with --aa-version custom)")
    e.add_argument("--n", type=int, default=1000, help="number of examples (first n of the split)")
    e.add_argument("--eps", default=None, help="budget, e.g. 8/255 (default: the run's eval.eps)")
    e.add_argument("--step-size", default=None,
                   help="attack step: absolute (2/255) or relative (eps/4); default: the run's")
    e.add_argument("--norm", default=None, choices=["linf", "l2"], help="threat model")
    e.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=True,
                   help="run each attack only on the survivors of the earlier ones (default); "
                   "--no-cascade runs every attack on every clean-correct example")
    e.add_argument("--eps-curve", default=None,
                   help="budgets for an accuracy-vs-eps curve, e.g. 0,2/255,4/255,8/255,12/255,16/255 "
                   "(default for SAAT runs: that list; '' for none)")
    e.add_argument("--curve-attack", default="pgd-20", help="attack for the curve (default pgd-20)")
    e.add_argument("--curve-step", default="eps/4", help="curve step: relative (eps/4) or absolute")
    e.add_argument("--corruptions", default=None,
                   help="all, a group (noise, blur, weather, digital) or names, comma separated")
    e.add_argument("--severities", default="1,2,3,4,5", help="corruption severities (0 = clean)")
    e.add_argument("--corruption-table", default="auto", choices=["auto", "cifar", "imagenet"],
                   help="corruption constants: CIFAR-10-C or ImageNet-C (auto: by image size)")
    e.add_argument("--bf16", action="store_true",
                   help="bf16 autocast for forward passes (faster on GPUs; risks gradient masking)")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"])
    e.add_argument("--config", default=None, help="config YAML for a bare checkpoint")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default="auto")
    e.add_argument("--fresh", action="store_true", help="ignore a saved partial evaluation")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--out", default=None, help="JSON file to write (default RUN/eval/<name>.json)")
