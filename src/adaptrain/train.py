"""The training loop: strategy -> attack -> objective (+AWP) -> optimiser, once per batch.

Read top to bottom: ``setup`` builds every component from the config, ``train`` runs the
epochs and writes the run directory (config.yaml, metrics.csv, strategy.csv, summary.json,
checkpoints/last and checkpoints/best). A resumed run reloads weights, optimiser, strategy,
objective and every random generator, and continues exactly where the last completed epoch
ended.
"""

from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checkpoint, fileio, recovery, rundir
from .attacks import ATTACKS, Attack, AttackPlan
from .awp import AWP
from .claim import claim
from .config import INIT_REQUIRED, Config
from .context import Batch, Feedback, RunContext, StepInfo, Stream
from .data import BatchLoader, eps_text, load_arrays, make_splits
from .data.extra import ExtraData, check_extra
from .distributed import SINGLE, World
from .ema import EMA
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluate import evaluate_attacks, parse_spec
from .logmetrics import LiveLog
from .logprogress import duration, track
from .models import build_model, first_nonfinite
from .objectives import OBJECTIVES, Objective
from .overfitting import catastrophic_overfitting
from .precision import use_amp, use_channels_last
from .regularizers import REGULARIZERS, Regularizer
from .rundir import PRESET_MARK, best_row, epoch_line, resolve_device
from .runs import pick_weights
from .schedules import first_decay_epoch, make_schedule
from .strategies import STRATEGIES, Strategy


@dataclass
class Run:
    """Everything a training run holds; built by :func:`setup`."""

    cfg: Config
    out: Path
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.SGD
    loader: BatchLoader
    val: tuple[torch.Tensor, torch.Tensor]
    strategy: Strategy
    objective: Objective
    regularizer: Regularizer
    attack: Attack
    awp: AWP | None
    ctx: RunContext
    generators: dict[str, torch.Generator]
    history: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    wall_time: float = 0.0
    net: torch.nn.Module | None = None  # what the step forwards: the model, or its torch.compile
    world: World = SINGLE
    # what the training loss forwards: ``net``, or under torchrun the model wrapped in DDP (the
    # attack and every other extra forward use the unwrapped ``net``: input gradients only, no
    # gradient hooks or buffer broadcasts there)
    loss_net: torch.nn.Module | None = None
    live: LiveLog | None = None  # TensorBoard / W&B copies of the tables (rank 0; log.*)
    ema: EMA | None = None  # the moving average of the weights (ema.decay > 0)

    def __post_init__(self) -> None:
        if self.net is None:
            # dynamic shapes: the attack engine's compaction changes the batch size every step
            self.net = torch.compile(self.model, dynamic=True) if self.cfg.compile else self.model
        if self.loss_net is None:
            self.loss_net = self.net
            if self.world.many:
                # BatchNorm statistics stay per rank (no broadcast at every forward, which
                # breaks the several forwards before one backward of TRADES, MART, UIAT, ...);
                # rank 0's are copied to every rank at the end of each epoch
                ids = [self.device.index] if self.device.type == "cuda" else None
                with warnings.catch_warnings():  # newer torch renames the flag; both mean this
                    warnings.simplefilter("ignore", FutureWarning)
                    self.loss_net = torch.nn.parallel.DistributedDataParallel(
                        self.model, device_ids=ids, broadcast_buffers=False)

    def amp(self):  # bf16 autocast for the training's forward passes
        on = use_amp(self.cfg.amp, self.device)
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if on else nullcontext()


def check_world(cfg: Config, world: World) -> None:
    """What sharding cannot do, refused before any work (one line, exit 2)."""
    if not world.many:
        return
    if cfg.data.batch_size % world.size:
        raise ConfigError("data.batch_size", f"the global batch {cfg.data.batch_size} must split "
                          f"evenly over the {world.size} ranks")
    cuda = world.device(cfg.device).startswith("cuda")
    if cfg.model.get("sync_bn") and not cuda:
        raise ConfigError("model.sync_bn", "needs CUDA (torch's SyncBatchNorm rejects CPU tensors "
                          "once a process group exists); on CPU use model.norm=group")


def check_init(cfg: Config) -> None:
    """Fine-tuning presets name no model to start from: the user must give one. Extra data
    (``data.extra``): the preset placeholder refused, the files' headers checked."""
    if cfg.init_from == INIT_REQUIRED:
        raise ConfigError("init_from", "this preset fine-tunes a trained model: give "
                          "init_from=RUN_DIR_OR_CHECKPOINT (e.g. a run of the standard preset)")
    check_extra(cfg.data.extra)


def setup(cfg: Config, out: Path, *, state: dict[str, Any] | None = None,
          world: World = SINGLE) -> Run:
    """Build every component from ``cfg``; with ``state`` (a checkpoint's training state),
    continue from it. Under torchrun every rank builds the same run and loads its shards."""
    check_init(cfg)
    check_world(cfg, world)
    device = resolve_device(world.device(cfg.device))
    torch.manual_seed(cfg.seed)  # model initialisation
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    arrays = load_arrays(cfg.data.name, cfg.data.root, cfg.data.download)
    splits = make_splits(arrays, subset=cfg.data.subset, val_size=cfg.data.val_size,
                         split_seed=cfg.data.split_seed)
    spec = splits.spec
    extra = None
    if cfg.data.extra is not None:  # generated images, memory-mapped: shape and labels checked
        extra = ExtraData(cfg.data.extra)
        extra.check_against((*spec.image_size, spec.in_channels), spec.num_classes)
    model = build_model(cfg.model, spec).to(device)
    if use_channels_last(cfg.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    if cfg.init_from and state is None:
        source = checkpoint.resolve(cfg.init_from, "best")
        # a checkpoint directory gives the weights its run selected on and evaluates: the
        # moving average when the run kept one; a weights file is taken as named
        checkpoint.load_into(model, pick_weights(source)[0] if source.is_dir() else source)
    o = cfg.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                                nesterov=o.nesterov, weight_decay=o.weight_decay)
    augment = cfg.data.augment
    if augment == "auto":
        augment = "crop_flip" if min(spec.image_size) >= 32 else "none"
    ctx_probe = RunContext(0, 0, (0, 0, 0), 1, 1, device, cfg.seed)
    generators = {"loader": ctx_probe.generator(Stream.LOADER),
                  "attack": ctx_probe.generator(Stream.ATTACK)}
    loader = BatchLoader(splits.x_train, splits.y_train, batch_size=cfg.data.batch_size,
                         device=device, shuffle=True, augment=augment,
                         generator=generators["loader"], drop_last=False, rank=world.rank,
                         world_size=world.size,
                         extra=extra, extra_fraction=cfg.data.extra_fraction)
    lr_at = make_schedule(o.schedule, o.lr, cfg.epochs, milestones=o.milestones,
                          gamma=o.gamma, peak_at=o.peak_at)
    ctx = RunContext(
        num_train=loader.num_samples, num_classes=spec.num_classes,
        input_shape=tuple(splits.x_train.shape[1:]), epochs=cfg.epochs,
        batches_per_epoch=len(loader), device=device, seed=cfg.seed, dataset=spec.name,
        lr_at=lr_at, first_decay_epoch=first_decay_epoch(
            o.schedule, cfg.epochs, milestones=o.milestones, peak_at=o.peak_at), world=world)
    if splits.x_val.shape[0] > 0:
        val = (splits.x_val[: cfg.eval.n], splits.y_val[: cfg.eval.n])
    else:
        val = (splits.x_test[: cfg.eval.n], splits.y_test[: cfg.eval.n])
    run = Run(cfg=cfg, out=out, device=device, model=model, optimizer=optimizer, loader=loader,
              val=val, strategy=STRATEGIES.build(cfg.strategy, ctx=ctx),
              objective=OBJECTIVES.build(cfg.objective, ctx=ctx),
              regularizer=REGULARIZERS.build(cfg.regularizer, ctx=ctx),
              attack=ATTACKS.build(cfg.attack),
              awp=AWP(model, cfg.awp, world) if cfg.awp.gamma > 0 else None,
              ctx=ctx, generators=generators, world=world,
              ema=EMA(model, cfg.ema.decay, warmup_steps=cfg.ema.warmup * len(loader),
                      buffers=cfg.ema.buffers) if cfg.ema.decay > 0 else None)
    if state is not None:
        restore(run, state)
    return run


def state_of(run: Run, epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch, "optimizer": run.optimizer.state_dict(),
        "strategy": run.strategy.state_dict(), "objective": run.objective.state_dict(),
        "regularizer": run.regularizer.state_dict(),
        "awp": run.awp.state_dict() if run.awp else {},
        "generators": {k: g.get_state() for k, g in run.generators.items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
        "history": run.history, "telemetry": run.telemetry, "wall_time": run.wall_time,
    }


def restore(run: Run, state: dict[str, Any]) -> None:
    """Load ``checkpoints/last`` and its training ``state`` into ``run``; a state that is not
    what :func:`state_of` wrote gives a one-line CheckpointError."""
    ckpt = run.out / "checkpoints" / "last"
    checkpoint.load_into(run.model, ckpt)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.strategy.load_state_dict(state["strategy"])
        run.objective.load_state_dict(state["objective"])
        run.regularizer.load_state_dict(state.get("regularizer", {}))
        if run.awp:
            run.awp.load_state_dict(state["awp"])
        if run.ema:
            run.ema.load_state_dict(checkpoint.load_weights(ckpt / checkpoint.EMA_FILE))
        for k, g in run.generators.items():
            g.set_state(state["generators"][k])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        run.history, run.telemetry = list(state["history"]), list(state["telemetry"])
        run.start_epoch, run.wall_time = int(state["epoch"]), float(state["wall_time"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:160]
        raise CheckpointError("checkpoint", f"{ckpt / checkpoint.STATE_FILE} is not a training state "
                              f"this run can continue from ({type(exc).__name__}: {what})") from None


CHECK_EVERY = 50  # batches between two reads of the non-finite-loss flag


def diverged(run: Run, what: str) -> TrainingError:
    """The error for a diverged run, naming the checkpoint that is left (always finite: a
    non-finite model is never written)."""
    last = run.out / "checkpoints" / "last"
    if checkpoint.is_complete(last):
        epoch = int(checkpoint.load_state(last)["epoch"])
        left = f"the last good checkpoint is {last} (epoch {epoch})"
    else:
        left = "no checkpoint was written"
    return TrainingError("training", f"{what}: training diverged; {left}. Try a lower optim.lr "
                         "(or a warm-up schedule)")


def training_loss(run: Run, model: torch.nn.Module, batch: Batch, x_adv: torch.Tensor,
                  plan: AttackPlan, commit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Objective + regulariser, per sample (B,), and the objective's logits on x_adv."""
    loss_vec, logits = run.objective.loss(model, batch, x_adv, plan, commit=commit)
    extra = run.regularizer.term(model, batch, x_adv, plan, commit=commit)
    return (loss_vec if extra is None else loss_vec + extra), logits


def train_epoch(run: Run, epoch: int, bar: bool | None) -> dict[str, float]:
    model, opt, cfg = run.net, run.optimizer, run.cfg
    nb = len(run.loader)
    run.strategy.start_epoch(epoch)
    run.objective.start_epoch(epoch)
    awp_on = run.awp is not None and epoch >= cfg.awp.warmup
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device)
    first_bad = torch.full((), -1, device=run.device)  # first batch with a non-finite loss
    seen = 0
    # a bar on a terminal, else a line every logprogress.EVERY seconds (rate over all ranks)
    batches = track(run.loader, nb, f"epoch {epoch + 1}/{cfg.epochs}", bar,
                    images=lambda b: b[0].shape[0] * run.world.size)
    for i, (x, y, idx) in enumerate(batches):
        lr = run.ctx.lr_at(epoch + (i + 1) / nb)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = Batch(model, x, y, idx, StepInfo(epoch, i, epoch * nb + i, lr),
                      rows=run.loader.rows(i))
        with run.amp():  # the strategy's and objective's forward passes too (e.g. clean logits)
            plan = run.objective.prepare(batch, run.strategy.plan(batch))
            plan = run.attack.resolve(plan, wish=run.objective.random_start)
            result = run.attack(model, x, y, plan, generator=batch.draws(run.generators["attack"]))
        model.train()
        opt.zero_grad(set_to_none=True)
        if awp_on:
            with run.amp():
                run.awp.perturb(lambda m, b=batch, xa=result.x_adv, p=plan: batch_mean(
                    training_loss(run, m, b, xa, p, commit=False)[0], b))
        with run.amp():
            loss_vec, logits = training_loss(run, run.loss_net, batch, result.x_adv, plan)
        loss = batch_mean(loss_vec, batch)
        # recorded on the device and read every CHECK_EVERY batches: no host sync per step
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i, first_bad)
        if ((i + 1) % CHECK_EVERY == 0 or i + 1 == nb) and run.world.any(int(first_bad) >= 0):
            bad = int(run.world.gather_rows(first_bad.view(1), run.world.size).max())
            raise diverged(run, f"non-finite training loss at epoch {epoch + 1}, batch {bad + 1}")
        # DDP averages the ranks' gradients: scaled by the world size, their sum is the
        # gradient of the global batch mean
        (loss * run.world.size if run.world.many else loss).backward()
        run.strategy.observe(Feedback(batch, plan, result, loss_vec.detach(),
                                      None if logits is None else logits.detach(), opt,
                                      run.objective, run.attack, run.awp if awp_on else None))
        opt.step()
        if awp_on:
            run.awp.restore()
        if run.ema:  # averages the weights the step produced, AWP's perturbation taken off
            run.ema.update(batch.step.global_step)
        loss_sum += loss_vec.detach().float().sum()
        if logits is not None:
            correct += (logits.detach().argmax(1) == y).sum()
        seen += x.shape[0]
    seen_t = torch.tensor(float(seen), device=run.device)
    run.world.sum_(loss_sum, correct, seen_t)
    seen = float(seen_t)
    return {"lr": lr, "train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}


def batch_mean(loss_vec: torch.Tensor, batch: Batch) -> torch.Tensor:
    """This shard's share of the global batch's mean loss (the mean itself in one process)."""
    rows = batch.rows
    return loss_vec.mean() if rows.total == loss_vec.shape[0] else loss_vec.sum() / rows.total


def validate(run: Run, epoch: int, model: torch.nn.Module | None = None) -> dict[str, float]:
    """Clean and ``eval.attack`` accuracy of ``model`` (default: the run's) on the validation
    split (the code ``adaptrain eval`` runs), plus FGSM accuracy when single-step training could
    overfit catastrophically."""
    e = run.cfg.eval
    x, y = run.val
    norm = run.cfg.attack.get("norm", "linf")
    attacks = [e.attack] + (["fgsm"] if watch_fgsm(run.cfg) else [])
    res = evaluate_attacks(model or run.model, x, y, attacks, eps=e.eps, step_size=e.step_size,
                           norm=norm, batch_size=run.cfg.data.eval_batch_size,
                           seed=run.cfg.seed * 7919 + epoch, device=run.device,
                           world=run.world)  # the examples split over the ranks
    robust = res.get(parse_spec(e.attack).name, res["clean"])
    row = {"clean_acc": res["clean"].float().mean().item(),
           "robust_acc": robust.float().mean().item()}
    if "fgsm" in res:
        row["fgsm_acc"] = res["fgsm"].float().mean().item()
    return row


def watch_fgsm(cfg: Config) -> bool:
    """``eval.fgsm``: on, off, or auto (on when the training attack is single-step)."""
    return cfg.eval.fgsm == "on" or (cfg.eval.fgsm == "auto"
                                     and ATTACKS.get(cfg.attack["name"]).traits.single_step)


def train(cfg: Config, out: Path, *, resume: bool = False, preset: str = "",
          progress: bool | None = None, log=tqdm.write, world: World = SINGLE) -> dict[str, Any]:
    """Run (or resume) training into ``out``; returns the summary dict.

    ``progress``: None shows bars only on a terminal, False never. ``log`` receives the
    one-line summary of each epoch. ``out`` is locked for the duration (:mod:`.claim`); a
    resume first repairs what a crash left (:mod:`.recovery`). Under torchrun (``world``) rank
    0 claims, repairs, writes and logs; every rank trains its shard of each batch.
    """
    out = Path(out)
    check_init(cfg)
    check_world(cfg, world)
    if not world.main:
        log = _silent
        progress = False
    with claim(out, resume=resume) if world.main else nullcontext():
        state = None
        if resume and world.main:
            state = recovery.recover(out / "checkpoints", cfg.eval.select, log)
        world.barrier()  # rank 0 has repaired the run directory: the others read it as it is now
        if resume and not world.main and checkpoint.is_complete(out / "checkpoints" / "last"):
            state = checkpoint.load_state(out / "checkpoints" / "last")
        if resume and state is None:
            log(f"{out} has no completed epoch yet: training starts from the first")
        if state is not None and cfg.epochs < int(state["epoch"]):
            raise ConfigError("epochs", f"the run has already completed {state['epoch']} epochs; "
                              f"give epochs >= {state['epoch']}")
        preset = preset or (rundir.previous_preset(out) if resume else "")
        run = setup(cfg, out, state=state, world=world)
        if world.main:
            # the preset rides in the config's first line (a YAML comment), so a kill before
            # the first summary.json cannot lose it
            fileio.write_file(out / "config.yaml",
                              (f"{PRESET_MARK}{preset}\n" if preset else "") + cfg.dump())
            # summary.json from the start (it records the preset for a resume); on a resume,
            # the tables as of the recovered epoch
            write_outputs(run, preset, finished=run.start_epoch >= cfg.epochs)
            run.live = LiveLog(out, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb,
                               start_epoch=run.start_epoch, epochs=cfg.epochs, config=cfg.to_dict())
        return train_epochs(run, preset, progress, log)


def _silent(line: str) -> None:
    return None


def train_epochs(run: Run, preset: str, progress: bool | None, log) -> dict[str, Any]:
    cfg, ckpts = run.cfg, run.out / "checkpoints"
    epochs = tqdm(range(run.start_epoch, cfg.epochs), desc="epochs", initial=run.start_epoch,
                  total=cfg.epochs, disable=True if progress is False else None, dynamic_ncols=True)
    started = time.perf_counter()
    for epoch in epochs:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, **train_epoch(run, epoch, progress)}
        row["train_time_s"] = time.perf_counter() - t0
        run.world.broadcast_(*run.model.buffers())  # rank 0's BatchNorm statistics everywhere
        if run.ema:
            run.world.broadcast_(*run.ema.module.buffers())  # and those of the average
        for net in (run.model, *([run.ema.module] if run.ema else [])):
            if (bad := first_nonfinite(net)) is not None:  # e.g. BatchNorm statistics at inf
                raise diverged(run, f"non-finite values in {bad} after epoch {epoch + 1}")
        if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.epochs:
            t1 = time.perf_counter()
            row.update(validate(run, epoch))
            if run.ema:  # same examples and attack seed: the two columns compare the weights
                row.update({f"ema_{k}": v for k, v in validate(run, epoch, run.ema.module).items()})
            row["eval_time_s"] = time.perf_counter() - t1
            warning = catastrophic_overfitting([*run.history, row])
            if "fgsm_acc" in row:
                row["catastrophic_overfitting"] = float(warning is not None)
            if warning:
                log(f"WARNING: {warning}")
        row.update(run.objective.end_epoch(epoch))
        run.telemetry.append({"epoch": epoch + 1, **run.strategy.end_epoch(epoch)})
        run.wall_time += time.perf_counter() - t0
        run.history.append(row)
        if run.world.main:
            # the commit order recovery.py relies on: last (the commit point), best, tables
            ema = run.ema.state_dict() if run.ema else None
            checkpoint.save(ckpts / "last", run.model, state_of(run, epoch + 1), ema=ema)
            if best_row(run.history, cfg.eval.select) is row:
                checkpoint.save(ckpts / "best", run.model, {"epoch": epoch + 1, "metrics": row},
                                ema=ema)
            write_outputs(run, preset, finished=epoch + 1 == cfg.epochs)
            if run.live is not None:  # after the tables: a failure here loses nothing
                run.live.epoch(row, run.telemetry[-1])
        run.world.barrier()  # no rank runs ahead of the epoch's checkpoint
        # the strategy's state in its own words, and the time left at this session's pace
        state = run.strategy.summary(run.telemetry[-1], lambda e: eps_text(e, cfg.data.name))
        pace = (time.perf_counter() - started) / (epoch + 1 - run.start_epoch)
        eta = f"ETA {duration(pace * (cfg.epochs - epoch - 1))}" if epoch + 1 < cfg.epochs else ""
        log(epoch_line(row, cfg.epochs, cfg.eval.attack, state, eta))
    return write_outputs(run, preset, finished=True) if run.world.main else {}


def write_outputs(run: Run, preset: str, finished: bool) -> dict[str, Any]:
    """metrics.csv, strategy.csv and summary.json of the run so far (see :mod:`.rundir`)."""
    e = run.cfg.eval
    return rundir.write_outputs(
        run.out, run.history, run.telemetry, select=e.select, preset=preset, finished=finished,
        eval_info={"attack": e.attack, "eps": e.eps, "step_size": e.step_size, "n": len(run.val[1]),
                   "split": "val" if run.cfg.data.val_size > 0 else "test",
                   "norm": run.cfg.attack.get("norm", "linf"), "select": e.select,
                   "weights": "ema" if run.ema else "raw"},  # which weights selected the best
        wall_time=run.wall_time, device=run.device,
        precision={"bf16_autocast": use_amp(run.cfg.amp, run.device),  # what `auto` became here
                   "channels_last": use_channels_last(run.cfg.channels_last, run.device)})
