"""The evaluation attack grammar: ``clean``, ``pgd-K[-R]``, ``cw-K[-R]``, ``fgsm``, ``aa`` and the
official AutoAttack sub-attacks (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``apgd-dlr``,
``fab``).

``aa`` expands to the sub-attacks of the chosen AutoAttack version (``standard``: APGD-CE,
APGD-T, FAB-T, Square; ``rand``: APGD-CE, APGD-DLR with EOT; ``plus``; or a ``custom`` subset),
which always run as a cascade, each on the survivors of the previous, as AutoAttack does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

OWN_HELP = "clean, pgd-K, pgd-K-R (R restarts), cw-K, cw-K-R, fgsm"
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


def parse_step(text: str | float, where: str = "--step-size") -> tuple[float, float]:
    """Step size as (absolute, relative-to-eps): '2/255' -> (2/255, 0); 'eps/4' -> (0, 0.25)."""
    from ..registry import parse_number

    if isinstance(text, (int, float)):
        return float(text), 0.0
    s = str(text).strip().lower().replace(" ", "")
    if s.startswith("eps"):
        rest = s[3:]
        try:
            if rest == "":
                return 0.0, 1.0
            if rest.startswith("/"):
                return 0.0, 1.0 / float(rest[1:])
            if rest.startswith("*"):
                return 0.0, float(rest[1:])
        except ValueError:
            pass
        raise ConfigError(where, f"cannot parse {text!r}; write e.g. 2/255, 0.01 or eps/4")
    try:
        value = float(parse_number(s))
    except ValueError:
        raise ConfigError(where, f"cannot parse {text!r}; write e.g. 2/255, 0.01 or eps/4") from None
    if value < 0:
        raise ConfigError(where, f"must be >= 0, got {text!r}")
    return value, 0.0


def step_for(step: tuple[float, float], eps: float) -> float:
    absolute, relative = step
    return relative * eps if relative else absolute
