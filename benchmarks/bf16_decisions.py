"""Does bf16 autocast flip the per-sample decisions of the adaptive methods? One trained model,
the same test images, each decision computed in fp32 and under bf16 autocast + channels_last:

- ECAS's entropy rule: which of the three groups (H > h_high, H < h_low, between) a sample
  falls in, with the data set's default thresholds (as the ecas presets use) and with the
  terciles of the fp32 entropies (a trained model puts nearly every sample below the default
  h_low; terciles put a third of the samples on each side of each threshold);
- SAAT's search (SA-PGD from eps_0 = 0, no random start, BatchNorm in eval mode): the final
  budget of each sample, i.e. at which round its loss first reached rho;
- PGD-20 at the evaluation budget: whether each sample ends misclassified.

    python benchmarks/bf16_decisions.py RUN_DIR [--n 360] [--rho 1.5] [--tau 0.01 --eps-max 0.2]

Budgets in [0, 1] units (digits: the features scaled to [0, 1]). CPUs without native bf16
emulate it: the answer is the same, only slower.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch

from adaptrain import checkpoint
from adaptrain.attacks.pgd import pgd
from adaptrain.attacks.plan import AttackPlan
from adaptrain.attacks.sa_pgd import SAPGDSettings, sa_pgd
from adaptrain.config import load_config_file
from adaptrain.data import load_arrays, make_splits
from adaptrain.models import build_model
from adaptrain.strategies.ecas import default_thresholds, entropy


def groups(h: torch.Tensor, hi: float, lo: float) -> torch.Tensor:
    return (h > hi).long() - (h < lo).long()  # +1 high, -1 low, 0 between


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--rho", type=float, default=1.5)
    parser.add_argument("--tau", type=float, default=0.01)
    parser.add_argument("--eps-max", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cfg = load_config_file(args.run / "config.yaml")
    splits = make_splits(load_arrays(cfg.data.name, cfg.data.root, False), subset=cfg.data.subset,
                         val_size=cfg.data.val_size, split_seed=cfg.data.split_seed)
    fp32 = build_model(cfg.model, splits.spec).eval()
    checkpoint.load_into(fp32, checkpoint.resolve(args.run, args.checkpoint))
    bf16 = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    x = splits.x_test[: args.n].float() / 255
    y = splits.y_test[: args.n]
    hi, lo = default_thresholds(cfg.data.name, splits.spec.num_classes)
    eps = float(cfg.eval.eps)
    sa_plan = AttackPlan(eps=args.eps_max, step_size=args.tau / 4, steps=4, norm="linf",
                         random_start="none", stop_loss=args.rho, bn="eval")
    search = SAPGDSettings(eps_0=0.0, tau=args.tau)
    pgd_plan = AttackPlan(eps=eps, step_size=eps / 10, steps=20, norm="linf",
                          random_start="none", bn="eval")
    out: dict[str, dict[str, torch.Tensor]] = {}
    terciles: tuple[float, float] | None = None
    for name, model, amp in (("fp32", fp32, False), ("bf16", bf16, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                h = entropy(model(x))
            sa = sa_pgd(model, x, y, sa_plan, search=search)
            adv = pgd(model, x, y, pgd_plan)
            with torch.no_grad():
                wrong = model(adv.x_adv).argmax(1) != y
        if terciles is None:
            q = torch.quantile(h.float(), torch.tensor([2 / 3, 1 / 3]))
            terciles = (float(q[0]), float(q[1]))
        out[name] = {"group": groups(h, hi, lo), "tercile": groups(h, *terciles), "h": h,
                     "eps": sa.info["eps"], "wrong": wrong}
    a, b = out["fp32"], out["bf16"]
    rounds = ((a["eps"] - b["eps"]).abs() / args.tau).round()
    result = {
        "run": str(args.run), "n": len(y), "thresholds": [hi, lo], "rho": args.rho,
        "tau": args.tau, "eps_max": args.eps_max, "pgd_eps": eps,
        "ecas_group_agreement": float((a["group"] == b["group"]).float().mean()),
        "ecas_groups_fp32": [int((a["group"] == g).sum()) for g in (1, 0, -1)],
        "tercile_thresholds": terciles,
        "ecas_tercile_agreement": float((a["tercile"] == b["tercile"]).float().mean()),
        "entropy_max_abs_diff": float((a["h"] - b["h"]).abs().max()),
        "saat_same_budget": float((rounds == 0).float().mean()),
        "saat_budget_diff_rounds_max": int(rounds.max()),
        "saat_mean_budget": [float(a["eps"].mean()), float(b["eps"].mean())],
        "pgd20_outcome_agreement": float((a["wrong"] == b["wrong"]).float().mean()),
        "pgd20_robust_acc": [1 - float(a["wrong"].float().mean()), 1 - float(b["wrong"].float().mean())],
    }
    assert math.isfinite(result["entropy_max_abs_diff"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
