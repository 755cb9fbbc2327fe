"""Slow, obvious twins of the native engine that tests and benchmarks compare it against.

:mod:`.reference` mirrors the filters, scorers and GPU selection; :mod:`.reference_queue` the
calendar, quota and queue rules. Nothing in the product imports this package.
"""
