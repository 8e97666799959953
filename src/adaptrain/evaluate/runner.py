"""The evaluation driver: clean accuracy, attacks (own and official AutoAttack) as a cascade or
independently, the worst case per example, eps-curves, corruptions, sanity checks.

Every unit of work is a *job* (an attack at a budget, an AutoAttack sub-attack, a corruption
at a severity) run in chunks of ``batch_size`` examples on the examples it applies to; each
chunk's per-example results go to the resumable :class:`EvalState`, so an interrupted
evaluation continues where it stopped and ends with the same numbers.
Modes: ``cascade`` (default): each attack runs on the survivors of every earlier one and
``accuracy[attack]`` is cumulative; ``independent``: every attack runs on every clean-correct
example. Both give the same ``worst_case``; the sub-attacks of ``aa`` always cascade.
``correct[name]`` (and the curve's ``correct``) keep every example's outcome as a '0' / '1'
string in the order of the evaluated examples, for paired comparisons between models.
Inputs in [0, 1], budgets in [0, 1] image units. Details: docs/evaluation.md.

Under ``torchrun`` (a ``World`` of several ranks) each job's chunks are dealt to the ranks and
every chunk's results are gathered after each step (:mod:`.shard`), so every rank holds the whole
state and runs the same cascade; only rank 0 reads and writes the state file. Per example, the
results are those of a single process (the same chunks where the chunking matters).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks import engine, make_loss
from ..distributed import SINGLE, World
from ..errors import ConfigError
from ..logprogress import progress
from . import aa as aa_mod
from . import checks as checks_mod
from . import shard
from .curve import robustness_disparity
from .guards import (
    BF16_WARNING,
    Autocast,
    EvaluationError,
    assert_buffers_unchanged,
    assert_eval_mode,
    buffers_snapshot,
    check_finite,
    check_inputs,
    check_logits,
    has_internal_normalisation,
)
from .own import own_correct
from .specs import AttackSpec, parse_list, parse_spec, parse_step, step_for
from .state import EvalState

Chunk = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[str]]]


@dataclass
class EvalSettings:
    """What to evaluate. Budgets in [0, 1] units; ``step`` is absolute ('2/255') or relative
    ('eps/4'); ``curve`` lists budgets for the accuracy-vs-eps curve."""

    attacks: Sequence[str] = ("clean", "pgd-20")
    eps: float = 8 / 255
    step: str | float = 2 / 255
    norm: str = "linf"
    seed: int = 0
    batch_size: int = 256
    cascade: bool = True
    aa_version: str = "standard"
    aa_attacks: tuple[str, ...] | None = None
    curve: Sequence[float] = ()
    curve_attack: str = "pgd-20"
    curve_step: str | float = "eps/4"
    corruptions: Sequence[str] = ()
    severities: Sequence[int] = (1, 2, 3, 4, 5)
    corruption_table: str = "auto"
    bf16: bool = False
    gap_threshold: float = 0.10
    zero_grad_check: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in provenance only


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings) -> str:
    """Hash of the weights, the data and the settings: the state's key."""
    h = hashlib.sha1()
    def raw(t: torch.Tensor) -> bytes:
        return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(raw(v))
    h.update(raw(x))
    h.update(raw(y))
    s = asdict(settings)
    s.pop("extra", None)
    if not chunking_matters(settings):
        s.pop("batch_size", None)  # own attacks key their randomness by example: no dependence
    h.update(json.dumps(s, sort_keys=True, default=str).encode())
    return h.hexdigest()


def chunking_matters(s: EvalSettings) -> bool:
    """Whether results depend on how examples are cut into chunks: the official AutoAttack seeds
    its random starts per call (one call per chunk) and corruptions draw their noise per chunk,
    so a state saved with another batch size must not be resumed into these jobs."""
    return uses_aa(s) or bool(s.corruptions)


def uses_aa(s: EvalSettings) -> bool:
    """Whether the official AutoAttack runs (an ``--attacks`` entry or the curve's attack)."""
    specs = parse_list(list(s.attacks), aa_version=s.aa_version, aa_attacks=s.aa_attacks)
    if s.curve:
        specs.append(parse_spec(s.curve_attack, "--curve-attack", aa_version=s.aa_version,
                                aa_attacks=s.aa_attacks))
    return any(sp.kind == "aa" for sp in specs)


def check_budgets(s: EvalSettings) -> None:
    """Budgets finite and >= 0 (and at most 1 for linf, in [0, 1] image units): a NaN budget
    would report 0 % robust accuracy, an infinite one any number at all."""
    for where, values in (("eps", [s.eps]), ("curve", list(s.curve))):
        for v in values:
            v = float(v)
            if not math.isfinite(v) or v < 0 or (s.norm == "linf" and v > 1):
                raise ConfigError(where, f"budget {v!r} must be finite, >= 0 and (linf) <= 1")


class Evaluator:
    """Runs jobs in chunks against a state; see the module docstring."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings,
                 state: EvalState, device: torch.device, progress: bool | None,
                 world: World = SINGLE) -> None:
        self.model = model
        self.x, self.y = x, y
        self.s = settings
        self.state = state
        self.device = device
        self.progress = progress if world.main else False
        self.world = world
        self._failure: Exception | None = None  # this rank's failed chunk (see _chunk)
        self.n = int(y.shape[0])
        param = next(model.parameters(), None)
        # float64 models (tests) get float64 inputs; everything else float32
        self.dtype = param.dtype if param is not None and param.dtype == torch.float64 else torch.float32

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = self.x[idx].to(self.device, non_blocking=True)
        xb = xb.to(self.dtype).div_(255.0) if xb.dtype == torch.uint8 else xb.to(self.dtype)
        return xb, self.y[idx].to(self.device, non_blocking=True)

    def run(self, name: str, on: torch.Tensor, chunk: Chunk, data: Callable | None = None,
            keyed: bool = False) -> torch.Tensor:
        """Run job ``name`` on the examples ``on`` (N,) bool; returns (N,) bool: correct after
        the job for those examples (True elsewhere: not attacked by this job). ``keyed``: an
        example's result does not depend on its chunk's other examples (the chunks may then
        be sized to balance the ranks; see :mod:`.shard`)."""
        todo = (on & ~self.state.done_mask(name)).nonzero().squeeze(1)
        w = self.world
        parts = shard.chunks(todo, self.s.batch_size, w.size, keyed)
        bar = progress(int(todo.numel()), name, self.progress)  # a bar, or lines in a log
        try:
            for first in range(0, len(parts), w.size):
                step = parts[first:first + w.size]
                mine = step[w.rank] if w.rank < len(step) else None
                done = shard.gather_objects(w, None if mine is None else
                                            self._chunk(mine, chunk, data))
                self._raise_failures(name, done)
                seconds = max(d[2] for d in done if d is not None)  # the step's wall time
                for j, (idx, (correct, flags, _, _)) in enumerate(zip(step, done, strict=False)):
                    self.state.record(name, idx, correct, seconds if j == 0 else 0.0, flags)
                bar.update(sum(int(idx.numel()) for idx in step))
        finally:  # an interruption keeps every finished chunk
            self.state.save(force=True)
            bar.close()
        self.state.finish(name)
        return self.state.correct(name) | ~on

    def _chunk(self, idx: torch.Tensor, chunk: Chunk, data: Callable | None
               ) -> tuple[torch.Tensor | None, list[str], float, str | None]:
        """One chunk on this rank -> (correct (b,) bool on the CPU, flags, seconds, None). With
        several ranks a failure comes back as (None, [], 0, message) and is raised on every
        rank after the step's gather (:meth:`_raise_failures`), instead of leaving the other
        ranks waiting for this one until the timeout."""
        try:
            xb, yb = (data or self.batch)(idx)
            t0 = time.perf_counter()
            correct, flags = chunk(xb, yb, idx.to(self.device))
            return correct.cpu(), list(flags), time.perf_counter() - t0, None
        except Exception as exc:
            if not self.world.many:
                raise
            self._failure = exc
            return None, [], 0.0, f"{type(exc).__name__}: {exc}"

    def _raise_failures(self, name: str, done: list) -> None:
        failed = [(r, d[3]) for r, d in enumerate(done) if d is not None and d[3] is not None]
        if not failed:
            return
        if self._failure is not None:
            raise self._failure
        rank, message = failed[0]
        raise EvaluationError(name, f"rank {rank} failed: {message}")

    # chunk functions -------------------------------------------------------------------

    def clean_chunk(self, xb: torch.Tensor, yb: torch.Tensor, keys: torch.Tensor):
        with torch.no_grad():
            logits = self.model(xb)
        check_logits(logits)
        return logits.argmax(1) == yb, []

    def attack_chunk(self, spec: AttackSpec, sub: str | None, eps: float, step: float) -> Chunk:
        if spec.kind == "aa":
            def run_aa(xb, yb, keys):
                return aa_mod.aa_correct(self.model, xb, yb, sub, eps=eps, norm=self.s.norm,
                                         seed=self.s.seed, version_name=spec.version)
            return run_aa

        def run_own(xb, yb, keys):
            return own_correct(self.model, xb, yb, keys, spec, eps=eps, step_size=step,
                               norm=self.s.norm, seed=self.s.seed), []
        return run_own

    def entry(self, prefix: str, spec: AttackSpec, on: torch.Tensor, eps: float, step: float
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One ``--attacks`` entry on ``on``: (survivors (N,) bool, per-job survivors)."""
        if spec.kind != "aa":
            ok = self.run(prefix + spec.name, on, self.attack_chunk(spec, None, eps, step),
                          keyed=True)
            return on & ok, {spec.name: on & ok}
        alive, subs = on.clone(), {}
        for sub in spec.subs:
            name = spec.job(sub)
            alive = alive & self.run(prefix + name, alive, self.attack_chunk(spec, sub, eps, step))
            subs[name] = alive.clone()
        return alive, subs

    def zero_gradient_fraction(self, on: torch.Tensor) -> float | None:
        """Fraction of the ``on`` examples whose CE input gradient is exactly zero (1 F + 1 B);
        each rank checks its shard of them."""
        idx = on.nonzero().squeeze(1)
        if idx.numel() == 0:
            return None
        total = int(idx.numel())
        rows = self.world.shard(total)
        idx = idx[rows.start:rows.stop]
        zero = 0
        ce = make_loss("ce")
        for start in range(0, int(idx.numel()), self.s.batch_size):
            xb, yb = self.batch(idx[start:start + self.s.batch_size])
            xb.requires_grad_(True)
            loss, _ = ce(self.model, xb, yb, torch.arange(xb.shape[0]))
            (g,) = torch.autograd.grad(loss.float().sum(), xb)
            zero += int((g.flatten(1).abs().amax(1) == 0).sum())
        count = torch.tensor([float(zero)], device=self.device if self.world.many else "cpu")
        self.world.sum_(count)
        return int(count.item()) / total


def bits(flags: torch.Tensor) -> str:
    """(N,) bool -> a string of N '0' / '1' (the JSON form of per-example outcomes)."""
    return (flags.cpu().numpy().astype("u1") + ord("0")).tobytes().decode("ascii")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings, *,
             state_path=None, progress: bool | None = None, device: torch.device | None = None,
             log: Callable[[str], None] | None = None, save_every_s: float = 5.0,
             world: World = SINGLE) -> dict[str, Any]:
    """Evaluate ``model`` on x (N, C, H, W) uint8 or [0, 1] float, y (N,); returns the result
    dict (the ``adaptrain eval`` JSON without provenance). Resumes from ``state_path``, which
    is written at most every ``save_every_s`` seconds (and at the end of every job).

    With a ``world`` of several ranks, every rank calls this with the same model, x, y and
    settings; the work is sharded and every rank returns the whole result; only rank 0 reads
    and writes ``state_path`` and logs."""
    s = settings
    model = shard.unwrap(model)
    log = log if world.main else None
    check_finite(model)
    device = device or next(model.parameters()).device
    specs = parse_list(list(s.attacks), aa_version=s.aa_version, aa_attacks=s.aa_attacks)
    step = parse_step(s.step)
    check_budgets(s)
    warnings_out = check_inputs(x)
    state = EvalState(state_path if world.main else None, fingerprint(model, x, y, s),
                      int(y.shape[0]), save_every_s)
    if world.many:  # rank 0's saved state (if any) is everyone's
        state.jobs, state.resumed, state.stale = shard.broadcast_object(
            world, (state.jobs, state.resumed, state.stale))
    if state.resumed and log:
        log(f"resuming the evaluation from {state_path}")
    if state.stale and log:
        log(f"ignoring {state_path}: it holds a partial evaluation of other weights, data or "
            "settings (for AutoAttack and corruptions, also another batch size); starting over")
    net: nn.Module = model
    if s.bf16:
        if log:
            log("WARNING: " + BF16_WARNING)
        warnings_out.append(BF16_WARNING)
        net = Autocast(model, device.type)
    before = buffers_snapshot(model)
    n = int(y.shape[0])
    out: dict[str, Any] = {"n_examples": n, "eps": s.eps, "norm": s.norm,
                           "step_size": step_for(step, s.eps), "mode": "cascade" if s.cascade
                           else "independent"}
    with engine.frozen_model(model, "eval"):
        assert_eval_mode(model, "before the attacks")
        ev = Evaluator(net, x, y, s, state, device, progress, world)
        everything = torch.ones(n, dtype=torch.bool)
        clean = everything & ev.run("clean", everything, ev.clean_chunk, keyed=True)
        accuracy = {"clean": clean.float().mean().item()}
        correct = {"clean": bits(clean)}  # every example's outcome, for paired comparisons
        per_job: dict[str, torch.Tensor] = {"clean": clean}
        survivors = clean.clone()
        worst = clean.clone()
        for spec in specs[1:]:
            on = survivors if s.cascade else clean
            alive, subs = ev.entry("", spec, on, s.eps, step_for(step, s.eps))
            per_job.update(subs)
            accuracy[spec.name] = alive.float().mean().item()
            correct[spec.name] = bits(alive)
            if spec.kind == "aa" and spec.name == "aa":
                for k, v in subs.items():
                    accuracy[k] = v.float().mean().item()
                    correct[k] = bits(v)
            worst &= alive
            survivors = alive if s.cascade else survivors
        out["accuracy"] = accuracy
        out["worst_case"] = worst.float().mean().item() if len(specs) > 1 else accuracy["clean"]
        correct["worst_case"] = bits(worst)
        out["correct"] = correct
        out["timing_s"] = {k: round(v["seconds"], 3) for k, v in state.jobs.items()}
        aa_flags = sorted({f for v in state.jobs.values() for f in v["flags"]})

        curve = None
        if s.curve:
            cspec = parse_spec(s.curve_attack, "--curve-attack", aa_version=s.aa_version,
                               aa_attacks=s.aa_attacks)
            cstep = parse_step(s.curve_step, "--curve-step")
            accs, curve_correct = [], []
            for e in sorted(float(v) for v in s.curve):
                alive = (clean if e == 0 else
                         ev.entry(f"curve@{e:.6g}/", cspec, clean, e, step_for(cstep, e))[0])
                accs.append(accuracy["clean"] if e == 0 else alive.float().mean().item())
                curve_correct.append(bits(alive))
            curve = {"attack": cspec.name, "step": str(s.curve_step),
                     "eps": sorted(float(v) for v in s.curve), "accuracy": accs,
                     "correct": curve_correct}
        out["curve"] = curve
        out["rd"] = (robustness_disparity(curve["eps"], curve["accuracy"], accuracy["clean"])
                     if curve else None)

        out["corruptions"] = _corruptions(ev, s) if s.corruptions else None
        zero_frac = ev.zero_gradient_fraction(clean) if s.zero_grad_check else None
        assert_eval_mode(model, "after the attacks")
    assert_buffers_unchanged(model, before)

    gap, gap_name = _pgd_aa_gap(specs, per_job, clean, s.cascade)
    ran_aa = any(sp.kind == "aa" for sp in specs)
    out["checks"] = [
        checks_mod.robust_le_clean(accuracy, out["worst_case"]),
        checks_mod.monotone_in_eps(curve),
        checks_mod.pgd_aa_gap(gap, gap_name, s.gap_threshold),
        checks_mod.square_vs_whitebox(_square_gain(specs, per_job, n)),
        checks_mod.zero_gradients(zero_frac),
        checks_mod.aa_flags(aa_flags if ran_aa else None),
    ]
    out["warnings"] = warnings_out
    out["normalisation_inside_model"] = has_internal_normalisation(model)
    out["per_example"] = {k: v for k, v in per_job.items()}  # (N,) bool, for callers; not in JSON
    out["_state"] = state
    return out


def _pgd_aa_gap(specs: list[AttackSpec], per_job: dict[str, torch.Tensor], clean: torch.Tensor,
                cascade: bool) -> tuple[float | None, str | None]:
    """Fraction of examples that survived the first PGD-type attack but not AutoAttack."""
    names = [sp.name for sp in specs]
    own = next((sp for sp in specs if sp.kind in ("pgd", "cw")), None)
    aa = next((sp for sp in specs if sp.kind == "aa"), None)
    if own is None or aa is None:
        return None, None
    if cascade and names.index(aa.name) < names.index(own.name):
        return None, None  # PGD only saw AutoAttack's survivors
    aa_final = per_job[aa.job(aa.subs[-1])]
    n = clean.numel()
    return float((per_job[own.name] & ~aa_final).sum()) / n, own.name


def _square_gain(specs: list[AttackSpec], per_job: dict[str, torch.Tensor], n: int) -> float | None:
    """Fraction of examples broken by Square among those the earlier white-box attacks left."""
    for sp in specs:
        if sp.kind == "aa" and "square" in sp.subs:
            i = sp.subs.index("square")
            if i == 0:
                return None
            before, after = per_job[sp.job(sp.subs[i - 1])], per_job[sp.job("square")]
            return float((before & ~after).sum()) / n
    return None


def _corruptions(ev: Evaluator, s: EvalSettings) -> dict[str, Any]:
    """Accuracy per corruption and severity on every example (not only the clean-correct)."""
    from ..corruptions import CORRUPTIONS, corrupt

    names = list(CORRUPTIONS) if list(s.corruptions) in (["all"], ["common"]) else list(s.corruptions)
    everything = torch.ones(ev.n, dtype=torch.bool)
    table: dict[str, dict[str, float]] = {}
    for name in names:
        table[name] = {}
        for sev in s.severities:
            def data(idx: torch.Tensor, name=name, sev=sev):
                xb = ev.x[idx]
                xc = corrupt(xb, name, int(sev), seed=s.seed * 1009 + int(idx[0]), table=s.corruption_table)
                return xc.to(ev.device, ev.dtype), ev.y[idx].to(ev.device)
            ok = ev.run(f"corruption/{name}/{sev}", everything, ev.clean_chunk, data=data)
            table[name][str(sev)] = ok.float().mean().item()
    mean = {k: sum(v.values()) / len(v) for k, v in table.items()}
    return {"severities": [int(v) for v in s.severities], "accuracy": table, "mean": mean,
            "mean_all": sum(mean.values()) / len(mean) if mean else None, "table": s.corruption_table}
