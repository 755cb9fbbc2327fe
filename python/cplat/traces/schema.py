"""Canonical trace schemas (Apache Arrow), shared by every reader and by the simulator.

A job has ``num_tasks`` identical tasks; each task asks for ``cpu_milli``, ``memory_mib`` and
``num_gpu`` devices of ``gpu_milli`` each (``num_gpu == 1`` with ``gpu_milli < 1000`` is a share
of one device). Times are integer seconds from the trace start. ``requested_time`` is the user's
run-time estimate (null when unknown); ``duration`` is the actual run time.
"""

from __future__ import annotations

import pyarrow as pa

JOB_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.int64(), nullable=False),
        pa.field("submit_time", pa.int64(), nullable=False),
        pa.field("duration", pa.int64(), nullable=False),
        pa.field("requested_time", pa.int64(), nullable=True),
        pa.field("num_tasks", pa.int32(), nullable=False),
        pa.field("cpu_milli", pa.int64(), nullable=False),
        pa.field("memory_mib", pa.int64(), nullable=False),
        pa.field("num_gpu", pa.int32(), nullable=False),
        pa.field("gpu_milli", pa.int32(), nullable=False),
        pa.field("gpu_models", pa.string(), nullable=False),  # allowed, "|"-separated, "" = any
        pa.field("user", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),  # project / account / virtual cluster
        pa.field("priority", pa.int32(), nullable=False),
        pa.field("queue", pa.string(), nullable=False),
    ],
    metadata={"cplat.schema": "jobs/1"},
)

NODE_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("cpu_milli", pa.int64(), nullable=False),
        pa.field("memory_mib", pa.int64(), nullable=False),
        pa.field("num_gpu", pa.int32(), nullable=False),
        pa.field("gpu_model", pa.string(), nullable=False),  # "" for CPU-only nodes
        pa.field("rack", pa.int32(), nullable=False),
        pa.field("spine", pa.int32(), nullable=False),
    ],
    metadata={"cplat.schema": "nodes/1"},
)
