"""Built-in placement policies written again as Python scorers (numba-compiled).

They show how a policy is written with :func:`cplat.scorer` and are checked against the
native engine: :data:`bestfit` places exactly as the built-in ``bestfit`` does. Importing this
module compiles them, so it needs numba (``pip install 'cplat[research]'``).
"""

from __future__ import annotations

from cplat.profile import Profile
from cplat.scorers import NodeState, Request, Scorer, profile, scorer

#: Normalisers of the fit scorers: the largest node shape (milli-CPU, milli-GPU).
MAX_SPEC_CPU = 128000.0
MAX_SPEC_GPU = 8000.0


def _bestfit(node: int, state: NodeState, request: Request) -> int:
    # Leftover (CPU, GPU) after placing, each normalised by the largest node shape, half
    # weight; least leftover scores highest. Same operations in the same order as the native
    # scorer, so the truncation (which decides ties) is the same.
    left = (state.cpu_free[node] - request.cpu_milli) / MAX_SPEC_CPU * 0.5
    left += (state.gpu_free_total[node] - request.num_gpu * request.gpu_milli) / MAX_SPEC_GPU * 0.5
    return int((1.0 - left) * 100.0)


#: BestFit: least leftover first, min-max normalised like the native ``bestfit``.
bestfit: Scorer = scorer(normalize=True)(_bestfit)


def bestfit_profile(tie_break: str = "rank") -> Profile:
    """Return the BestFit policy around :data:`bestfit` (devices picked best-fit)."""
    return profile(bestfit, name="py-bestfit", gpu_pick="best", tie_break=tie_break)
