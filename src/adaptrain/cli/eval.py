"""``adaptrain eval``: load a model from a run / checkpoint, evaluate it, write JSON + markdown.

Writes ``RUN/eval/<checkpoint>.json`` (or ``--out``), a markdown table next to it, the
eps-curve plot when a curve was asked for, and while running a ``.state.json`` from which an
interrupted evaluation resumes (delete it, or pass ``--fresh``, to start over; ``--keep-state``
keeps it, with every job's per-example results, after the end).

The work is ordered so that a mistake costs seconds, not the evaluation: every flag is parsed
and range-checked first (one line ``error: --flag: ...``, exit code 2, nothing loaded or
written); then the config, the device, the checkpoint and the destination's folder are checked;
then the model (refused if it holds NaN / inf) and the data are loaded; only then is the
destination created and an exclusive lock taken on ``.<name>.lock`` next to it, held for the
whole evaluation, so two evaluations of one destination cannot mix. Results are written
atomically (:mod:`adaptrain.fileio`).

Under ``torchrun --nproc_per_node=K -m adaptrain eval ...`` every rank runs this command; the
examples are sharded over the ranks and their per-example results gathered (results identical
to one process; see docs/evaluation.md). Rank 0 alone holds the lock, writes the state, the
results and the plot, and prints; the other ranks stay silent. On the CPU each rank uses its
share of the cores (``OMP_NUM_THREADS`` wins).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint, fileio
from ..config import Config
from ..distributed import World
from ..errors import ConfigError
from ..runs import config_for, examples, load_weights_into_model, parse_device, pick_weights
from .args import budget, choice, integer, items

# Bounds on the integer flags (documented in --help): beyond them a value is a typo.
MAX_N = 10**9  # examples
MAX_BATCH = 10**6  # examples per chunk
MAX_SEED = 2**31 - 1  # every generator (torch, numpy, AutoAttack) takes it
AA_VERSIONS = ("standard", "rand", "plus", "custom")
NORMS = ("linf", "l2")
CORRUPTION_TABLES = ("auto", "cifar", "imagenet")
CHECKPOINTS = ("best", "last")
SPLITS = ("test", "val")


def default_curve(cfg: Config) -> tuple[float, ...]:
    """The eps-curve a run's strategy asks for by default (its registry traits)."""
    from ..strategies import STRATEGIES

    name = cfg.strategy.get("name")
    return STRATEGIES.get(name).traits.eval_curve if name in STRATEGIES else ()


def _budgets(text: str | None, where: str, norm: str | None = None) -> list[float]:
    if text is None:
        return []
    return [budget(item, where, norm) for item in items(text, where, "0,2/255,4/255,8/255")]


def _severities(text: str) -> list[int]:
    out = []
    for item in items(text, "--severities", "1,2,3,4,5"):
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError("--severities", f"cannot parse {text!r}; e.g. 1,2,3,4,5") from None
    if not out:
        raise ConfigError("--severities", "give at least one severity, e.g. 1,2,3,4,5")
    if any(s < 0 or s > 5 for s in out):
        raise ConfigError("--severities", f"must be in 0..5, got {text!r}")
    return out


def _corruptions(text: str | None) -> list[str]:
    from ..corruptions import CORRUPTIONS, GROUPS

    out: list[str] = []
    for item in items(text or "", "--corruptions", "noise,blur or all"):
        if item in ("all", "common"):
            out += list(CORRUPTIONS)
        elif item in GROUPS:
            out += list(GROUPS[item])
        elif item in CORRUPTIONS:
            out.append(item)
        else:
            raise ConfigError("--corruptions", f"unknown {item!r}; allowed: all, "
                              f"{', '.join(GROUPS)}, {', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(out))


def _aa_attacks(args: argparse.Namespace, aa_version: str) -> tuple[str, ...] | None:
    from ..evaluate.specs import AA_SUBATTACKS

    if args.aa_attacks is None:
        return None
    subs = items(args.aa_attacks, "--aa-attacks", "apgd-ce,apgd-t")
    if not subs:
        raise ConfigError("--aa-attacks", "empty; give a list such as apgd-ce,apgd-t")
    for sub in subs:
        if sub not in AA_SUBATTACKS:
            raise ConfigError("--aa-attacks", f"unknown {sub!r}; allowed: {', '.join(AA_SUBATTACKS)}")
    if aa_version != "custom":
        raise ConfigError("--aa-attacks", "a custom subset needs --aa-version custom")
    return tuple(subs)


def _norm(args: argparse.Namespace, cfg: Config | None) -> str | None:
    """--norm, else the run's attack norm (None before the config is read)."""
    if args.norm is not None:
        return choice(args.norm, "--norm", NORMS)
    if cfg is None:
        return None
    norm = cfg.attack.get("norm", "linf")
    if norm not in NORMS:
        raise ConfigError("--norm", f"the run was trained with norm {norm!r}; evaluation supports "
                          f"{', '.join(NORMS)}: pass --norm")
    return norm


def settings_from_args(args: argparse.Namespace, cfg: Config | None = None):
    """EvalSettings from the command line; ``cfg`` (the run's config) supplies the defaults of
    eps, step and norm. Called once without it to refuse bad arguments before anything is read."""
    from ..evaluate import EvalSettings, parse_list, parse_spec, parse_step

    aa_version = choice(args.aa_version, "--aa-version", AA_VERSIONS)
    aa_attacks = _aa_attacks(args, aa_version)
    attacks = items(args.attacks, "--attacks", "clean,pgd-20,aa")
    if not attacks:
        raise ConfigError("--attacks", "give at least one attack, e.g. clean,pgd-20")
    parse_list(attacks, aa_version=aa_version, aa_attacks=aa_attacks)  # fail early
    integer(args.n, "--n", 1, MAX_N)
    batch_size = integer(args.batch_size, "--batch-size", 1, MAX_BATCH)
    seed = integer(args.seed, "--seed", 0, MAX_SEED)
    for flag, value, allowed in (("--corruption-table", args.corruption_table, CORRUPTION_TABLES),
                                 ("--checkpoint", args.checkpoint, CHECKPOINTS),
                                 ("--split", args.split, SPLITS)):
        choice(value, flag, allowed)
    norm = _norm(args, cfg)
    cfg = cfg or Config()
    eps = budget(args.eps if args.eps is not None else cfg.eval.eps, "--eps", norm)
    step = args.step_size if args.step_size is not None else cfg.eval.step_size
    parse_step(step, "--step-size")
    curve_arg = args.eps_curve
    if curve_arg is None:  # the strategy's own default (SAAT: robustness disparity)
        curve_arg = ",".join(str(e) for e in default_curve(cfg))
    curve = _budgets(curve_arg, "--eps-curve", norm)
    parse_spec(args.curve_attack, "--curve-attack", aa_version=aa_version, aa_attacks=aa_attacks)
    parse_step(args.curve_step, "--curve-step")
    corruptions = _corruptions(args.corruptions)
    severities = _severities(args.severities)
    return EvalSettings(attacks=attacks, eps=eps, step=step, norm=norm or "linf", seed=seed,
                        batch_size=batch_size, cascade=args.cascade,
                        aa_version=aa_version, aa_attacks=aa_attacks, curve=curve,
                        curve_attack=args.curve_attack, curve_step=args.curve_step,
                        corruptions=corruptions, severities=severities,
                        corruption_table=args.corruption_table, bf16=args.bf16)


def destination(args: argparse.Namespace, run_dir: Path | None, tag: str = "",
                default: Path | None = None) -> Path:
    """The result file: --out, else RUN/eval/<checkpoint><tag>.json, else ``default``, else next
    to the checkpoint (``tag`` "-raw" keeps a run's raw weights apart from its default, the EMA)."""
    if args.out is not None:
        if not str(args.out).strip():
            raise ConfigError("--out", "empty; give the JSON file to write, e.g. eval.json")
        dest = Path(args.out)
        if dest.suffix != ".json":
            raise ConfigError("--out", f"must name a .json file (the markdown and the resumable "
                              f"state go next to it), got {args.out!r}")
    elif run_dir is not None:
        dest = run_dir / "eval" / f"{args.checkpoint}{tag}.json"
    elif default is not None:
        dest = default
    else:
        dest = Path(str(args.target).rstrip("/") + ".eval.json")
    if dest.is_dir():
        raise ConfigError("--out", f"{dest} is a directory; give a file in it, e.g. {dest / 'eval.json'}")
    return dest


def check_writable(dest: Path) -> None:
    """Refuse (naming --out) a destination whose folder cannot be created or written, by
    creating and removing a file in the nearest existing folder above it: nothing is left."""
    folder = dest.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError("--out", f"cannot create {dest.parent}: {folder} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".adaptrain-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConfigError("--out", f"cannot write to {folder}: {exc.strerror or exc}") from None


def lock_path(dest: Path) -> Path:
    """A hidden file next to the result; it stays after the evaluation (deleting a lock file
    while another process waits on it would let two holders in)."""
    return dest.with_name("." + dest.name + ".lock")


def hold_destination(stack: ExitStack, dest: Path) -> None:
    """Create the destination's folder and hold its lock until ``stack`` closes; another
    evaluation of the same destination stops at once with one line."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(fileio.exclusive_lock(lock_path(dest), what="--out",
                                                  holder=f"the evaluation {dest}"))
    except OSError as exc:
        raise ConfigError("--out", f"cannot write to {dest.parent}: {exc.strerror or exc}") from None


def write_results(dest: Path, doc: dict[str, Any], label: str) -> str:
    """JSON, markdown and (with a curve) the plot, each written atomically; -> the markdown."""
    from ..evaluate import plot_curves
    from ..evaluate.results import to_markdown

    md = to_markdown(doc)
    try:
        fileio.write_file(dest, json.dumps(doc, indent=2))
        fileio.write_file(dest.with_suffix(".md"), md)
        if doc.get("curve"):
            plot_curves({label: doc["curve"]}, dest.with_suffix(".curve.png"),
                        title=f"{doc['curve']['attack']} accuracy vs eps")
    except OSError as exc:
        raise ConfigError("--out", f"cannot write {exc.filename or dest}: {exc.strerror or exc}; "
                          "the evaluation's state is kept: run the command again to write it") from None
    return md


def run(args: argparse.Namespace) -> int:
    """``adaptrain eval``: every check that can fail runs before the evaluation does, cheapest
    first, so a mistake never costs the evaluation's hours (see the module docstring). Every
    rank parses the same command line, so a bad flag stops every rank alike."""
    settings_from_args(args)  # bad arguments stop here, before anything is read
    check_source(args)
    world = World.from_env(str(args.device))
    try:
        return _run(args, world)
    finally:
        world.close()


def check_source(args: argparse.Namespace) -> None:
    """Exactly one model to evaluate: a run / checkpoint / weights file, or ``--model`` with
    its own options; every external option is checked here, before anything is read."""
    from ..data import DATASETS
    from ..external import check_spec, parse_kwargs

    if args.model is None:
        if args.target is None:
            raise ConfigError("adaptrain eval", "give a run directory, checkpoint or weights file, "
                              "or an external model with --model pkg.module:builder")
        for flag, value in (("--model-kwargs", args.model_kwargs), ("--data", args.data),
                            ("--data-root", args.data_root)):
            if value is not None:
                raise ConfigError(flag, "goes with --model; a run evaluates on its own data set")
        if args.weights is not None and args.weights not in checkpoint.WEIGHTS:
            raise ConfigError("--weights", f"{args.weights!r} is not allowed with a run; allowed: "
                              "ema, raw (a weights FILE goes with --model)")
        return
    if args.target is not None:
        raise ConfigError("--model", f"give either a run ({args.target}) or --model, not both")
    check_spec(args.model)
    parse_kwargs(args.model_kwargs)
    if args.config is not None:
        raise ConfigError("--config", "does not go with --model (an external model has no config)")
    if args.data is None:
        raise ConfigError("--data", f"an external model needs the data set to evaluate on; one of "
                          f"{', '.join(DATASETS.names())}")
    if args.data not in DATASETS:
        raise ConfigError("--data", f"unknown {args.data!r}; allowed: {', '.join(DATASETS.names())}")
    if args.split != "test":
        raise ConfigError("--split", "an external model is evaluated on the test split only "
                          "(the val split is held out of a run's training data)")


def _run_external(args: argparse.Namespace, world: World) -> int:
    """``--model``: build and load the external model, probe its contract, then the same
    evaluation, checks and provenance as for a run. The threat model: --norm (default linf)
    and --eps, else the data set's standard budget (:data:`adaptrain.external.DEFAULT_EPS`)."""
    from .. import external
    from ..data import load_arrays
    from ..errors import AdaptrainError

    kwargs = external.parse_kwargs(args.model_kwargs)
    norm = _norm(args, None) or "linf"
    eps = budget(args.eps, "--eps", norm) if args.eps is not None else external.default_eps(args.data, norm)
    cfg = external.config_for(args.data, args.data_root, norm, eps)
    settings = settings_from_args(args, cfg)
    device = parse_device(world.device(str(args.device)))
    if world.many and device.type == "cpu":
        _share_cores(world)
    weights = Path(args.weights) if args.weights is not None else None
    loaded = external.load(args.model, kwargs, weights, data=args.data, norm=norm,
                           model_dir=Path(args.model_dir))
    dest = destination(args, None, default=Path(str(loaded.weights or args.model.replace(":", "_"))
                                                 + ".eval.json"))
    check_writable(dest)
    try:
        arrays = load_arrays(args.data, args.data_root)
    except AdaptrainError as exc:  # name the flags of this command, not the config fields
        flag = {"data.name": "--data", "data.root": "--data-root"}.get(exc.field, exc.field)
        raise type(exc)(flag, exc.message) from None
    model = loaded.model.to(device)
    x, y = examples(cfg, arrays, "test", integer(args.n, "--n", 1, MAX_N),
                    say=print if world.main else None)
    # the probe sees the same images whatever --n is
    external.check_contract(model, arrays.x_test, arrays.y_test, arrays.spec, device)
    origin = {"target": args.model, "checkpoint": str(loaded.weights), "model_kwargs": kwargs,
              "weights_sha256": loaded.sha256,
              "threat_from": "--eps" if args.eps is not None else f"default for {args.data}"}
    return _locked_evaluation(args, cfg, settings, model, x, y, dest, world, origin)


def _share_cores(world: World) -> None:
    """On the CPU, each of the ranks on this machine gets its share of the cores."""
    from ..threads import apply_threads, default_threads

    apply_threads(default_threads(world.local_size))


def _run(args: argparse.Namespace, world: World) -> int:
    if args.model is not None:
        return _run_external(args, world)
    cfg, run_dir = config_for(args.target, args.config)
    settings = settings_from_args(args, cfg)
    device = parse_device(world.device(str(args.device)))
    if world.many and device.type == "cpu":
        _share_cores(world)
    weights, which = weights_of(args)
    # a run's default is its moving average; its raw weights get a result file of their own, so
    # that neither evaluation resumes from the other's state
    raw_of_ema = which == "raw" and weights.with_name(checkpoint.EMA_FILE).is_file()
    dest = destination(args, run_dir, "-raw" if raw_of_ema else "")
    check_writable(dest)
    model, arrays = load_weights_into_model(cfg, weights, device)
    x, y = examples(cfg, arrays, args.split, integer(args.n, "--n", 1, MAX_N),
                    say=print if world.main else None)
    origin = {"target": str(args.target), "checkpoint": args.checkpoint, "weights": which}
    return _locked_evaluation(args, cfg, settings, model, x, y, dest, world, origin)


def _locked_evaluation(args: argparse.Namespace, cfg: Config, settings, model: torch.nn.Module,
                       x: torch.Tensor, y: torch.Tensor, dest: Path, world: World,
                       origin: dict[str, Any]) -> int:
    """Rank 0 takes the destination's lock, then every rank evaluates."""
    with ExitStack() as stack:
        failed: ConfigError | None = None
        if world.main:  # rank 0 alone holds the destination
            try:
                hold_destination(stack, dest)
            except ConfigError as exc:
                failed = exc
        if world.any(failed is not None):
            if failed is not None:
                raise failed
            return 2  # rank 0 says why
        return _evaluate_into(args, cfg, settings, model, x, y, dest, world, origin)


def weights_of(args: argparse.Namespace) -> tuple[Path, str]:
    """The weights file to evaluate and which it is (ema | raw): a run's or checkpoint
    directory's moving average when it has one, unless --weights raw."""
    target = checkpoint.resolve(Path(args.target), args.checkpoint)
    if target.is_dir():
        return pick_weights(target, args.weights)
    if args.weights is not None:
        raise ConfigError("--weights", f"{args.target} is a weights file; --weights ema|raw "
                          "chooses within a run or checkpoint directory")
    return target, "ema" if target.name == checkpoint.EMA_FILE else "raw"


def _evaluate_into(args: argparse.Namespace, cfg: Config, settings, model: torch.nn.Module,
                   x: torch.Tensor, y: torch.Tensor, dest: Path, world: World,
                   origin: dict[str, Any]) -> int:
    """The evaluation proper, under the destination's lock; resumable from the state file."""
    from ..evaluate import checks as checks_mod
    from ..evaluate import evaluate
    from ..evaluate.aa import SHARDING as AA_SHARDING
    from ..evaluate.aa import version as aa_version
    from ..evaluate.results import json_ready
    from ..evaluate.runner import uses_aa
    from ..rundir import versions

    state_path = dest.with_name(dest.stem + ".state.json")
    if args.fresh and world.main:
        state_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        result = evaluate(model, x, y, settings, state_path=state_path,
                          progress=False if args.quiet else None, log=print, world=world)
    except KeyboardInterrupt:
        if world.main:
            print(f"interrupted; run the same command again (with any number of ranks) to "
                  f"resume from {state_path}", file=sys.stderr)
        return 130
    if not world.main:
        return 0
    provenance = {
        **versions(), "autoattack": aa_version(), **origin, "data": cfg.data.name, "split": args.split,
        "seed": settings.seed, "n": int(y.shape[0]), "eps": settings.eps, "norm": settings.norm,
        "attacks": settings.attacks, "aa_version": settings.aa_version,
        "aa_attacks": list(settings.aa_attacks) if settings.aa_attacks else None,
        "jobs_run": list(result["_state"].jobs), "batch_size": settings.batch_size,
        "device": str(next(model.parameters()).device), "bf16": settings.bf16,
        "world_size": world.size,
        # whether AutoAttack's per-example results are those of one process, as measured
        "aa_sharding": AA_SHARDING if uses_aa(settings) else None,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    doc = json_ready(result, provenance)
    md = write_results(dest, doc, Path(str(origin["checkpoint"])).stem)
    if not args.keep_state:
        result["_state"].remove()
    print(md, end="")
    checks_mod.report(doc["checks"])
    print(f"written to {dest}")
    return 0


def add_parser(sub: Any) -> None:
    e = sub.add_parser("eval", help="evaluate a run directory or checkpoint")
    e.set_defaults(fn=run)
    from ..evaluate.specs import HELP

    e.add_argument("target", nargs="?", default=None,
                   help="run directory, checkpoint directory or weights file (or --model)")
    e.add_argument("--attacks", default="clean,pgd-20",
                   help=f"comma list ({HELP}); default clean,pgd-20")
    e.add_argument("--aa-version", default="standard", metavar="{" + ",".join(AA_VERSIONS) + "}",
                   help="AutoAttack version for 'aa' (custom: the --aa-attacks list)")
    e.add_argument("--aa-attacks", default=None,
                   help="custom AutoAttack subset, e.g. apgd-ce,apgd-t (with --aa-version custom)")
    e.add_argument("-n", "--n", default=1000,
                   help=f"number of examples (first n of the split; 1 .. {MAX_N})")
    e.add_argument("--eps", default=None, help="budget in [0, 1] image units, e.g. 8/255 (at most 1 "
                   "for linf; default: the run's eval.eps; with --model, the data set's standard)")
    e.add_argument("--step-size", default=None, help="attack step: absolute in (0, 1] (2/255) or "
                   "relative (eps/4, at most eps*10); default: the run's")
    e.add_argument("--norm", default=None, metavar="{" + ",".join(NORMS) + "}",
                   help="threat model (default: the run's; with --model, linf)")
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
    e.add_argument("--corruption-table", default="auto", metavar="{" + ",".join(CORRUPTION_TABLES) + "}",
                   help="corruption constants: CIFAR-10-C or ImageNet-C (auto: by image size)")
    e.add_argument("--bf16", action="store_true",
                   help="bf16 autocast for forward passes (faster on GPUs; risks gradient masking)")
    e.add_argument("--checkpoint", default="best", metavar="{best,last}")
    e.add_argument("--config", default=None, help="config YAML for a bare checkpoint")
    e.add_argument("--split", default="test", metavar="{test,val}")
    e.add_argument("--seed", default=0, help=f"0 .. {MAX_SEED}")
    e.add_argument("--batch-size", default=256, help=f"examples per chunk (1 .. {MAX_BATCH})")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--fresh", action="store_true", help="ignore a saved partial evaluation")
    e.add_argument("--keep-state", action="store_true",
                   help="keep <out>.state.json (every job's per-example results) after the end")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--out", default=None, help="JSON file to write (default RUN/eval/<name>.json); "
                   "one evaluation at a time per file")
    add_model_options(e)


def add_model_options(e: argparse.ArgumentParser) -> None:
    """The options of an external model (docs/evaluation.md, "Any model"). ``--weights`` is
    defined here once: with --model it is the weights FILE, with a run ema | raw."""
    e.add_argument("--model", default=None,
                   help="evaluate an external model instead of a run: pkg.module:builder (a callable "
                   "returning an nn.Module that takes [0, 1] images and returns logits) or "
                   "robustbench:NAME (weights already under --model-dir)")
    e.add_argument("--model-kwargs", default=None,
                   help="JSON object of keyword arguments for the builder, e.g. '{\"width\": 16}'")
    e.add_argument("--weights", default=None,
                   help="with --model: the weights file (.safetensors, or a torch state dict read "
                   "with weights_only; pickled objects are refused); with a run or checkpoint "
                   "directory: ema (its moving average, the default when the run kept one, "
                   "ema.decay > 0) or raw (the trained weights)")
    e.add_argument("--data", default=None, help="with --model: the data set to evaluate on (its test "
                   "split), e.g. cifar10; its standard budget is the default --eps")
    e.add_argument("--data-root", default=None, help="with --model: the data set's directory "
                   "(default $ADAPTRAIN_DATA/<name> or ~/.cache/adaptrain/data/<name>)")
    e.add_argument("--model-dir", default="models", help="RobustBench's model directory "
                   "(<dir>/<data>/<Linf|L2>/<NAME>.pt; default ./models, as RobustBench's)")
