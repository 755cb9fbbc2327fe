"""Shared fixtures: where the real traces live, and small clusters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real traces live beside the repository (never copied into it); CPLAT_TRACES overrides.
TRACES = Path(os.environ.get("CPLAT_TRACES", REPO.parent / "shared" / "traces"))
OPENB = TRACES / "alibaba-gpu-v2023-openb"


@pytest.fixture(scope="session")
def openb_dir() -> Path:
    if not (OPENB / "csv" / "openb_node_list_gpu_node.csv").is_file():
        pytest.skip(f"real openb trace not found at {OPENB} (../shared is absent)")
    return OPENB
