"""Type stubs of the native module ``cplat._core`` (internal; use the cplat package)."""

import numpy as np
import numpy.typing as npt

_I64 = npt.NDArray[np.int64]
_I32 = npt.NDArray[np.int32]
_U64 = npt.NDArray[np.uint64]
_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_U32 = npt.NDArray[np.uint32]

class Status:
    @property
    def ok(self) -> bool: ...
    @property
    def code(self) -> str: ...
    @property
    def plugin(self) -> str: ...

def code_names() -> list[str]: ...
def scorer_names() -> list[str]: ...
def gpu_pick_names() -> list[str]: ...

class ClusterState:
    def __init__(
        self,
        cpu_milli: npt.ArrayLike,
        memory_mib: npt.ArrayLike,
        num_gpu: npt.ArrayLike,
        gpu_model: npt.ArrayLike,
        rack: npt.ArrayLike,
        spine: npt.ArrayLike,
    ) -> None: ...
    @property
    def num_nodes(self) -> int: ...
    @property
    def num_gpus(self) -> int: ...
    @property
    def total_gpu_milli(self) -> int: ...
    @property
    def allocated_gpu_milli(self) -> int: ...
    @property
    def cpu_capacity(self) -> _I64: ...
    @property
    def cpu_free(self) -> _I64: ...
    @property
    def memory_capacity(self) -> _I64: ...
    @property
    def memory_free(self) -> _I64: ...
    @property
    def gpu_free(self) -> _I32: ...
    @property
    def gpu_begin(self) -> _I32: ...
    @property
    def gpu_model(self) -> _I32: ...
    @property
    def flags(self) -> _U8: ...
    @property
    def rack(self) -> _I32: ...
    @property
    def spine(self) -> _I32: ...
    def kind_count(self, node: int, slot: int) -> int: ...
    def kinds_present(self, node: int) -> int: ...
    def set_flags(self, node: int, flags: int) -> None: ...
    def check_invariants(self) -> bool: ...

def node_fragmentation(
    cpu_milli: npt.ArrayLike,
    num_gpu: npt.ArrayLike,
    gpu_milli: npt.ArrayLike,
    models: npt.ArrayLike,
    weight: npt.ArrayLike,
    cpu_free: int,
    model: int,
    gpu_free: npt.ArrayLike,
) -> float: ...

class Engine:
    def __init__(
        self,
        state: ClusterState,
        scorers: list[tuple[str, int]],
        gpu_pick: str,
        workload_cpu_milli: npt.ArrayLike,
        workload_num_gpu: npt.ArrayLike,
        workload_gpu_milli: npt.ArrayLike,
        workload_models: npt.ArrayLike,
        workload_weight: npt.ArrayLike,
        seed: int,
        tie_break: str = "rank",
    ) -> None: ...
    def place(
        self, cpu_milli: int, memory_mib: int, num_gpu: int, gpu_milli: int, models: int
    ) -> tuple[Status, int, list[int]]: ...
    def release(
        self,
        node: int,
        cpu_milli: int,
        memory_mib: int,
        num_gpu: int,
        gpu_milli: int,
        gpus: list[int],
    ) -> Status: ...
    def place_batch(
        self,
        cpu_milli: npt.ArrayLike,
        memory_mib: npt.ArrayLike,
        num_gpu: npt.ArrayLike,
        gpu_milli: npt.ArrayLike,
        models: npt.ArrayLike,
        track: bool = False,
    ) -> dict[str, npt.NDArray[np.generic]]: ...
    def filter(
        self, cpu_milli: int, memory_mib: int, num_gpu: int, gpu_milli: int, models: int
    ) -> _U8: ...
    def score(
        self,
        scorer: str,
        cpu_milli: int,
        memory_mib: int,
        num_gpu: int,
        gpu_milli: int,
        models: int,
    ) -> _I64: ...
    def last_rejections(self) -> list[int]: ...
    @property
    def tie_rank(self) -> _U32: ...
    @property
    def frag_total(self) -> float: ...
    @property
    def node_frag(self) -> _F64: ...
    def node_changed(self, node: int) -> None: ...
