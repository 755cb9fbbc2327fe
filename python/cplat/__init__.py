"""cplat: a compute platform for AI/ML clusters."""

from cplat.scorers import scorer

__all__ = ["scorer"]
