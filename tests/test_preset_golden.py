"""Golden weights: every preset, shrunk to the embedded digits, still trains the way it trained
when ``tests/golden/preset_weights-MACHINE.json`` was recorded on this kind of CPU.

The safety net for refactors that must not change behaviour. Each preset runs through the
in-process loop (``adaptrain.train.train``) with ``SHRINK`` (digits, 64 images in 2 batches of
32, 2 epochs so that epoch-dependent paths run: UIAT momentum and the one-off reuse, ECAS's
cyclic walk, DRA fine-tuning's clean tail; 16 evaluation images; CPU, one thread) plus what
:func:`overrides_for` derives from the resolved preset: ``small_cnn`` width 4, or ``cnn2c2f``
(the dropout model) width 2 for presets of that family; LAS's policy backbone small and k = 2
so that the policy learns within the run; AWP warm-ups cut to one epoch so that AWP acts; DRA
fine-tuning's schedule fitted to the 2 epochs. Every preset starts (``init_from``) from a
clean run of its model family trained first (``WARM``; small_cnn reaches ~75 % training
accuracy): on an untrained model adversarial examples, inverse targets, entropies and loss
thresholds hardly differ between samples, and a change in them would hardly show.

Per preset the JSON holds statistics of the update the run made to the weights, see
:func:`weight_stats`, compared with relative tolerance ``RTOL``. Measured when the file was
recorded: with one thread a run is bit-exact on one machine; changing one setting slightly
(DRA's p 1/3 -> 0.34, UIAT's momentum 0.9 -> 0.89, PGD's step 2 -> 2.01/255, TRADES's beta
6 -> 6.01, ECAS's h_low, SAAT's rho 1.7 -> 1.69, AWP's gamma 0.01 -> 0.0101) moves the
statistics by 8e-5 to 4e-2 relative. Another order of float reductions (two threads instead
of one, as another CPU or torch version may bring) moved 49 of the 56 presets then by < 2e-6,
and the seven whose attack takes the sign of near-zero gradients or thresholds per-sample
values (TRADES's KL attack, ECAS's entropy guidance; trades, trades+dra, las-trades*,
ecas-awp*) by up to 3e-3.
So the values are kept per kind of CPU (MACHINE: the architecture and the widest vector
extension, which decides oneDNN's kernels and so the order of float sums; measured
2026-12-04: 7 of the 69 presets' statistics differ beyond ``RTOL`` between an AVX2 and an
AVX512-BF16 x86 machine, the most uiat-extra's weight sum, by 3 %; all in fp32, to which the
suite pins ``auto`` precision). On a new kind of CPU or
torch version (the JSON records the one used), first record at a commit known to be good,
then compare.

After an *intended* behaviour change, re-record only the presets it legitimately changes, and
say in the commit which presets changed and why:

    ADAPTRAIN_REGOLD=1 pytest tests/test_preset_golden.py -k "dra-finetune or pgd-at+dra"

Without ``-k`` every entry is re-recorded and entries of deleted presets are dropped. A new
preset fails here until it has an entry. The whole file takes about 45 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adaptrain import checkpoint, precision
from adaptrain.config import Config, build_config, preset_names
from adaptrain.data.extra import EXTRA_REQUIRED
from adaptrain.train import setup, train


def machine_class() -> str:
    """``x86_64-avx2``, ``x86_64-avx512_bf16``, ...: the CPU's widest vector extension."""
    text = precision.CPUINFO.read_text() if precision.CPUINFO.is_file() else ""
    flags = precision.cpu_flags(text)
    isa = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "sve", "asimd")
                if f in flags), "")
    return f"{platform.machine()}-{isa}" if isa else platform.machine()


GOLDEN = Path(__file__).parent / "golden" / f"preset_weights-{machine_class()}.json"
REGOLD = os.environ.get("ADAPTRAIN_REGOLD") == "1"
RTOL = 1e-6
SHRINK = ["data.name=digits", "data.subset=64", "data.batch_size=32", "data.val_size=0", "epochs=2",
          "eval.n=16", "device=cpu"]
# model family -> (the clean preset of that family, the overrides that shrink its model)
FAMILIES = {"small_cnn": ("standard", ["model.name=small_cnn", "model.width=4"]),
            "cnn2c2f": ("standard-mnist", ["model.name=cnn2c2f", "model.width=2"])}
# the clean run every preset starts from: 48 SGD steps, no augmentation (8x8 digits lose too
# much to a 4-pixel crop); float noise stays at ~2e-7 relative through it
WARM = ["epochs=6", "data.subset=512", "data.batch_size=64", "data.augment=none",
        "optim.schedule=constant", "optim.lr=0.1"]


class Runs:
    """The runs of one test session under ``root``: the warm start of each model family and
    each preset, every one trained once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[str, Path] = {}
        self.initial: dict[str, dict[str, torch.Tensor]] = {}  # weights before the first step

    def warm(self, family: str) -> Path:
        """The clean run of ``family``'s model that every preset of the family starts from."""
        out = self.root / f"warm-{family}"
        if not out.exists():
            source, model = FAMILIES[family]
            train(build_config(source, [*SHRINK, *model, *WARM]), out, progress=False,
                  log=lambda line: None)
        return out

    def train(self, name: str) -> Path:
        if name not in self.done:
            cfg = build_config(name, [*SHRINK, *overrides_for(name, self)])
            out = self.root / name
            start = setup(cfg, out).model.state_dict()  # the model after init_from, before any step
            self.initial[name] = {k: v.detach().clone() for k, v in start.items()}
            train(cfg, out, progress=False, log=lambda line: None)
            self.done[name] = out
        return self.done[name]

    def extra(self) -> Path:
        """Generated-data stand-in for presets that require ``data.extra``: 256 fixed random
        digits-shaped images (uint8 (N, 8, 8, 1)) with labels 0..9."""
        path = self.root / "extra.npz"
        if not path.exists():
            rng = np.random.default_rng(0)
            np.savez(path, image=rng.integers(0, 256, (256, 8, 8, 1), dtype=np.uint8),
                     label=rng.integers(0, 10, 256))
        return path

    def stats(self, name: str) -> dict[str, Any]:
        """:func:`weight_stats` of ``name``'s run (trained if it was not yet)."""
        last = checkpoint.load_weights(self.train(name) / "checkpoints" / "last")
        return weight_stats(self.initial[name], last)


def overrides_for(name: str, runs: Runs) -> list[str]:
    """What ``name`` needs, beyond SHRINK, to take a few meaningful steps on digits."""
    cfg: Config = build_config(name)
    family = cfg.model["name"] if cfg.model["name"] in FAMILIES else "small_cnn"
    over = [*FAMILIES[family][1], f"init_from={runs.warm(family)}"]
    if cfg.strategy["name"] == "las":
        over += ["strategy.backbone={name: small_cnn, width: 4}", "strategy.k=2"]
    if cfg.strategy["name"] == "dra_schedule":
        over += ["strategy.decay_epochs=1", "strategy.clean_epochs=1"]
    if cfg.awp.warmup > 0:
        over += ["awp.warmup=1"]
    if cfg.data.extra == EXTRA_REQUIRED:
        over += [f"data.extra={runs.extra()}"]
    return over


def weight_stats(initial: dict[str, torch.Tensor], last: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tensors and values counted; in float64 over the floating-point tensors, the sum of
    squares of the initial weights and the sum, sum of absolute values and sum of squares of
    the update (last - initial). The update, not the weights: a few steps move the weights by
    a small fraction of their size, so statistics of the weights themselves would hide a
    change of the training inside the tolerance."""
    assert initial.keys() == last.keys()
    keys = [k for k, t in last.items() if t.dtype.is_floating_point]
    update = [last[k].double() - initial[k].double() for k in keys]
    return {"tensors": len(last), "values": sum(t.numel() for t in last.values()),
            "init_sq_sum": sum(float(initial[k].double().square().sum()) for k in keys),
            "sum": sum(float(u.sum()) for u in update),
            "abs_sum": sum(float(u.abs().sum()) for u in update),
            "sq_sum": sum(float(u.square().sum()) for u in update)}


def read_golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"torch": "", "presets": {}}


def write_golden(data: dict[str, Any]) -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    data["torch"] = torch.__version__.split("+")[0]  # the version the values were recorded with
    data["presets"] = dict(sorted(data["presets"].items()))
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")


def mismatches(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The statistics of ``got`` that differ from ``want``: the counts at all, the sums beyond
    RTOL relative to their own size (the update's sum relative to its sum of absolute values,
    since a sum can cancel to near zero)."""
    bad = [f"{k}: {got[k]} != {want[k]}" for k in ("tensors", "values") if got[k] != want[k]]
    scale = {"init_sq_sum": want["init_sq_sum"], "sum": want["abs_sum"], "abs_sum": want["abs_sum"],
             "sq_sum": want["sq_sum"]}
    bad += [f"{k}: {got[k]!r} != {want[k]!r}" for k in scale
            if not math.isclose(got[k], want[k], rel_tol=0.0, abs_tol=RTOL * scale[k])]
    return bad


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # intra-op threads change the order of float reductions: one thread, the recorded order
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", preset_names())
def test_preset_trains_to_its_golden_weights(name: str, runs: Runs) -> None:
    got = runs.stats(name)
    if REGOLD:
        data = read_golden()
        data["presets"][name] = got
        write_golden(data)
        return
    golden = read_golden()
    want = golden["presets"].get(name)
    assert want is not None, (f"no golden entry for {name!r} in {GOLDEN.name}: record it with "
                              f"ADAPTRAIN_REGOLD=1 (on a new kind of CPU, at a commit known to be good)")
    bad = mismatches(got, want)
    assert not bad, (f"{name}: the trained weights changed ({'; '.join(bad)}); recorded with torch "
                     f"{golden['torch']}. If the change is intended, re-record (module docstring)")


def test_every_entry_is_a_preset() -> None:
    data = read_golden()
    stale = sorted(set(data["presets"]) - set(preset_names()))
    if REGOLD and stale:
        data["presets"] = {k: v for k, v in data["presets"].items() if k not in stale}
        write_golden(data)
        return
    assert not stale, f"golden entries of deleted presets: {stale}; re-record (module docstring)"
