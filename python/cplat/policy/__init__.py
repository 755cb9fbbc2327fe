"""Queue and placement policies in Python.

Fair share and DRF queue sorts (:mod:`.fairshare`),
CP-SAT gang placement with a greedy fallback (:mod:`.gang`) and numba-compiled scorers
(:mod:`.py_scorers`). The slow reference twins the tests compare the engine against live in
:mod:`cplat.testing`.
"""
