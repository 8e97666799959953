"""The README's Python snippets run as pasted: every ```python block, in order, in one namespace,
from an empty folder (the first block trains the run the others use), and what the comments
promise holds."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_snippets():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3 and any("load_run" in b for b in blocks)


def test_readme_python_snippets_run_as_pasted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks(README.read_text())):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    # the comments' promises
    model, x, x_adv, eps = namespace["model"], namespace["x"], namespace["x_adv"], namespace["eps"]
    assert not model.training
    assert bool(((x_adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all())
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    r = namespace["r"]
    assert set(r["accuracy"]) == {"clean", "pgd-20", "cw-20"}
    assert r["worst_case"] <= r["accuracy"]["clean"]
    assert (tmp_path / "runs" / "qs2" / "checkpoints" / "best").is_dir()
    assert "clean_acc" in capsys.readouterr().out
    assert isinstance(namespace["summary"]["best"], dict)
    assert torch.is_tensor(namespace["y"])
