"""The evaluation result as JSON (the output contract) and as a markdown table."""

from __future__ import annotations

from typing import Any


def json_ready(result: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """Drop tensors and internals; attach provenance."""
    doc = {k: v for k, v in result.items() if not k.startswith("_") and k != "per_example"}
    doc["provenance"] = provenance
    return doc


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def to_markdown(doc: dict[str, Any]) -> str:
    from ..data import eps_text

    prov = doc["provenance"]
    data = str(prov.get("data", ""))  # budgets in the data set's own units (8/255; digits 0.1)
    lines = [f"Evaluation of `{prov.get('target', '')}` "
             f"({prov.get('checkpoint', '')}): n = {doc['n_examples']}, "
             f"{doc['norm']} eps = {eps_text(doc['eps'], data)}, "
             f"step {eps_text(doc['step_size'], data)}, "
             f"mode {doc['mode']}"
             + (" (accuracy after each attack, cumulative)" if doc["mode"] == "cascade" else ""),
             "", "| attack | accuracy (%) |", "|---|---|"]
    for k, v in doc["accuracy"].items():
        lines.append(f"| {k} | {_pct(v)} |")
    lines.append(f"| **worst case** | **{_pct(doc['worst_case'])}** |")
    if doc.get("curve"):
        c = doc["curve"]
        lines += ["", f"Accuracy vs eps ({c['attack']}, step {c['step']}); robustness disparity "
                  f"RD = {doc['rd']:.4f} (accuracy lost per 1/255)" if doc.get("rd") is not None
                  else f"Accuracy vs eps ({c['attack']})", "",
                  "| eps | " + " | ".join(eps_text(e, data) for e in c["eps"]) + " |",
                  "|---|" + "---|" * len(c["eps"]),
                  "| accuracy (%) | " + " | ".join(_pct(a) for a in c["accuracy"]) + " |"]
    if doc.get("corruptions"):
        co = doc["corruptions"]
        sev = co["severities"]
        lines += ["", f"Corruption accuracy (%), table {co['table']}; mean over all: "
                  f"{_pct(co['mean_all'])}", "",
                  "| corruption | " + " | ".join(f"s{s}" for s in sev) + " | mean |",
                  "|---|" + "---|" * (len(sev) + 1)]
        for name, row in co["accuracy"].items():
            lines.append(f"| {name} | " + " | ".join(_pct(row[str(s)]) for s in sev)
                         + f" | {_pct(co['mean'][name])} |")
    lines += ["", "| sanity check | result |", "|---|---|"]
    for c in doc["checks"]:
        mark = {True: "ok", False: "**FAILED**", None: "n/a"}[c["ok"]]
        lines.append(f"| {c['name']} | {mark}: {c['detail']} |")
    return "\n".join(lines) + "\n"
