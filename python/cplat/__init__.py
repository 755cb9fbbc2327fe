"""cplat: a compute platform for AI/ML clusters."""
