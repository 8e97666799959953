"""DRA fine-tuning benchmarks: does fine-tuning a clean model on clean + DRA examples
raise PGD robustness without costing clean accuracy (Hou et al., Tables II-IV, VI)?

Sections (``--sections``, comma list; all by default):

* ``cifar``: CIFAR-10 (narrow ResNet-18 on a subset): vanilla (``standard``) vs DRA fine-tuned
  from it (``dra-finetune``) vs TRADES with a small beta (``trades-small``, from scratch):
  clean accuracy and PGD-20 at 2 / 5 / 8 /255 (step eps/20), the change against vanilla, and
  the verdict of the paper's goal (clean within 0.5 points of vanilla, PGD@2 up).
* ``ablation``: the p ablation of Table VI (p = 0, 1/6, 1/3, 1/2, 1) at a short fine-tuning
  schedule from the same vanilla models; p = 0 is plain clean fine-tuning (the control).
* ``digits``: Table II on scikit-learn's digits (8x8) with the 2-conv 2-fc CNN: vanilla,
  TRADES beta 1 / 0.5 / 0.1 (eps 0.3, 40 steps of 0.01 as TRADES's MNIST script), and DRA
  fine-tuning (``dra-finetune-mnist``); clean and PGD-20 at 0.1 / 0.3 (step eps/20).

Seeds are interleaved (seed 0: every variant, seed 1: every variant, ...) and the tables
report medians over seeds. Each training run's wall time is recorded, and the forward /
backward passes of one training batch of each variant are counted exactly with
adaptrain.profiling. Usage (from the repository root):

    PYTHONPATH=src python benchmarks/dra.py --data /work/shared/data/cifar10-jpeg.tar.gz \\
        --subset 10000 --width 16 --seeds 0 1 2 --epochs-clean 30 --epochs-finetune 12 \\
        --epochs-trades 30 --ablation-epochs 6 --out dra-bench.json

Writes the JSON (and a markdown table next to it, ``.md``) and prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adaptrain.calibrate import spread_subset
from adaptrain.config import Config, build_config
from adaptrain.context import Batch, StepInfo
from adaptrain.evaluate import evaluate_attacks
from adaptrain.profiling import count_passes
from adaptrain.rundir import versions
from adaptrain.runs import load_model
from adaptrain.train import setup, train, training_loss

CIFAR_EPS = (2 / 255, 5 / 255, 8 / 255)
DIGITS_EPS = (0.1, 0.3)
P_GRID = ((0.0, "0"), (1 / 6, "1/6"), (1 / 3, "1/3"), (1 / 2, "1/2"), (1.0, "1"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def finetune_schedule(epochs: int) -> list[str]:
    """The paper's 50 + 10 of 60 epochs, scaled: the last sixth clean-only, lr /10 there."""
    clean = max(1, round(epochs / 6)) if epochs > 1 else 0
    decay = epochs - clean
    return [f"epochs={epochs}", f"strategy.decay_epochs={decay}", f"strategy.clean_epochs={clean}",
            f"optim.milestones=[{decay}]"]


def passes_per_batch(cfg: Config, workdir: Path) -> tuple[float, float]:
    """(F, B) of one training step of ``cfg`` (attack + loss + backward) on its first batch."""
    run = setup(cfg, workdir)
    x, y, idx = next(iter(run.loader))
    batch = Batch(run.model, x, y, idx, StepInfo(0, 0, 0, cfg.optim.lr))
    with count_passes(run.model) as count:
        plan = run.objective.prepare(batch, run.strategy.plan(batch))
        res = run.attack(run.model, x, y, plan, generator=run.generators["attack"])
        run.model.train()
        loss, _ = training_loss(run, run.model, batch, res.x_adv, plan)
        loss.mean().backward()
    return count.per_batch(x.shape[0])


def fit(name: str, preset: str, overrides: list[str], out: Path) -> dict[str, Any]:
    cfg = build_config(preset, overrides)
    t0 = time.perf_counter()
    summary = train(cfg, out, preset=preset, progress=False, log=lambda line: None)
    f, b = passes_per_batch(cfg, out.parent / f".{out.name}-probe")
    log(f"  {name}: {time.perf_counter() - t0:.0f}s")
    return {"run": str(out), "wall_time_s": summary["wall_time_s"], "passes_per_batch": [f, b]}


def measure(out: Path, eps_list: tuple[float, ...], n: int, seed: int, device: str) -> dict[str, float]:
    """Clean and PGD-20 (step eps/20) accuracy of the run's last checkpoint on n test images
    (a fixed random sample, the same for every variant)."""
    model, _, arrays, _ = load_model(str(out), "last", device=device)
    x, y = spread_subset(arrays.x_test, arrays.y_test, n)  # test images are sorted by class
    row: dict[str, float] = {}
    for eps in eps_list:
        res = evaluate_attacks(model, x, y, ["pgd-20"], eps=eps, step_size=eps / 20, seed=seed)
        row["clean"] = res["clean"].float().mean().item()
        row[f"pgd20@{eps_label(eps)}"] = res["pgd-20"].float().mean().item()
    return row


def eps_label(eps: float) -> str:
    k = eps * 255
    return f"{k:.0f}/255" if abs(k - round(k)) < 1e-6 and eps < 0.05 else f"{eps:g}"


def medians(rows: list[dict[str, Any]], key: str = "variant") -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r[key] for r in rows):
        group = [r for r in rows if r[key] == name]
        metrics = [k for k, v in group[0].items() if isinstance(v, float)]
        out[name] = {k: statistics.median(r[k] for r in group) for k in metrics}
    return out


def common(args: argparse.Namespace, seed: int) -> list[str]:
    return [f"seed={seed}", "data.name=imagefolder", f"data.root={args.data}",
            f"model.width={args.width}", f"model.name={args.model}", f"eval.n={args.n_val}",
            f"data.val_size={args.n_val}", f"device={args.device}",
            *([f"data.subset={args.subset}"] if args.subset else [])]


def vanilla_run(args: argparse.Namespace, seed: int, work: Path,
                cache: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Phase 1 of ``seed`` (trained once, shared by the cifar and ablation sections)."""
    if seed not in cache:
        out = work / f"cifar-s{seed}-vanilla"
        cache[seed] = fit("vanilla", "standard", [*common(args, seed), f"epochs={args.epochs_clean}"],
                          out)
    return cache[seed]


def section_cifar(args: argparse.Namespace, work: Path, cache: dict[int, dict[str, Any]]
                  ) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        log(f"[cifar] seed {seed}")
        runs = {"vanilla": vanilla_run(args, seed, work, cache)}
        base = runs["vanilla"]["run"]
        runs["dra-finetune"] = fit(
            "dra-finetune", "dra-finetune",
            [*common(args, seed), f"init_from={base}", *finetune_schedule(args.epochs_finetune)],
            work / f"cifar-s{seed}-dra")
        et = args.epochs_trades
        runs["trades-small"] = fit(
            "trades-small", "trades-small",
            [*common(args, seed), f"epochs={et}", f"optim.milestones=[{max(1, round(et * 75 / 76))}]",
             f"objective.beta={args.trades_beta}"],
            work / f"cifar-s{seed}-trades")
        for name, rec in runs.items():
            acc = measure(Path(rec["run"]), CIFAR_EPS, args.n_eval, seed, args.device)
            rows.append({"variant": name, "seed": seed, **acc, "wall_time_s": float(rec["wall_time_s"]),
                         "F_per_batch": float(rec["passes_per_batch"][0]),
                         "B_per_batch": float(rec["passes_per_batch"][1])})
    med = medians(rows)
    van, ours = med["vanilla"], med["dra-finetune"]
    verdict = {"clean_change_points": 100 * (ours["clean"] - van["clean"]),
               "pgd2_change_points": 100 * (ours["pgd20@2/255"] - van["pgd20@2/255"])}
    verdict["clean_preserved"] = verdict["clean_change_points"] >= -0.5
    verdict["pgd2_rises"] = verdict["pgd2_change_points"] > 0
    return {"rows": rows, "median": med, "verdict": verdict}


def section_ablation(args: argparse.Namespace, work: Path, cache: dict[int, dict[str, Any]]
                     ) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        log(f"[ablation] seed {seed}")
        base = vanilla_run(args, seed, work, cache)["run"]
        for p, label in P_GRID:
            rec = fit(f"p={label}", "dra-finetune",
                      [*common(args, seed), f"init_from={base}", f"attack.p={p}",
                       *finetune_schedule(args.ablation_epochs)],
                      work / f"ablation-s{seed}-p{label.replace('/', '_')}")
            acc = measure(Path(rec["run"]), CIFAR_EPS, args.n_eval, seed, args.device)
            rows.append({"variant": f"p={label}", "seed": seed, **acc,
                         "wall_time_s": float(rec["wall_time_s"]),
                         "F_per_batch": float(rec["passes_per_batch"][0]),
                         "B_per_batch": float(rec["passes_per_batch"][1])})
    return {"rows": rows, "median": medians(rows)}


def section_digits(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        log(f"[digits] seed {seed}")
        base = [f"seed={seed}", "data.name=digits", "data.val_size=0", "data.augment=none",
                f"model.width={args.digits_width}", "eval.n=360", "eval.eps=0.1",
                "eval.step_size=0.005", f"device={args.device}",
                *([f"data.subset={args.digits_subset}"] if args.digits_subset else [])]
        runs: dict[str, dict[str, Any]] = {}
        van = work / f"digits-s{seed}-vanilla"
        runs["vanilla"] = fit("vanilla", "standard-mnist", [*base, f"epochs={args.digits_epochs}"], van)
        for beta in (1.0, 0.5, 0.1):
            runs[f"trades(1/lambda={beta:g})"] = fit(
                f"trades {beta}", "trades-small",
                [*base, "model.name=cnn2c2f", f"epochs={args.digits_epochs}", f"objective.beta={beta}",
                 "strategy.eps=0.3", "strategy.step_size=0.01",
                 f"strategy.steps={args.digits_trades_steps}",
                 "optim.lr=0.01", "optim.weight_decay=2e-4", "optim.schedule=cosine",
                 "data.batch_size=128"],
                work / f"digits-s{seed}-trades{beta:g}")
        runs["dra-finetune"] = fit(
            "dra-finetune", "dra-finetune-mnist",
            [*base, f"init_from={van}", f"epochs={args.digits_epochs_finetune}",
             f"strategy.eps={args.digits_dra_eps}"],
            work / f"digits-s{seed}-dra")
        for name, rec in runs.items():
            acc = measure(Path(rec["run"]), DIGITS_EPS, 360, seed, args.device)
            rows.append({"variant": name, "seed": seed, **acc, "wall_time_s": float(rec["wall_time_s"]),
                         "F_per_batch": float(rec["passes_per_batch"][0]),
                         "B_per_batch": float(rec["passes_per_batch"][1])})
    return {"rows": rows, "median": medians(rows)}


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    titles = {"cifar": "CIFAR-10: vanilla vs DRA fine-tuned vs TRADES-small (Tables III-IV)",
              "ablation": "CIFAR-10: DRA kept fraction p (Table VI)",
              "digits": "Digits: Table II"}
    for key, title in titles.items():
        if key not in result:
            continue
        med = result[key]["median"]
        cols = list(next(iter(med.values())))
        lines += [f"## {title} (median over seeds {result['args']['seeds']})", "",
                  "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, m in med.items():
            cells = [f"{100 * m[c]:.2f}" if c == "clean" or c.startswith("pgd") else f"{m[c]:.1f}"
                     for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if "verdict" in result[key]:
            v = result[key]["verdict"]
            lines += ["", f"DRA vs vanilla: clean {v['clean_change_points']:+.2f} points "
                      f"({'preserved' if v['clean_preserved'] else 'NOT preserved'} at -0.5), "
                      f"PGD@2 {v['pgd2_change_points']:+.2f} points "
                      f"({'rises' if v['pgd2_rises'] else 'does not rise'})."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="cifar,ablation,digits")
    p.add_argument("--data", default="/work/shared/data/cifar10-jpeg.tar.gz",
                   help="CIFAR-10 ImageFolder directory or .tar.gz (sections cifar, ablation)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 = full)")
    p.add_argument("--subset", type=int, default=10000, help="training images (0: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs-clean", type=int, default=30, help="phase 1 (vanilla) epochs")
    p.add_argument("--epochs-finetune", type=int, default=12, help="DRA fine-tuning epochs")
    p.add_argument("--epochs-trades", type=int, default=30)
    p.add_argument("--trades-beta", type=float, default=0.05, help="1/lambda (paper: 0.05, 0.01)")
    p.add_argument("--ablation-epochs", type=int, default=6)
    p.add_argument("--digits-epochs", type=int, default=30)
    p.add_argument("--digits-epochs-finetune", type=int, default=20)
    p.add_argument("--digits-width", type=int, default=10)
    p.add_argument("--digits-dra-eps", type=float, default=0.1)
    p.add_argument("--digits-trades-steps", type=int, default=40, help="TRADES inner steps of 0.01")
    p.add_argument("--digits-subset", type=int, default=0, help="training digits (0: all 1437)")
    p.add_argument("--n-eval", type=int, default=1000, help="test examples evaluated")
    p.add_argument("--n-val", type=int, default=500, help="held-out examples for model selection")
    p.add_argument("--device", default="auto")
    p.add_argument("--workdir", default=None, help="run directories (default: a temporary dir)")
    p.add_argument("--out", default="dra-bench.json")
    args = p.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dra-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"args": vars(args), "workdir": str(work), "versions": versions()}
    cache: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    if "cifar" in sections:
        result["cifar"] = section_cifar(args, work, cache)
    if "ablation" in sections:
        result["ablation"] = section_ablation(args, work, cache)
    if "digits" in sections:
        result["digits"] = section_digits(args, work)
    result["wall_time_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps(result, indent=2))
    print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    main()
