"""Column tables for nodes and tasks, in integer units.

CPU is in milli-cores, memory in MiB and GPU in milli-GPU (1000 = one device). GPU sharing
follows the openb semantics: ``num_gpu == 1`` with ``gpu_milli < 1000`` takes that share of
one device, ``num_gpu == k`` with ``gpu_milli == 1000`` takes k whole devices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cplat.errors import InputError

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]

MILLI_GPU = 1000
MAX_GPU_MODELS = 64


@dataclass(frozen=True)
class GpuModels:
    """The GPU model names of a cluster; a model's id is its index, a set is a bit mask."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) > MAX_GPU_MODELS:
            raise InputError(f"at most {MAX_GPU_MODELS} GPU models are supported")

    def index(self, name: str) -> int:
        """Return the id of model ``name`` (raises ``ValueError`` when unknown)."""
        return self.names.index(name)

    def mask(self, spec: str) -> int:
        """Bit mask of the models in a ``|``-separated spec; 0 (any model) for an empty spec.

        Raises
        ------
        ValueError
            When the spec names a model the cluster does not have.
        """
        mask = 0
        for part in spec.split("|"):
            part = part.strip()
            if part:
                mask |= 1 << self.names.index(part)
        return mask


@dataclass(frozen=True)
class NodeTable:
    """Nodes of a cluster as columns."""

    name: tuple[str, ...]
    cpu_milli: I64
    memory_mib: I64
    num_gpu: I32
    gpu_model: I32  # id into ``models``; -1 for CPU-only nodes
    models: GpuModels
    rack: I32 = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    spine: I32 = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def __post_init__(self) -> None:
        n = len(self.name)
        if len(self.rack) == 0 and n > 0:
            object.__setattr__(self, "rack", np.zeros(n, dtype=np.int32))
        if len(self.spine) == 0 and n > 0:
            object.__setattr__(self, "spine", np.zeros(n, dtype=np.int32))
        for col in ("cpu_milli", "memory_mib", "num_gpu", "gpu_model", "rack", "spine"):
            if len(getattr(self, col)) != n:
                raise ValueError(f"node column {col} has the wrong length")

    def __len__(self) -> int:
        return len(self.name)

    @property
    def total_gpu_milli(self) -> int:
        """Cluster GPU capacity in milli-GPU."""
        return int(self.num_gpu.astype(np.int64).sum()) * MILLI_GPU


@dataclass(frozen=True)
class TaskTable:
    """Tasks (pods) as columns; ``gpu_spec`` keeps the allowed-model text as written."""

    name: tuple[str, ...]
    cpu_milli: I64
    memory_mib: I64
    num_gpu: I32
    gpu_milli: I32
    gpu_spec: tuple[str, ...]
    models: U64  # bit mask per task, 0 = any model

    def __len__(self) -> int:
        return len(self.name)

    @property
    def total_gpu_milli(self) -> I64:
        """Requested milli-GPU per task (``num_gpu * gpu_milli``)."""
        return self.num_gpu.astype(np.int64) * self.gpu_milli.astype(np.int64)

    def take(self, index: Iterable[int] | npt.NDArray[np.intp]) -> TaskTable:
        """Return the tasks at ``index`` (in that order, repeats allowed)."""
        idx = np.asarray(list(index) if not isinstance(index, np.ndarray) else index, dtype=np.intp)
        return TaskTable(
            name=tuple(self.name[i] for i in idx),
            cpu_milli=self.cpu_milli[idx],
            memory_mib=self.memory_mib[idx],
            num_gpu=self.num_gpu[idx],
            gpu_milli=self.gpu_milli[idx],
            gpu_spec=tuple(self.gpu_spec[i] for i in idx),
            models=self.models[idx],
        )
