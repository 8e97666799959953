"""Evaluation cost: wall time of AutoAttack standard on CIFAR-10 test images with
the share of each sub-attack, cascade (official AutoAttack behaviour: each sub-attack on the
survivors) vs each sub-attack on every clean-correct example; and the complete evaluation of
one adversarially trained model.

Usage (from the repository root; RUN is a run directory trained on CIFAR-10):

    python benchmarks/evaluation.py aa-time RUN --n 1000 [--independent-n 200]
    python benchmarks/evaluation.py full RUN --n 1000

``aa-time`` runs the standard version once as a cascade on ``--n`` examples, then every
sub-attack alone on every clean-correct example of the first ``--independent-n`` (the
independent run is slow; its time is also reported scaled to ``--n``). ``full`` runs clean,
PGD-20, PGD-50-10, CW-20, AutoAttack standard, the worst case, a PGD-20 eps-curve (RD) and the
15 corruptions at severities 1-5 — the same as
``adaptrain eval RUN --attacks clean,pgd-20,pgd-50-10,cw-20,aa --no-cascade
--eps-curve 0,2/255,4/255,8/255,12/255,16/255 --corruptions all --n 1000``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adaptrain.evaluate import EvalSettings, evaluate
from adaptrain.runs import load_model


def test_set(run: str, n: int):
    model, cfg, arrays, _ = load_model(run, "best")
    return model, arrays.x_test[:n], arrays.y_test[:n]


def aa_time(args: argparse.Namespace) -> dict:
    model, x, y = test_set(args.run, args.n)
    out = {}
    t0 = time.perf_counter()
    cas = evaluate(model, x, y, EvalSettings(attacks=["aa"], batch_size=args.batch_size,
                                             zero_grad_check=False), progress=False)
    total = time.perf_counter() - t0
    subs = {k: v for k, v in cas["timing_s"].items() if k.startswith("aa/")}
    out["cascade"] = {"wall_s": round(total, 1), "accuracy": cas["accuracy"],
                      "seconds": subs, "share": {k: round(v / sum(subs.values()), 3)
                                                 for k, v in subs.items()}}
    m = args.independent_n
    xi, yi = x[:m], y[:m]
    t0 = time.perf_counter()
    ind = evaluate(model, xi, yi, EvalSettings(attacks=["apgd-ce", "apgd-t", "fab-t", "square"],
                                               cascade=False, batch_size=args.batch_size,
                                               zero_grad_check=False), progress=False)
    total_i = time.perf_counter() - t0
    subs_i = {k: v for k, v in ind["timing_s"].items() if k != "clean"}
    out["independent"] = {"n": m, "wall_s": round(total_i, 1), "seconds": subs_i,
                          "scaled_to_n_s": round(total_i * args.n / m, 1),
                          "accuracy": ind["accuracy"], "worst_case": ind["worst_case"]}
    out["cascade_on_first_m"] = {"worst_case": cas["per_example"]["aa/square"][:m].float().mean().item()}
    out["speedup_cascade"] = round(out["independent"]["scaled_to_n_s"] / total, 2)
    return out


def full(args: argparse.Namespace) -> dict:
    model, x, y = test_set(args.run, args.n)
    s = EvalSettings(attacks=["pgd-20", "pgd-50-10", "cw-20", "aa"], cascade=False,
                     curve=[0, 2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255],
                     corruptions=["all"], batch_size=args.batch_size)
    t0 = time.perf_counter()
    r = evaluate(model, x, y, s, progress=False)
    return {"wall_s": round(time.perf_counter() - t0, 1), "accuracy": r["accuracy"],
            "worst_case": r["worst_case"], "rd": r["rd"], "curve": r["curve"],
            "corruption_mean": r["corruptions"]["mean_all"], "corruptions": r["corruptions"]["mean"],
            "checks": r["checks"], "timing_s": r["timing_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["aa-time", "full"])
    p.add_argument("run")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--independent-n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    result = aa_time(args) if args.what == "aa-time" else full(args)
    result["threads"] = torch.get_num_threads()
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
