"""Import every module of a package so that its ``@REGISTRY.register`` decorators run.

A new strategy, objective, attack, model or data set is therefore one new file: nothing else
has to import it.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package: str, path: list[str], skip: tuple[str, ...] = ("base",)) -> None:
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
