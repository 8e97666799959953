"""The evaluation attack grammar: ``clean``, ``pgd-K[-R]``, ``cw-K[-R]``, ``fgsm``, ``aa`` and the
official AutoAttack sub-attacks (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``apgd-dlr``,
``fab``).

``aa`` expands to the sub-attacks of the chosen AutoAttack version (``standard``: APGD-CE,
APGD-T, FAB-T, Square; ``rand``: APGD-CE, APGD-DLR with EOT; ``plus``; or a ``custom`` subset),
which always run as a cascade, each on the survivors of the previous, as AutoAttack does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

OWN_HELP = "clean, pgd-K, pgd-K-R (R restarts), cw-K, cw-K-R, fgsm"
# Bounds that catch typos before they cost days: evaluations in the literature use at most a
# few thousand iterations (PGD-1000, APGD's 100 x restarts) and a handful of restarts.
MAX_STEPS = 10_000
MAX_RESTARTS = 100
MAX_RELATIVE_STEP = 10.0  # a step of more than 10 eps only ever lands on the ball's surface
AA_SUBATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
AA_VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}
HELP = f"{OWN_HELP}, aa, {', '.join(AA_SUBATTACKS)}"


@dataclass(frozen=True)
class AttackSpec:
    """One entry of ``--attacks``. ``kind``: clean | pgd | cw | fgsm | aa."""

    name: str
    kind: str
    steps: int = 0
    restarts: int = 1
    subs: tuple[str, ...] = ()  # AutoAttack sub-attacks, in cascade order (kind == "aa")
    version: str = "standard"  # the AutoAttack version whose settings the sub-attacks use

    @property
    def single_step(self) -> bool:
        return self.kind == "fgsm"

    def job(self, sub: str | None = None) -> str:
        """The job name of this entry (or of one of its AutoAttack sub-attacks)."""
        if sub is None or sub == self.name:
            return self.name
        return f"{self.name}/{sub}"


def parse_spec(text: str, where: str = "--attacks", *, aa_version: str = "standard",
               aa_attacks: tuple[str, ...] | None = None) -> AttackSpec:
    """'pgd-20' -> AttackSpec('pgd-20', 'pgd', 20, 1); 'aa' -> the version's sub-attacks."""
    spec = text.strip().lower()
    if spec in ("clean", "fgsm"):
        return AttackSpec(spec, spec, steps=1 if spec == "fgsm" else 0)
    if spec in ("aa", "autoattack"):
        if aa_version == "custom":
            if not aa_attacks:
                raise ConfigError("--aa-attacks", "aa-version custom needs a list, e.g. "
                                  "--aa-attacks apgd-ce,apgd-t")
            subs = tuple(aa_attacks)
        elif aa_version in AA_VERSIONS:
            subs = AA_VERSIONS[aa_version]
        else:
            raise ConfigError("--aa-version", f"{aa_version!r}; allowed: "
                              f"{', '.join(AA_VERSIONS)}, custom")
        for s in subs:
            if s not in AA_SUBATTACKS:
                raise ConfigError("--aa-attacks", f"unknown {s!r}; allowed: {', '.join(AA_SUBATTACKS)}")
        version = "standard" if aa_version == "custom" else aa_version
        return AttackSpec("aa", "aa", subs=subs, version=version)
    if spec in AA_SUBATTACKS:
        version = aa_version if aa_version in AA_VERSIONS else "standard"
        return AttackSpec(spec, "aa", subs=(spec,), version=version)
    parts = spec.split("-")
    try:
        kind, steps = parts[0], int(parts[1])
        restarts = int(parts[2]) if len(parts) > 2 else 1
    except (IndexError, ValueError):
        raise ConfigError(where, f"cannot parse {text!r}; allowed: {HELP}") from None
    if kind not in ("pgd", "cw") or len(parts) > 3 or steps < 1 or restarts < 1:
        raise ConfigError(where, f"cannot parse {text!r}; allowed: {HELP}")
    if steps > MAX_STEPS or restarts > MAX_RESTARTS:
        raise ConfigError(where, f"{text!r}: at most {MAX_STEPS} steps and {MAX_RESTARTS} restarts "
                          "per attack (is a digit too many?)")
    return AttackSpec(spec, kind, steps=steps, restarts=restarts)


def parse_list(text: str | list[str], where: str = "--attacks", *, aa_version: str = "standard",
               aa_attacks: tuple[str, ...] | None = None) -> list[AttackSpec]:
    """Comma list (or list) of specs; ``clean`` is always evaluated first, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[AttackSpec] = [AttackSpec("clean", "clean")]
    for item in items:
        if not item.strip():
            continue
        spec = parse_spec(item, where, aa_version=aa_version, aa_attacks=aa_attacks)
        if spec.name not in {s.name for s in out}:
            out.append(spec)
    return out


def parse_real(text: str, where: str, example: str) -> float:
    """A finite number written as a decimal or a fraction ('8/255'). Zero denominators, NaN,
    infinities and overflow (1e309) are refused naming ``where``, never raised as Python errors."""
    from ..registry import to_float

    try:
        return to_float(str(text).strip(), where)
    except ConfigError as exc:
        raise ConfigError(where, f"{exc.message}; write e.g. {example}") from None


STEP_EXAMPLE = "2/255, 0.01 or eps/4"


def parse_step(text: str | float, where: str = "--step-size") -> tuple[float, float]:
    """Step size as (absolute, relative-to-eps): '2/255' -> (2/255, 0); 'eps/4' -> (0, 0.25).
    An absolute step lies in (0, 1] (image units), a relative one in (0, MAX_RELATIVE_STEP] x eps:
    a zero step leaves the attack at its start and reports robustness that is not there."""
    if isinstance(text, bool):
        raise ConfigError(where, f"expected a step such as {STEP_EXAMPLE}, got {text!r}")
    if isinstance(text, (int, float)):
        return _absolute_step(float(text), text, where), 0.0
    s = str(text).strip().lower().replace(" ", "")
    if s.startswith("eps"):
        return 0.0, _relative_step(s[3:], text, where)
    return _absolute_step(parse_real(s, where, STEP_EXAMPLE), text, where), 0.0


def _absolute_step(value: float, text: object, where: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(where, f"must be finite, got {text!r}; write e.g. {STEP_EXAMPLE}")
    if value <= 0 or value > 1:
        raise ConfigError(where, f"an absolute step must be in (0, 1] (images are in [0, 1]), got "
                          f"{text!r}; write e.g. {STEP_EXAMPLE}")
    return value


def _relative_step(rest: str, text: object, where: str) -> float:
    """The factor of 'eps', 'eps/K' or 'eps*M' (``rest`` is what follows 'eps')."""
    if rest == "":
        factor = 1.0
    elif rest[0] in "/*" and rest[1:]:
        k = parse_real(rest[1:], where, STEP_EXAMPLE)
        if k == 0 and rest[0] == "/":
            raise ConfigError(where, f"{text!r} divides by zero; write e.g. eps/4")
        factor = 1.0 / k if rest[0] == "/" else k
    else:
        raise ConfigError(where, f"cannot parse {text!r}; write e.g. {STEP_EXAMPLE}")
    if not (0 < factor <= MAX_RELATIVE_STEP):
        raise ConfigError(where, f"a relative step must be in (0, {MAX_RELATIVE_STEP:g}] x eps, got "
                          f"{text!r}; write e.g. eps/4")
    return factor


def step_for(step: tuple[float, float], eps: float) -> float:
    absolute, relative = step
    return relative * eps if relative else absolute
