"""Cluster topology: spines, racks and nodes, and NVLink islands of GPUs inside a node.

A description lists spines, each with racks, each with groups of identical nodes::

    {
      "gpu_models": ["A100"],
      "spines": [
        {"name": "s0", "racks": [
          {"name": "r0", "nodes": [
            {"count": 4, "cpu_milli": 96000, "memory_mib": 786432,
             "num_gpu": 8, "gpu_model": "A100", "nvlink_islands": [4, 4]}
          ]}
        ]}
      ]
    }

``nvlink_islands`` gives the sizes of the node's NVLink islands (they must add up to
``num_gpu``; default: one island of all devices) and ``numa_domains`` optionally the sizes of
its NUMA domains (default: one per island). :func:`from_dict`, :func:`from_json`,
:func:`from_yaml` (when PyYAML is installed) and :func:`load` read descriptions;
:func:`fat_tree` generates a synthetic one. Rack ids are global (dense over the cluster), spine
ids dense as well; device island ids are local to their node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cplat import _core
from cplat.errors import InputError
from cplat.model import I32, GpuModels, NodeTable

__all__ = [
    "Topology",
    "apply",
    "fat_tree",
    "from_dict",
    "from_json",
    "from_yaml",
    "load",
    "racks_spanned",
]


@dataclass(frozen=True)
class Topology:
    """Nodes with their racks and spines plus per-GPU NVLink island and NUMA ids.

    Attributes
    ----------
    nodes
        The node table (``rack`` and ``spine`` columns filled).
    gpu_nvlink
        NVLink island of every GPU, in node order then device order (local to the node).
    gpu_numa
        NUMA domain of every GPU, same order.
    rack_names, spine_names
        Names of the racks and spines, indexed by id.
    """

    nodes: NodeTable
    gpu_nvlink: I32
    gpu_numa: I32
    rack_names: tuple[str, ...]
    spine_names: tuple[str, ...]

    @property
    def num_racks(self) -> int:
        """Number of racks."""
        return len(self.rack_names)

    @property
    def num_spines(self) -> int:
        """Number of spines."""
        return len(self.spine_names)


def _int_field(
    obj: Mapping[str, Any],
    key: str,
    where: str,
    source: str | None,
    *,
    default: int | None = None,
    minimum: int = 0,
) -> int:
    value = obj.get(key, default)
    if value is None:
        raise InputError("is required", source=source, field=f"{where}.{key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(
            f"must be an integer, got {value!r}", source=source, field=f"{where}.{key}"
        )
    if value < minimum:
        raise InputError(f"must be at least {minimum}, got {value}", source=source,
                         field=f"{where}.{key}")  # fmt: skip
    return value


def _list_field(obj: Mapping[str, Any], key: str, where: str, source: str | None) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list) or not value:
        raise InputError("must be a non-empty list", source=source, field=f"{where}.{key}")
    return value


def _mapping(obj: Any, where: str, source: str | None) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InputError(f"must be an object, got {type(obj).__name__}", source=source, field=where)
    return obj


def _sizes(obj: Mapping[str, Any], key: str, where: str, total: int,
           source: str | None) -> list[int] | None:  # fmt: skip
    value = obj.get(key)
    if value is None:
        return None
    field = f"{where}.{key}"
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise InputError("must be a list of positive integers", source=source, field=field)
    if sum(value) != total:
        raise InputError(f"sizes add up to {sum(value)}, but num_gpu is {total}", source=source,
                         field=field)  # fmt: skip
    return list(value)


def from_dict(description: Mapping[str, Any], *, source: str | None = None) -> Topology:
    """Build a topology from a parsed description (see the module docstring).

    Parameters
    ----------
    description
        The description: ``spines`` and optionally ``gpu_models``.
    source
        Name of the input, for error messages.

    Returns
    -------
    Topology
        Nodes in description order (spine, rack, group, index).

    Raises
    ------
    InputError
        For a malformed description; ``field`` names the offending entry, e.g.
        ``spines[0].racks[1].nodes[0].count``.
    """
    desc = _mapping(description, "description", source)
    models_raw = desc.get("gpu_models", [])
    if not isinstance(models_raw, list) or not all(isinstance(m, str) for m in models_raw):
        raise InputError("must be a list of model names", source=source, field="gpu_models")
    model_names: list[str] = list(models_raw)
    names: list[str] = []
    cpu: list[int] = []
    mem: list[int] = []
    ngpu: list[int] = []
    model: list[int] = []
    rack: list[int] = []
    spine: list[int] = []
    nvlink: list[int] = []
    numa: list[int] = []
    rack_names: list[str] = []
    spine_names: list[str] = []
    for s, spine_raw in enumerate(_list_field(desc, "spines", "description", source)):
        sw = f"spines[{s}]"
        spine_obj = _mapping(spine_raw, sw, source)
        spine_name = str(spine_obj.get("name", f"spine{s}"))
        spine_names.append(spine_name)
        for k, rack_raw in enumerate(_list_field(spine_obj, "racks", sw, source)):
            rw = f"{sw}.racks[{k}]"
            rack_obj = _mapping(rack_raw, rw, source)
            rack_name = str(rack_obj.get("name", f"{spine_name}-rack{k}"))
            rack_id = len(rack_names)
            rack_names.append(rack_name)
            for g, group_raw in enumerate(_list_field(rack_obj, "nodes", rw, source)):
                gw = f"{rw}.nodes[{g}]"
                grp = _mapping(group_raw, gw, source)
                count = _int_field(grp, "count", gw, source, default=1, minimum=1)
                c = _int_field(grp, "cpu_milli", gw, source)
                m = _int_field(grp, "memory_mib", gw, source)
                n_gpu = _int_field(grp, "num_gpu", gw, source, default=0)
                model_id = -1
                if n_gpu > 0:
                    mname = grp.get("gpu_model")
                    if mname is None:
                        model_id = -1
                    elif not isinstance(mname, str):
                        raise InputError("must be a model name", source=source,
                                         field=f"{gw}.gpu_model")  # fmt: skip
                    else:
                        if mname not in model_names:
                            model_names.append(mname)
                        model_id = model_names.index(mname)
                islands = _sizes(grp, "nvlink_islands", gw, n_gpu, source) or (
                    [n_gpu] if n_gpu > 0 else []
                )
                domains = _sizes(grp, "numa_domains", gw, n_gpu, source) or islands
                prefix = str(grp.get("name_prefix", f"{rack_name}-n"))
                isl = np.repeat(np.arange(len(islands), dtype=np.int32), islands).tolist()
                dom = np.repeat(np.arange(len(domains), dtype=np.int32), domains).tolist()
                for i in range(count):
                    names.append(f"{prefix}{i}" if "name_prefix" in grp else f"{prefix}{g}-{i}")
                    cpu.append(c)
                    mem.append(m)
                    ngpu.append(n_gpu)
                    model.append(model_id)
                    rack.append(rack_id)
                    spine.append(s)
                    nvlink.extend(isl)
                    numa.extend(dom)
    if len(set(names)) != len(names):
        raise InputError("node names must be unique (check name_prefix)", source=source,
                         field="name_prefix")  # fmt: skip
    try:
        models = GpuModels(tuple(model_names))
    except InputError as exc:
        raise InputError(exc.message, source=source, field="gpu_models") from exc
    nodes = NodeTable(
        name=tuple(names),
        cpu_milli=np.asarray(cpu, dtype=np.int64),
        memory_mib=np.asarray(mem, dtype=np.int64),
        num_gpu=np.asarray(ngpu, dtype=np.int32),
        gpu_model=np.asarray(model, dtype=np.int32),
        models=models,
        rack=np.asarray(rack, dtype=np.int32),
        spine=np.asarray(spine, dtype=np.int32),
    )
    return Topology(
        nodes=nodes,
        gpu_nvlink=np.asarray(nvlink, dtype=np.int32),
        gpu_numa=np.asarray(numa, dtype=np.int32),
        rack_names=tuple(rack_names),
        spine_names=tuple(spine_names),
    )


def from_json(text_or_path: str | Path) -> Topology:
    """Build a topology from JSON text or a ``.json`` file path.

    Raises
    ------
    InputError
        For invalid JSON or a malformed description.
    """
    source: str | None = None
    text = str(text_or_path)
    if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
        source = text
        text = Path(text_or_path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", source=source, row=exc.lineno) from exc
    return from_dict(data, source=source)


def from_yaml(text_or_path: str | Path) -> Topology:
    """Build a topology from YAML text or a ``.yaml``/``.yml`` file path (needs PyYAML).

    Raises
    ------
    InputError
        When PyYAML is missing, or for invalid YAML or a malformed description.
    """
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("YAML topologies need PyYAML (pip install pyyaml); use JSON") from exc
    source: str | None = None
    text = str(text_or_path)
    if isinstance(text_or_path, Path) or "\n" not in text:
        source = text
        text = Path(text_or_path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", source=source) from exc
    return from_dict(data, source=source)


def load(path: str | Path) -> Topology:
    """Read a topology file, JSON or YAML by its suffix."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        return from_yaml(p)
    return from_json(p)


def fat_tree(
    spines: int,
    racks_per_spine: int,
    nodes_per_rack: int,
    gpus_per_node: int = 8,
    *,
    cpu_milli: int = 96_000,
    memory_mib: int = 786_432,
    gpu_model: str = "G2",
    nvlink_island: int | None = None,
) -> Topology:
    """Return a synthetic 3-level topology of identical nodes.

    Parameters
    ----------
    spines, racks_per_spine, nodes_per_rack
        Shape of the tree (all positive).
    gpus_per_node
        Devices per node (0 for CPU-only nodes).
    cpu_milli, memory_mib, gpu_model
        Node shape.
    nvlink_island
        Devices per NVLink island (must divide ``gpus_per_node``); default: half a node for
        nodes of 8 or more devices, else the whole node.

    Raises
    ------
    InputError
        For a non-positive size or an island size that does not divide the node.
    """
    for name, v in (("spines", spines), ("racks_per_spine", racks_per_spine),
                    ("nodes_per_rack", nodes_per_rack)):  # fmt: skip
        if v < 1:
            raise InputError(f"must be positive, got {v}", field=name)
    if gpus_per_node < 0:
        raise InputError(f"must be non-negative, got {gpus_per_node}", field="gpus_per_node")
    if nvlink_island is None:
        nvlink_island = gpus_per_node // 2 if gpus_per_node >= 8 else max(gpus_per_node, 1)
    if gpus_per_node > 0 and (nvlink_island < 1 or gpus_per_node % nvlink_island != 0):
        raise InputError(f"must divide gpus_per_node ({gpus_per_node}), got {nvlink_island}",
                         field="nvlink_island")  # fmt: skip
    group: dict[str, Any] = {
        "count": nodes_per_rack, "cpu_milli": cpu_milli, "memory_mib": memory_mib,
        "num_gpu": gpus_per_node,
    }  # fmt: skip
    if gpus_per_node > 0:
        group["gpu_model"] = gpu_model
        group["nvlink_islands"] = [nvlink_island] * (gpus_per_node // nvlink_island)
    desc = {
        "spines": [
            {"name": f"s{s}", "racks": [
                {"name": f"s{s}r{k}", "nodes": [dict(group, name_prefix=f"s{s}r{k}n")]}
                for k in range(racks_per_spine)
            ]}
            for s in range(spines)
        ]
    }  # fmt: skip
    return from_dict(desc, source="fat_tree")


def apply(topology: Topology, state: _core.ClusterState) -> None:
    """Copy the per-GPU NVLink island and NUMA ids into a native cluster state.

    ``state`` must have been built from ``topology.nodes`` (same GPUs in the same order).
    """
    _core.set_gpu_topology(state, topology.gpu_nvlink, topology.gpu_numa)


def racks_spanned(
    job_nodes: Sequence[Sequence[int] | npt.NDArray[np.int32]] | Any,
    nodes: NodeTable,
    *,
    min_nodes: int = 2,
) -> npt.NDArray[np.int64]:
    """Return the number of racks each multi-node job spans.

    Parameters
    ----------
    job_nodes
        One node list per job (one node id per task): a ``jobs.parquet``-like table with a
        ``nodes`` list column (``pyarrow.Table``), that column itself, or a list of lists.
    nodes
        The cluster the jobs ran on (its ``rack`` and ``spine`` columns).
    min_nodes
        Keep only jobs on at least this many distinct nodes (default: multi-node jobs).

    Returns
    -------
    numpy.ndarray
        Racks spanned per kept job, in input order. Racks are told apart by (spine, rack).
    """
    column: Any = job_nodes
    if hasattr(column, "column_names") and "nodes" in column.column_names:
        column = column.column("nodes")
    if hasattr(column, "to_pylist"):
        column = column.to_pylist()
    out: list[int] = []
    for job in column:
        ids = np.unique(np.asarray(job if job is not None else [], dtype=np.int64))
        if len(ids) < max(min_nodes, 1):
            continue
        keys = {(int(nodes.spine[i]), int(nodes.rack[i])) for i in ids}
        out.append(len(keys))
    return np.asarray(out, dtype=np.int64)
