"""Placement profiles: which scorers run, with which weights, and how devices are chosen."""

from __future__ import annotations

from dataclasses import dataclass

from cplat import _core
from cplat.errors import InputError
from cplat.scorers import Scorer

#: Weight the FGD paper's artifact gives its single active scorer (any positive weight gives
#: the same ranking).
SINGLE_SCORER_WEIGHT = 1000

#: Ways to break ties between equally scored nodes.
TIE_BREAKS = ("rank", "random")


@dataclass(frozen=True)
class Profile:
    """A validated placement profile.

    Parameters
    ----------
    name
        Short name used on the command line.
    label
        Name used in result files (the FGD paper's policy names for its six policies).
    scorers
        ``(scorer, weight)`` pairs; scores are normalised per scorer, weighted and summed. A
        scorer is a built-in's name or a compiled Python scorer (:func:`cplat.scorer`), which
        the profile holds, keeping its native code alive.
    gpu_pick
        How devices inside the chosen node are picked: ``best``, ``worst``, ``random``, ``fgd``.
    tie_break
        How equally scored nodes are told apart: ``rank`` (a random node order drawn once per
        seed, lowest rank wins; consolidates, and is what the FGD paper's simulator does) or
        ``random`` (uniform for every decision; spreads).
    """

    name: str
    label: str
    scorers: tuple[tuple[str | Scorer, int], ...]
    gpu_pick: str
    tie_break: str = "rank"

    def __post_init__(self) -> None:
        valid = [s for s in _core.scorer_names() if s != "python"]
        for scorer, weight in self.scorers:
            if isinstance(scorer, Scorer):
                pass
            elif scorer == "python":
                raise InputError(
                    "a python scorer is given as the compiled object (@cplat.scorer), not by name",
                    field="scorers",
                )
            elif scorer not in valid:
                raise InputError(
                    f"unknown scorer {scorer!r} (valid: {', '.join(valid)})", field="scorers"
                )
            if weight <= 0:
                name = scorer if isinstance(scorer, str) else scorer.name
                raise InputError(f"scorer {name!r} needs a positive weight", field="scorers")
        picks = _core.gpu_pick_names()
        if self.gpu_pick not in picks:
            raise InputError(
                f"unknown GPU pick {self.gpu_pick!r} (valid: {', '.join(picks)})", field="gpu_pick"
            )
        if self.tie_break not in TIE_BREAKS:
            raise InputError(
                f"unknown tie break {self.tie_break!r} (valid: {', '.join(TIE_BREAKS)})",
                field="tie_break",
            )

    @property
    def needs_workload(self) -> bool:
        """Whether the profile needs a target workload (fragmentation-aware pieces)."""
        return self.gpu_pick == "fgd" or any(s == "fgd" for s, _ in self.scorers)


def _single(name: str, label: str, scorer: str, gpu_pick: str) -> Profile:
    return Profile(name, label, ((scorer, SINGLE_SCORER_WEIGHT),), gpu_pick)


#: The six policies of the FGD paper's static-packing experiment, plus spread (worst fit).
POLICIES: dict[str, Profile] = {
    p.name: p
    for p in (
        _single("random", "01-Random", "random", "random"),
        _single("dotprod", "02-DotProd", "dotprod", "best"),
        _single("clustering", "03-GpuClustering", "clustering", "best"),
        _single("packing", "04-GpuPacking", "packing", "best"),
        _single("bestfit", "05-BestFit", "bestfit", "best"),
        _single("fgd", "06-FGD", "fgd", "fgd"),
        _single("worstfit", "WorstFit", "worstfit", "worst"),
    )
}

#: The policies compared in the FGD paper, in its order.
PAPER_POLICIES = ("random", "dotprod", "clustering", "packing", "bestfit", "fgd")


def policy(name: str) -> Profile:
    """Look up a named policy.

    Raises
    ------
    InputError
        When ``name`` is not a known policy (the message lists the valid ones).
    """
    try:
        return POLICIES[name]
    except KeyError:
        raise InputError(
            f"unknown policy {name!r} (valid: {', '.join(POLICIES)})", field="policy"
        ) from None
