"""Reader for the Alibaba GPU-sharing trace (cluster-trace-gpu-v2023, "openb").

Node lists have columns ``sn, cpu_milli, memory_mib, gpu, model`` (optionally ``rack`` and
``spine``); pod lists have ``name, cpu_milli, memory_mib, num_gpu, gpu_milli`` and optionally
``gpu_spec, qos, pod_phase, creation_time, deletion_time, scheduled_time``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cplat.errors import InputError
from cplat.model import MILLI_GPU, GpuModels, NodeTable, TaskTable
from cplat.traces._csv import non_negative_int, read_rows

NODE_REQUIRED = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
NODE_OPTIONAL = ("rack", "spine")
POD_REQUIRED = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
POD_OPTIONAL = ("gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time")


def read_openb_nodes(path: str | Path) -> NodeTable:
    """Read an openb node list.

    Raises
    ------
    InputError
        Naming file, line and column for any malformed value.
    """
    path = Path(path)
    source = str(path)
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    ngpu: list[int] = []
    model_names: list[str] = []
    rack: list[int] = []
    spine: list[int] = []
    for line, row in read_rows(path, NODE_REQUIRED, NODE_OPTIONAL):
        name = row["sn"].strip()
        if not name:
            raise InputError("empty node name", source=source, row=line, field="sn")
        names.append(name)
        cpu.append(non_negative_int(row["cpu_milli"], source=source, row=line, field="cpu_milli"))
        mem.append(non_negative_int(row["memory_mib"], source=source, row=line, field="memory_mib"))
        g = non_negative_int(row["gpu"], source=source, row=line, field="gpu", maximum=64)
        model = row["model"].strip()
        if g > 0 and not model:
            raise InputError(
                "a node with GPUs needs a GPU model", source=source, row=line, field="model"
            )
        if "|" in model:
            raise InputError(
                "a node has exactly one GPU model", source=source, row=line, field="model"
            )
        ngpu.append(g)
        model_names.append(model if g > 0 else "")
        rack.append(
            non_negative_int(row.get("rack", "0") or "0", source=source, row=line, field="rack")
        )
        spine.append(
            non_negative_int(row.get("spine", "0") or "0", source=source, row=line, field="spine")
        )
    if not names:
        raise InputError("no nodes in file", source=source)
    if len(set(names)) != len(names):
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise InputError(
                    f"duplicate node name {name!r}", source=source, row=i + 2, field="sn"
                )
            seen.add(name)
    models = GpuModels(tuple(sorted({m for m in model_names if m})))
    return NodeTable(
        name=tuple(names),
        cpu_milli=np.asarray(cpu, dtype=np.int64),
        memory_mib=np.asarray(mem, dtype=np.int64),
        num_gpu=np.asarray(ngpu, dtype=np.int32),
        gpu_model=np.asarray([models.index(m) if m else -1 for m in model_names], dtype=np.int32),
        models=models,
        rack=np.asarray(rack, dtype=np.int32),
        spine=np.asarray(spine, dtype=np.int32),
    )


def read_openb_pods(path: str | Path, models: GpuModels) -> TaskTable:
    """Read an openb pod list; ``gpu_spec`` entries must name models in ``models``.

    Raises
    ------
    InputError
        Naming file, line and column for any malformed value or unknown GPU model.
    """
    path = Path(path)
    source = str(path)
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    ngpu: list[int] = []
    milli: list[int] = []
    specs: list[str] = []
    masks: list[int] = []
    for line, row in read_rows(path, POD_REQUIRED, POD_OPTIONAL):
        name = row["name"].strip()
        if not name:
            raise InputError("empty pod name", source=source, row=line, field="name")
        c = non_negative_int(row["cpu_milli"], source=source, row=line, field="cpu_milli")
        m = non_negative_int(row["memory_mib"], source=source, row=line, field="memory_mib")
        g = non_negative_int(row["num_gpu"], source=source, row=line, field="num_gpu", maximum=64)
        gm = non_negative_int(
            row["gpu_milli"], source=source, row=line, field="gpu_milli", maximum=MILLI_GPU
        )
        if g == 0 and gm > 0:
            raise InputError(
                f"gpu_milli is {gm} but num_gpu is 0", source=source, row=line, field="gpu_milli"
            )
        if g > 0 and gm == 0:
            raise InputError(
                f"num_gpu is {g} but gpu_milli is 0", source=source, row=line, field="gpu_milli"
            )
        if g > 1 and gm < MILLI_GPU:
            raise InputError(
                f"a task with {g} GPUs must take whole devices (gpu_milli 1000), got {gm}",
                source=source,
                row=line,
                field="gpu_milli",
            )
        spec = (row.get("gpu_spec") or "").strip()
        try:
            mask = models.mask(spec)
        except ValueError:
            unknown = [p for p in spec.split("|") if p.strip() and p.strip() not in models.names]
            raise InputError(
                f"unknown GPU model {unknown[0]!r} (the cluster has: {', '.join(models.names)})",
                source=source,
                row=line,
                field="gpu_spec",
            ) from None
        names.append(name)
        cpu.append(c)
        mem.append(m)
        ngpu.append(g)
        milli.append(gm)
        specs.append(spec)
        masks.append(mask)
    if not names:
        raise InputError("no pods in file", source=source)
    return TaskTable(
        name=tuple(names),
        cpu_milli=np.asarray(cpu, dtype=np.int64),
        memory_mib=np.asarray(mem, dtype=np.int64),
        num_gpu=np.asarray(ngpu, dtype=np.int32),
        gpu_milli=np.asarray(milli, dtype=np.int32),
        gpu_spec=tuple(specs),
        models=np.asarray(masks, dtype=np.uint64),
    )
