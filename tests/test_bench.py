"""``adaptrain bench`` on digits with a tiny model: one row per preset with the documented
columns, JSON and markdown written, and exact pass counts derived from the code.

No timing is asserted (the machine is shared); the runs are a couple of 32-image batches.
"""

from __future__ import annotations

import json

import pytest
import torch

from adaptrain import bench
from adaptrain.cli import main

K = 2  # attack steps in every row
TINY = ["data.name=digits", "data.batch_size=32", "data.augment=none", "data.val_size=0",
        "model.name=small_cnn", "model.width=4", f"strategy.steps={K}", "strategy.eps=0.1",
        "strategy.step_size=0.03", "device=cpu", "amp=off"]
SETTINGS = bench.Settings(repeats=1, batches=2, warmup=1, threads=1)


@pytest.fixture(scope="module")
def result():
    threads = torch.get_num_threads()
    entries = [bench.Entry("pgd-at", "pgd-at"), bench.Entry("trades", "trades"),
               bench.Entry("awp", "awp", ["awp.warmup=0"])]
    try:
        yield bench.bench(entries, TINY, bench.Settings(**{**vars(SETTINGS), "reference": True}),
                          log=lambda line: None)
    finally:
        torch.set_num_threads(threads)


def rows(result) -> dict[str, dict]:
    return {r["label"]: r for r in result["rows"]}


def test_one_row_per_preset_and_the_reference(result):
    assert [r["label"] for r in result["rows"]] == ["pgd-at", "trades", "awp", "reference"]
    for r in result["rows"]:
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["timed_images"] == 64  # 2 batches of 32
        assert r["train_images"] == 1437  # digits' training split, nothing held out
        assert r["s_per_epoch"] == pytest.approx(r["train_images"] / r["images_per_s"])
        assert r["efficiency"] > 0 and r["floor_s_per_image"] > 0
        assert set(r["pass_cost_s"]) == {"f", "in", "w"}
    assert result["rows"][0]["ratio"] == 1.0
    assert result["settings"]["threads"] == 1
    assert result["machine"]["threads"] == 1 and result["machine"]["torch"] == torch.__version__
    assert len(result["load"]["start"]) == 3 and len(result["load"]["end"]) == 3


# (forward, backward, weight-backward) rows per image, derived from the code:
PASSES = {
    # K attack steps, each a forward and an input-gradient backward of the whole batch (no
    # early stop, so no compaction), then the training forward and its weight backward
    "pgd-at": (K + 1, K + 1, 1),
    # objective.prepare: the clean eval-mode forward for the KL reference (no grad); K attack
    # steps on the KL; the loss forwards x and x_adv and back-propagates through both
    "trades": (1 + K + 2, K + 2, 2),
    # as PGD-AT, plus the proxy's forward and weight backward on x_adv (AWP's ascent step)
    "awp": (K + 2, K + 2, 2),
}


@pytest.mark.parametrize("name", list(PASSES))
def test_pass_counts_are_the_known_values(result, name):
    r = rows(result)[name]
    got = (r["forward_rows_per_image"], r["backward_rows_per_image"],
           r["weight_backward_rows_per_image"])
    assert got == PASSES[name]


def test_reference_computes_weight_gradients_in_the_attack(result):
    r = rows(result)["reference"]
    assert r["preset"] == "pgd-at"
    assert r["forward_rows_per_image"] == r["backward_rows_per_image"] == K + 1
    assert r["weight_backward_rows_per_image"] == K + 1  # every attack step too
    assert r["floor_weight_rows_per_image"] == 1  # its floor is PGD-AT's


def test_markdown_table(result):
    md = bench.markdown(result)
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| row |"))
    assert lines[head] == "| " + " | ".join(bench.COLUMNS) + " |"
    table = [line for line in lines[head + 2:] if line.startswith("|")]
    assert [line.split(" | ")[0].strip("| ") for line in table] == ["pgd-at", "trades", "awp", "reference"]
    assert all(line.count("|") == len(bench.COLUMNS) + 1 for line in table)
    assert "threads" in md and torch.__version__ in md and "device cpu" in md
    assert "load average" in md


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code = main(["bench", "quickstart", "--repeats", "1", "--batches", "1", "--warmup", "0",
                     "--threads", "1", "--out", str(tmp_path), *TINY])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["quickstart"]
    r = data["rows"][0]  # counted in an extra epoch when there is no warm-up
    assert (r["forward_rows_per_image"], r["backward_rows_per_image"]) == (K + 1, K + 1)
    md = (tmp_path / "bench.md").read_text()
    assert "| quickstart | quickstart |" in md
    assert md in capsys.readouterr().out


def test_plan_rows(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("common: [model.width=2]\nrows:\n  - {label: a, preset: quickstart}\n"
                    "  - {label: b, preset: quickstart, overrides: [strategy.steps=1]}\n")
    entries, common = bench.read_plan(plan)
    assert [(e.label, e.preset, e.overrides) for e in entries] == [
        ("a", "quickstart", []), ("b", "quickstart", ["strategy.steps=1"])]
    assert common == ["model.width=2"]
    assert [e.label for e in bench.entries_of(["x", "y", "x"])] == ["x", "y", "x#2"]


@pytest.mark.parametrize("argv, field", [
    (["bench"], "preset"),
    (["bench", "quickstart", "--repeats", "0"], "--repeats"),
    (["bench", "quickstart", "--batches", "x"], "--batches"),
    (["bench", "quickstart", "--threads", "0", "--warmup", "0"], "--threads"),
    (["bench", "quickstart", "model.name=vgg"], "model.name"),
])
def test_cli_errors(capsys, argv, field):
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {field}")
