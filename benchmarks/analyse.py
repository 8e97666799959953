"""A plan's claims, tested: paired differences with bootstrap intervals and a verdict each.

Called by ``compare.py PLAN --out OUT --analyse``. A plan lists its claims:

    claims:
      - claim: "SAAT-up: a smaller best-last gap and a lower RD than PGD-AT"
        parts:
          - {method: saat-up, baseline: pgd-at, metric: gap:aa, direction: less}
          - {method: saat-up, baseline: pgd-at, metric: rd, direction: less}
      - claim: "DRA: clean accuracy within 0.5 points, PGD@2 up"
        parts:
          - {method: dra, baseline: clean, metric: clean, direction: greater, margin: -0.005,
             checkpoint: last, baseline_checkpoint: best}

``metric``: a key of the eval JSON's per-example ``correct`` (clean, pgd-20, cw-20, aa,
aa/apgd-ce, worst_case, ...), ``rd`` (each example's share of the robustness disparity), or
``gap:<key>`` (best minus last checkpoint, per example). ``checkpoint`` (default best) and
``baseline_checkpoint`` (default: the same) pick the evaluated checkpoints; ``eval: NAME`` a
run's named extra evaluation (compare.py's ``extra_evals``) instead of the plan's. Pairs are formed
over the seeds both runs have; a part with none is "not run", a part with fewer seeds than
the plan's is "provisional" (its interval cannot hold the seed-to-seed variation it has not
seen; a claim is provisional when any of its parts is). The statistics are
:mod:`adaptrain.paired`. Writes OUT/analysis.md, OUT/analysis.json, OUT/figures/claim-K.png
(one forest plot per claim) and OUT/figures/best-last-gap.png (validation robust accuracy
below its best so far, per epoch, mean over seeds, one line per run on the plan's protocol:
runs with their own ``eval`` are left out).
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from adaptrain import paired

NOT_RUN = "not run"


def eval_path(run: Path, which: str, name: str = "") -> Path:
    """The eval JSON of a run's ``which`` checkpoint: the plan's evaluation, or the named extra
    one (compare.py writes them here, this module reads them)."""
    return run / "eval" / (f"{which}-{name}.json" if name else f"{which}.json")


def _eval(out: Path, label: str, seed: int, which: str, name: str = "") -> dict | None:
    f = eval_path(out / label / f"seed{seed}", which, name)
    return json.loads(f.read_text()) if f.is_file() else None


def per_example(out: Path, label: str, seed: int, metric: str, which: str, name: str = ""
                ) -> np.ndarray | None:
    """(N,) the per-example quantity of ``metric`` for one run, or None when not evaluated;
    ``name``: a named extra evaluation (``eval/<which>-<name>.json``) instead of the plan's."""
    if metric.startswith("gap:"):
        best, last = (per_example(out, label, seed, metric[4:], w, name) for w in ("best", "last"))
        return None if best is None or last is None else best - last
    doc = _eval(out, label, seed, which, name)
    if doc is None:
        return None
    if metric == "rd":
        return paired.rd_per_example(doc["curve"]) if doc.get("curve") else None
    if metric not in doc.get("correct", {}):
        raise SystemExit(f"claims: metric {metric!r} is not in {label} seed {seed}'s "
                         f"{which}{'-' + name if name else ''}.json "
                         f"(it has {sorted(doc.get('correct', {}))})")
    return paired.outcomes(doc["correct"][metric])


def test_part(out: Path, seeds: list[int], part: dict, n_boot: int, resample_seeds: bool = True
              ) -> dict[str, Any]:
    which = part.get("checkpoint", "best")
    base_which = part.get("baseline_checkpoint", which)
    name = str(part.get("eval", ""))
    rows, used = [], []
    for seed in seeds:
        m = per_example(out, part["method"], seed, part["metric"], which, name)
        b = per_example(out, part["baseline"], seed, part["metric"], base_which, name)
        if m is None or b is None:
            continue
        if m.shape != b.shape:
            raise SystemExit(f"claims: {part['method']} and {part['baseline']} seed {seed} were "
                             f"evaluated on different numbers of examples ({m.size} vs {b.size})")
        rows.append(m - b)
        used.append(seed)
    res: dict[str, Any] = {**part, "checkpoint": which, "baseline_checkpoint": base_which,
                           "seeds": used, "provisional": 0 < len(used) < len(seeds)}
    if not rows:
        return {**res, "verdict": NOT_RUN}
    iv = paired.paired_bootstrap(np.stack(rows), n_boot=n_boot, resample_seeds=resample_seeds)
    return {**res, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "examples": iv.examples,
            "per_seed": list(iv.per_seed),
            "verdict": paired.verdict(iv, part["direction"], float(part.get("margin", 0.0)))}


def _scale(metric: str) -> tuple[float, str]:
    """Accuracies and gaps print in points; RD in its own units (accuracy per 1/255)."""
    return (1.0, "") if metric == "rd" else (100.0, " pts")


def analyse(out: Path, plan: dict, n_boot: int = 10_000, resample_seeds: bool = True
            ) -> tuple[str, dict]:
    claims = plan.get("claims") or []
    if not claims:
        raise SystemExit("the plan lists no 'claims' to analyse")
    results = []
    for c in claims:
        parts = [test_part(out, list(plan["seeds"]), p, n_boot, resample_seeds) for p in c["parts"]]
        ran = [p["verdict"] for p in parts if p["verdict"] != NOT_RUN]
        overall = NOT_RUN if not ran else paired.combine(
            [p["verdict"] if p["verdict"] != NOT_RUN else paired.UNRESOLVED for p in parts])
        results.append({"claim": c["claim"], "verdict": overall, "parts": parts,
                        "provisional": any(p["provisional"] for p in parts)})
    lines = ["| claim | part | ckpt | seeds | method − baseline | 95 % interval | per seed | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for k, p in enumerate(r["parts"]):
            f, unit = _scale(p["metric"])
            fmt = "{:+.4f}" if f == 1.0 else "{:+.2f}"
            what = (f"{p['method']} − {p['baseline']}, {p['metric']}"
                    + (f" on eval {p['eval']}" if p.get("eval") else "") + f" ({p['direction']}"
                    + (f" than {fmt.format(f * p['margin'])}{unit}" if p.get("margin") else " than 0")
                    + ")")
            claim = f"**{r['claim']}**: {verdict_text(r, len(plan['seeds']))}" if k == 0 else ""
            ckpt = p["checkpoint"] + ("" if p["baseline_checkpoint"] == p["checkpoint"]
                                      else f" vs {p['baseline_checkpoint']}")
            if p["verdict"] == NOT_RUN:
                lines.append(f"| {claim} | {what} | {ckpt} | - | - | - | - | not run |")
                continue
            lines.append(
                f"| {claim} | {what} | {ckpt} | {','.join(map(str, p['seeds']))} | "
                f"{fmt.format(f * p['mean'])}{unit} | [{fmt.format(f * p['lo'])}, "
                f"{fmt.format(f * p['hi'])}] | "
                + ", ".join(fmt.format(f * v) for v in p["per_seed"]) + f" | {p['verdict']}"
                + (", provisional |" if p["provisional"] else " |"))
    figures(out, plan, results, len(plan["seeds"]))
    cost_md, cost = costs(out, plan)
    return ("\n".join(lines) + "\n\n" + cost_md,
            {"n_boot": n_boot, "resample_seeds": resample_seeds, "claims": results, "cost": cost})


def costs(out: Path, plan: dict) -> tuple[str, dict]:
    """Wall time per run: training (summary.json, resumed pieces summed) and each evaluation
    (the eval JSON's provenance): the plan's of the best and last checkpoints, and the named
    extra ones together ("other"); a copied evaluation (best = last) costs nothing."""
    rows, cost, total = [], {}, 0.0
    for entry in plan["runs"]:
        for seed in plan["seeds"]:
            d = out / entry["label"] / f"seed{seed}"
            if not (d / "summary.json").is_file():
                continue
            summary = json.loads((d / "summary.json").read_text())
            train_s = float(summary.get("wall_time_s") or 0.0)
            times = {f.stem: _wall(json.loads(f.read_text()))
                     for f in sorted((d / "eval").glob("*.json"))}
            for stem in times:  # compare.py copied the best checkpoint's evaluation (same epoch)
                if (stem.startswith("last") and times.get("best" + stem[4:]) == times[stem]
                        and same_epoch(summary)):
                    times[stem] = 0.0
            evals = {w: times[w] for w in ("best", "last") if w in times}
            extra_s = {k: v for k, v in times.items() if k not in evals}  # the named extra ones
            cost[f"{entry['label']}/seed{seed}"] = {
                "train_s": train_s, "epochs": summary.get("epochs_completed"),
                "finished": bool(summary.get("finished")), "eval_s": {**evals, **extra_s}}
            total += train_s + sum(evals.values()) + sum(extra_s.values())
            rows.append(f"| {entry['label']} | {seed} | {summary.get('epochs_completed')}"
                        f"{'' if summary.get('finished') else ' (running)'} | {train_s / 60:.1f} | "
                        + " / ".join(f"{evals[w] / 60:.1f}" if w in evals else "-"
                                     for w in ("best", "last"))
                        + (f" | {sum(extra_s.values()) / 60:.1f} |" if extra_s else " | - |"))
    head = ["| run | seed | epochs | training (min) | evaluation best / last (min) "
            "| other evaluations (min) |", "|---|---|---|---|---|---|"]
    md = "\n".join([*head, *rows, "", f"Total: {total / 3600:.2f} h of wall time "
                     "(processes of one thread each: as many CPU-hours)."])
    return md, {"runs": cost, "total_s": total}


def _wall(doc: dict) -> float:
    return float(doc.get("provenance", {}).get("wall_time_s") or 0.0)


def same_epoch(summary: dict) -> bool:
    return summary.get("best_epoch") is not None and summary.get("best_epoch") == summary.get(
        "epochs_completed")


def verdict_text(r: dict, n_seeds: int) -> str:
    """A claim's or a part's verdict, marked provisional with the seeds it rests on."""
    if not r["provisional"]:
        return r["verdict"]
    done = min(len(q["seeds"]) for q in r.get("parts", [r]) if q["provisional"])
    return f"{r['verdict']}, provisional ({done} of {n_seeds} seeds)"


def figures(out: Path, plan: dict, results: list[dict], n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for k, r in enumerate(results, 1):
        rows = [p for p in r["parts"] if p["verdict"] != NOT_RUN]
        if not rows:
            continue
        fig, axes = plt.subplots(len(rows), 1, figsize=(6, 1.3 + 1.1 * len(rows)), squeeze=False)
        for ax, p in zip(axes[:, 0], rows, strict=True):
            f, unit = _scale(p["metric"])
            ys = list(range(len(p["per_seed"])))
            ax.scatter([f * v for v in p["per_seed"]], ys, marker="o", color="grey",
                       label="per seed")
            y_all = len(ys)
            ax.errorbar([f * p["mean"]], [y_all], xerr=[[f * (p["mean"] - p["lo"])],
                                                          [f * (p["hi"] - p["mean"])]],
                        fmt="s", color="black", capsize=4, label="all seeds, 95 % interval")
            ax.axvline(f * float(p.get("margin", 0.0)), color="red", lw=1)
            ax.set_yticks([*ys, y_all], [*(f"seed {s}" for s in p["seeds"]), "pooled"])
            ax.set_ylim(-0.7, y_all + 0.7)
            on = f", eval {p['eval']}" if p.get("eval") else ""
            ax.set_title(f"{p['method']} − {p['baseline']}: {p['metric']} ({p['checkpoint']}{on}), "
                         f"{verdict_text(p, n_seeds)}", fontsize=9)
            ax.set_xlabel("difference (points)" if unit else "difference (RD units)", fontsize=8)
            ax.grid(alpha=0.3, axis="x")
        fig.suptitle(textwrap.fill(r["claim"], 70), fontsize=10)
        fig.tight_layout()
        fig.savefig(fig_dir / f"claim-{k}.png", dpi=110)
        plt.close(fig)
    gap_figure(out, plan, fig_dir / "best-last-gap.png")


def gap_curve(run: Path) -> list[float] | None:
    """Per epoch: the best validation robust accuracy so far minus this epoch's."""
    f = run / "metrics.csv"
    if not f.is_file():
        return None
    with open(f, newline="") as fh:
        acc = [float(r["robust_acc"]) for r in csv.DictReader(fh) if r.get("robust_acc")]
    return [max(acc[:e + 1]) - a for e, a in enumerate(acc)] or None


def gap_figure(out: Path, plan: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = 0
    for entry in plan["runs"]:
        if "eval" in entry:  # a run on its own protocol (DRA's clean phase and fine-tuning)
            continue
        curves = [c for s in plan["seeds"]
                  if (c := gap_curve(out / entry["label"] / f"seed{s}")) is not None]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = np.mean([c[:n] for c in curves], axis=0)
        ax.plot(range(1, n + 1), 100 * mean, label=f"{entry['label']} ({len(curves)} seeds)")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return
    ax.set_xlabel("epoch")
    ax.set_ylabel("best-so-far − current (points)")
    ax.set_title("Validation robust accuracy below its best so far (robust overfitting)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
