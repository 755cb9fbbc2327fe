"""Slow twins of the native engine, and the builders that tests and benchmarks share.

:mod:`.reference` mirrors the filters, scorers and GPU selection; :mod:`.reference_queue` the
calendar, quota and queue rules. The shared builders of the tests: :mod:`.sim_agents`
(simulated agents on a virtual clock), :mod:`.service` (the service in-process) and
:mod:`.served` (``cplat serve`` as a subprocess). Nothing in the product imports this package.
"""
