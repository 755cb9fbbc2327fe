"""Placement policies in plain Python.

:mod:`cplat.policy.reference` holds the slow, obvious "reference twins" of the native engine's
filters, scorers and GPU-selection rules; the tests compare the engine against them.
"""

from __future__ import annotations

from cplat.policy.reference import (
    NodeView,
    Request,
    filter_node,
    node_views,
    normalize_scores,
    pick_gpus,
    place,
    score_node,
    score_totals,
    select_node,
)

__all__ = [
    "NodeView",
    "Request",
    "filter_node",
    "node_views",
    "normalize_scores",
    "pick_gpus",
    "place",
    "score_node",
    "score_totals",
    "select_node",
]
