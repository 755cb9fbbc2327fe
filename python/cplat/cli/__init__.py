"""The ``cplat`` command line.

:mod:`.main` holds the entry point and ``sim``/``pack``/``bench``;
:mod:`.jobs` (``cplat job ...``), :mod:`.service` (``serve``, ``agent``, ``token``, quotas and
nodes) and :mod:`.traces` (``cplat trace ...``).
"""

from __future__ import annotations

from cplat.cli.main import main

__all__ = ["main"]
