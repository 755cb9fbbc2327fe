"""Trace readers: real cluster traces into cplat's column tables."""

from cplat.traces.openb import read_openb_nodes, read_openb_pods

__all__ = ["read_openb_nodes", "read_openb_pods"]
