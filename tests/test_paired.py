"""Paired bootstrap intervals and claim verdicts (adaptrain.paired, compare.py --analyse) on
synthetic outcomes whose true difference is known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from adaptrain import paired
from adaptrain.evaluate import robustness_disparity

ROOT = Path(__file__).resolve().parents[1]


def outcomes_pair(rng, s: int, n: int, p_base: float, flip_up: float, flip_down: float):
    """(S, N) baseline and method outcomes; the method differs from the baseline on a few
    examples only (the pairing the study has: same images, similar models)."""
    base = (rng.random((s, n)) < p_base).astype(float)
    up = (base == 0) & (rng.random((s, n)) < flip_up)
    down = (base == 1) & (rng.random((s, n)) < flip_down)
    method = base.copy()
    method[up], method[down] = 1.0, 0.0
    return method, base


def test_the_estimate_is_the_mean_difference_and_the_bootstrap_is_reproducible():
    rng = np.random.default_rng(0)
    m, b = outcomes_pair(rng, 3, 400, 0.4, 0.1, 0.02)
    iv = paired.paired_bootstrap(m - b, n_boot=2000)
    assert iv.mean == pytest.approx(m.mean() - b.mean())
    assert iv.per_seed == pytest.approx(tuple((m - b).mean(1)))
    assert iv.lo < iv.mean < iv.hi
    assert paired.paired_bootstrap(m - b, n_boot=2000) == iv
    assert (iv.seeds, iv.examples) == (3, 400)


def test_pairing_resolves_a_small_consistent_gain_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(1)
    # +2 points on average: far below the ~3-point standard error of one accuracy from
    # 1,000 examples, but the two models disagree on few examples
    m, b = outcomes_pair(rng, 3, 1000, 0.45, 0.04, 0.0)
    iv = paired.paired_bootstrap(m - b, n_boot=4000)
    unpaired_se = np.sqrt(2 * 0.45 * 0.55 / 1000)
    assert iv.mean < 2 * unpaired_se
    assert iv.lo > 0 and paired.verdict(iv, "greater") == paired.REPRODUCED
    assert paired.verdict(iv, "less") == paired.CONTRADICTED


def coverage(resample_seeds: bool, trials: int = 150) -> float:
    """How often the 95 % interval contains a true difference of exactly 0."""
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(trials):
        # both models are draws of the same process (accuracy 40 %, flips either way)
        m, b = outcomes_pair(rng, 3, 300, 0.4, 0.1, 0.1 * 0.6 / 0.4)
        iv = paired.paired_bootstrap(m - b, n_boot=800, seed=int(rng.integers(1 << 30)),
                                     resample_seeds=resample_seeds)
        covered += iv.lo <= 0 <= iv.hi
    return covered / trials


def test_no_difference_is_not_resolved_and_the_coverage_is_nominal_or_conservative():
    # seeds fixed: nominal coverage (binomial sd of 150 trials at 0.95 is 0.018)
    assert 0.89 <= coverage(resample_seeds=False) <= 0.99
    # seeds resampled as well: the per-example noise is counted twice -> conservative
    assert coverage(resample_seeds=True) >= 0.95
    assert paired.verdict(paired.Interval(0.001, -0.01, 0.012, 3, 300, ()), "greater") == \
        paired.UNRESOLVED


def test_seed_to_seed_spread_widens_the_interval():
    rng = np.random.default_rng(3)
    d = rng.normal(0.02, 0.3, size=(3, 1000))
    shifted = d + np.array([[-0.04], [0.0], [0.04]])  # the same mean, seeds disagree
    narrow, wide = (paired.paired_bootstrap(v, n_boot=3000) for v in (d, shifted))
    assert wide.hi - wide.lo > 1.5 * (narrow.hi - narrow.lo)


def test_margins_and_combined_verdicts():
    iv = paired.Interval(-0.002, -0.004, 0.0, 3, 1000, ())
    assert paired.verdict(iv, "greater", margin=-0.005) == paired.REPRODUCED  # within 0.5 points
    assert paired.verdict(iv, "greater") == paired.UNRESOLVED
    assert paired.verdict(paired.Interval(-0.02, -0.03, -0.01, 3, 1, ()), "greater", -0.005) == \
        paired.CONTRADICTED
    assert paired.combine([paired.REPRODUCED, paired.REPRODUCED]) == paired.REPRODUCED
    assert paired.combine([paired.REPRODUCED, paired.UNRESOLVED]) == paired.UNRESOLVED
    assert paired.combine([paired.UNRESOLVED, paired.CONTRADICTED]) == paired.CONTRADICTED
    with pytest.raises(ValueError, match="direction"):
        paired.verdict(iv, "bigger")
    with pytest.raises(ValueError, match="seeds, examples"):
        paired.paired_bootstrap(np.zeros(5))


def test_rd_per_example_averages_to_the_runs_rd():
    rng = np.random.default_rng(4)
    eps = [0.0, 4 / 255, 8 / 255, 16 / 255]
    clean = rng.random(200) < 0.6
    rows = [clean]
    for _ in eps[1:]:
        rows.append(rows[-1] & (rng.random(200) < 0.7))  # robust at eps implies robust below
    curve = {"eps": eps, "correct": ["".join("1" if v else "0" for v in r) for r in rows]}
    acc = [r.mean() for r in rows]
    assert paired.rd_per_example(curve).mean() == pytest.approx(robustness_disparity(eps, acc))


def _write_eval(run: Path, which: str, correct: dict[str, np.ndarray]) -> None:
    run.joinpath("eval").mkdir(parents=True, exist_ok=True)
    doc = {"accuracy": {k: float(v.mean()) for k, v in correct.items()},
           "correct": {k: "".join(str(int(b)) for b in v) for k, v in correct.items()},
           "curve": None}
    (run / "eval" / f"{which}.json").write_text(json.dumps(doc))


def compare(plan: dict, plan_file: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``compare.py`` on ``plan`` (written to ``plan_file``) with output ``out``."""
    plan_file.write_text(yaml.safe_dump(plan))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), str(plan_file),
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=300)


def test_compare_analyse_gives_the_verdicts_the_synthetic_evaluations_imply(tmp_path):
    rng = np.random.default_rng(5)
    n, seeds = 600, [0, 1]
    for s in seeds:
        base_best = rng.random(n) < 0.4
        base_last = base_best & (rng.random(n) < 0.8)  # the baseline overfits: last < best
        good = base_best | (rng.random(n) < 0.15)      # clearly better on aa
        same = base_best ^ (rng.random(n) < 0.01)      # indistinguishable
        _write_eval(tmp_path / "base" / f"seed{s}", "best", {"aa": base_best})
        _write_eval(tmp_path / "base" / f"seed{s}", "last", {"aa": base_last})
        _write_eval(tmp_path / "good" / f"seed{s}", "best", {"aa": good})
        _write_eval(tmp_path / "good" / f"seed{s}", "last", {"aa": good})  # no gap
        _write_eval(tmp_path / "same" / f"seed{s}", "best", {"aa": same})
        if s == 0:  # a run still training on seed 1
            _write_eval(tmp_path / "early" / f"seed{s}", "best", {"aa": good})
    for s in seeds:  # what the runs cost: training 600 s each, 120 s per evaluation
        (tmp_path / "base" / f"seed{s}" / "summary.json").write_text(json.dumps(
            {"wall_time_s": 600.0, "epochs_completed": 30, "best_epoch": 20, "finished": True}))
        for which in ("best", "last"):
            f = tmp_path / "base" / f"seed{s}" / "eval" / f"{which}.json"
            f.write_text(json.dumps({**json.loads(f.read_text()),
                                     "provenance": {"wall_time_s": 120.0}}))
    plan = {"seeds": seeds, "runs": [{"label": "base", "preset": "pgd-at"}],
            "claims": [
                {"claim": "good >= base", "parts": [
                    {"method": "good", "baseline": "base", "metric": "aa", "direction": "greater"},
                    {"method": "good", "baseline": "base", "metric": "gap:aa", "direction": "less"}]},
                {"claim": "same >= base", "parts": [
                    {"method": "same", "baseline": "base", "metric": "aa", "direction": "greater"}]},
                {"claim": "base >= good", "parts": [
                    {"method": "base", "baseline": "good", "metric": "aa", "direction": "greater"}]},
                {"claim": "missing >= base", "parts": [
                    {"method": "missing", "baseline": "base", "metric": "aa",
                     "direction": "greater"}]},
                {"claim": "early >= base", "parts": [
                    {"method": "early", "baseline": "base", "metric": "aa",
                     "direction": "greater"}]}]}
    proc = compare(plan, tmp_path / "plan.yaml", tmp_path, "--analyse", "--n-boot", "1000")
    assert proc.returncode == 0, proc.stderr
    claims = json.loads((tmp_path / "analysis.json").read_text())["claims"]
    verdicts = {c["claim"]: c["verdict"] for c in claims}
    assert verdicts == {"good >= base": "reproduced", "same >= base": "not resolved",
                        "base >= good": "contradicted", "missing >= base": "not run",
                        "early >= base": "reproduced"}
    # one seed of the plan's two: its interval holds no seed-to-seed variation, so it is marked
    assert {c["claim"]: c["provisional"] for c in claims} == {
        "good >= base": False, "same >= base": False, "base >= good": False,
        "missing >= base": False, "early >= base": True}
    md = (tmp_path / "analysis.md").read_text()
    assert "| **good >= base**: reproduced |" in md
    assert "| **early >= base**: reproduced, provisional (1 of 2 seeds) |" in md
    assert md.count("provisional") == 2  # the claim and its one part
    assert "missing − base, aa (greater than 0) | best | - | - |" in md  # no seed, not "0" (a seed's name)
    cost = json.loads((tmp_path / "analysis.json").read_text())["cost"]
    assert cost["total_s"] == pytest.approx(2 * (600 + 2 * 120))
    assert "| base | 0 | 30 | 10.0 | 2.0 / 2.0 |" in md
    assert (tmp_path / "figures" / "claim-1.png").stat().st_size > 0
    assert not (tmp_path / "figures" / "claim-4.png").exists()  # nothing to draw


def test_compare_fills_run_references_and_stages_the_work(tmp_path):
    plan = {"seeds": [3], "common": ["epochs=2"], "eval": ["--attacks", "clean"],
            "runs": [{"label": "clean", "preset": "quickstart-clean"},
                     {"label": "ft", "preset": "dra-finetune-mnist", "after": "clean",
                      "overrides": ["init_from={out}/clean/seed{seed}"],
                      "eval": ["--attacks", "clean,pgd-20"], "checkpoints": ["last"]}]}
    out = tmp_path / "out"

    def dry(*extra: str) -> list[str]:
        proc = compare(plan, tmp_path / "plan.yaml", out, "--dry-run", *extra)
        assert proc.returncode == 0, proc.stderr
        return [ln for ln in proc.stdout.splitlines() if "adaptrain.cli" in ln]

    cmds = dry("--stage", "train")
    assert len(cmds) == 2 and all(" train " in c for c in cmds)
    assert f"init_from={out}/clean/seed3" in cmds[1] and "seed=3" in cmds[1]
    cmds = dry()
    evals = [c for c in cmds if " eval " in c]
    assert len(evals) == 3  # clean: best and last; ft: its own checkpoints and attacks
    assert evals[-1].endswith("--checkpoint last --quiet --seed 0 --attacks clean,pgd-20")
    assert dry("--stage", "eval") == []  # nothing has finished training


def test_a_figure_part_on_fewer_seeds_than_planned_says_provisional():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from analyse import verdict_text
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    part = {"verdict": "not resolved", "seeds": [0], "provisional": True}
    assert verdict_text(part, 3) == "not resolved, provisional (1 of 3 seeds)"
    assert verdict_text({**part, "seeds": [0, 1, 2], "provisional": False}, 3) == "not resolved"
    claim = {"verdict": "reproduced", "provisional": True,
             "parts": [{**part, "seeds": [0, 1]}, {**part, "seeds": [0, 1, 2], "provisional": False}]}
    assert verdict_text(claim, 3) == "reproduced, provisional (2 of 3 seeds)"


def test_a_claim_on_a_named_extra_evaluation_reads_that_evaluation_and_counts_its_cost(tmp_path):
    rng = np.random.default_rng(6)
    for s in (0, 1):
        base_small = rng.random(300) < 0.5
        base_big = rng.random(3000) < 0.5
        _write_eval(tmp_path / "base" / f"seed{s}", "best", {"clean": base_small})
        _write_eval(tmp_path / "good" / f"seed{s}", "best", {"clean": base_small})  # no change
        _write_eval(tmp_path / "base" / f"seed{s}", "best-n3000", {"clean": base_big})
        _write_eval(tmp_path / "good" / f"seed{s}", "best-n3000",  # 10 points more
                    {"clean": base_big | (rng.random(3000) < 0.2)})
        run = tmp_path / "good" / f"seed{s}"
        (run / "summary.json").write_text(json.dumps(
            {"wall_time_s": 60.0, "epochs_completed": 2, "best_epoch": 1, "finished": True}))
        f = run / "eval" / "best-n3000.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "provenance": {"wall_time_s": 30.0}}))
    part = {"method": "good", "baseline": "base", "metric": "clean", "direction": "greater"}
    plan = {"seeds": [0, 1], "runs": [{"label": "good", "preset": "pgd-at"}],
            "claims": [{"claim": "plan's evaluation", "parts": [part]},
                       {"claim": "on 3,000 images", "parts": [{**part, "eval": "n3000"}]}]}
    proc = compare(plan, tmp_path / "plan.yaml", tmp_path, "--analyse", "--n-boot", "1000")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "analysis.json").read_text())
    small, big = (c["parts"][0] for c in doc["claims"])
    assert small["mean"] == 0 and small["examples"] == 300
    assert big["examples"] == 3000 and big["verdict"] == "reproduced"
    assert big["mean"] == pytest.approx(np.mean([
        paired.outcomes(json.loads((tmp_path / r / f"seed{s}" / "eval" / "best-n3000.json")
                                   .read_text())["correct"]["clean"]).mean() * sign
        for s in (0, 1) for r, sign in (("good", 1), ("base", -1))]) * 2)
    md = (tmp_path / "analysis.md").read_text()
    assert "good − base, clean on eval n3000 (greater than 0)" in md
    assert doc["cost"]["total_s"] == pytest.approx(2 * (60 + 30))
    assert "| good | 0 | 2 | 1.0 | 0.0 / - | 0.5 |" in md  # best.json: no time recorded


def test_a_dry_run_lists_a_named_extra_evaluation_with_its_own_file(tmp_path):
    plan = {"seeds": [0], "eval": ["--attacks", "clean"],
            "runs": [{"label": "a", "preset": "quickstart-clean", "checkpoints": ["last"],
                      "extra_evals": [{"name": "n10000", "args": ["--n", "10000"],
                                       "checkpoints": ["best"]}]}]}
    out = tmp_path / "out"
    proc = compare(plan, tmp_path / "plan.yaml", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    evals = [ln for ln in proc.stdout.splitlines() if " eval " in ln]
    assert len(evals) == 2
    assert evals[0].endswith("--checkpoint last --quiet --seed 0 --attacks clean")
    assert evals[1].endswith(f"--checkpoint best --quiet --seed 0 --n 10000 --out "
                             f"{out / 'a' / 'seed0' / 'eval' / 'best-n10000.json'}")
    plan["runs"][0]["extra_evals"] = [{"name": "bad/name", "args": []}]
    proc = compare(plan, tmp_path / "plan.yaml", out, "--dry-run")
    assert proc.returncode != 0 and "run a: each of 'extra_evals' needs a name" in proc.stderr


def test_a_margin_prints_in_the_units_of_its_difference(tmp_path):
    """A margin is written as a fraction (``-0.005``: half a point) but the table prints the
    difference in points, so the margin must print in points too (it read "-0.005" beside
    "+0.57 pts" in the study's table)."""
    rng = np.random.default_rng(0)
    for label in ("base", "new"):
        _write_eval(tmp_path / label / "seed0", "best", {"clean": rng.random(200) < 0.5})
    plan = {"seeds": [0], "runs": [{"label": "base", "preset": "pgd-at"}],
            "claims": [{"claim": "new ~ base", "parts": [
                {"method": "new", "baseline": "base", "metric": "clean", "direction": "greater",
                 "margin": -0.005}]}]}
    proc = compare(plan, tmp_path / "plan.yaml", tmp_path, "--analyse", "--n-boot", "200")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "analysis.md").read_text()
    assert "new − base, clean (greater than -0.50 pts) |" in md, md
