"""Request and answer schemas (JSON Schema, as OpenAPI 3.1 uses it) and their validator.

The same dictionaries validate requests and make ``/openapi.json``, so the spec cannot drift
from what the handlers accept. The validator covers the subset the schemas use.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from cplat.store.base import JOB_STATES as STORE_JOB_STATES
from cplat_server.errors import ApiError, bad_request

Schema = dict[str, Any]

#: Largest integer any field accepts: fits a signed 64-bit column and a double exactly.
MAX_INT = 2**53 - 1
#: Deepest nesting of arrays and objects a body may have. The deepest schema needs 5; the
#: bound keeps the parser and the validator (both recursive) far from the recursion limit.
MAX_DEPTH = 32
#: Longest integer literal a body may hold, sign included. Anything longer is out of every
#: range, and Python refuses to convert more than 4,300 digits at all.
MAX_INT_DIGITS = 24
#: Text without NUL (which neither SQL backend stores).
TEXT = "^[^\\u0000]*$"
NAME = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PATH_NAME = "^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
#: A filter naming a project: a name, or empty for none.
NAME_FILTER = "^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"
#: Object ids as text (path parameters, cursors): ASCII digits only, never other scripts'.
ID_TEXT = "^[0-9]{1,16}$"
JOB_STATES = list(STORE_JOB_STATES)


def _int(lo: int = 0, hi: int = MAX_INT, **extra: Any) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi, **extra}


def _text(max_len: int = 4096, **extra: Any) -> Schema:
    return {"type": "string", "maxLength": max_len, "pattern": TEXT, **extra}


def _obj(props: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    out.update(extra)
    return out


RESOURCE_VEC = _obj(
    {"cpu_milli": _int(), "memory_mib": _int(), "gpu_milli": _int()},
    ("cpu_milli", "memory_mib", "gpu_milli"),
)
RESOURCES = _obj(
    {
        "cpu_milli": _int(0, 10**9),
        "memory_mib": _int(0, 10**10),
        "num_gpu": _int(0, 16),
        "gpu_milli": _int(1, 1000),
        "gpu_models": {
            "type": "array",
            "items": _text(64, minLength=1),
            "maxItems": 64,
        },
    }
)
TASKS = _obj({"count": _int(1, 1024), "min_count": _int(1, 1024), "resources": RESOURCES})
CHECKPOINT_POLICY = _obj({"interval": _int(0, 10**9), "cost": _int(0, 10**9)}, ("interval",))
ENV = {
    "type": "object",
    "additionalProperties": _text(32768),
    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,255}$"},
    "maxProperties": 256,
}
COMMAND = {
    "anyOf": [
        _text(65536, minLength=1),
        {"type": "array", "items": _text(65536), "minItems": 1, "maxItems": 4096},
    ]
}
JOB_SUBMIT = _obj(
    {
        "name": {"type": "string", "pattern": NAME},
        "project": {"type": "string", "pattern": NAME},
        "tasks": TASKS,
        "priority": _int(-1000, 1000),
        "gang": {"type": "boolean"},
        "exclusive": {"type": "boolean"},
        "max_runtime": _int(1, 10**8),
        "checkpoint": {"anyOf": [CHECKPOINT_POLICY, {"type": "null"}]},
        "command": COMMAND,
        "env": ENV,
        "workdir": {"anyOf": [_text(4096, minLength=1), {"type": "null"}]},
        "on_failure": {"type": "string", "enum": ["fail", "restart"]},
        "max_restarts": _int(0, 100),
        # Checked in full by cplat.ml.tracking.jobs.parse_experiment (docs/tracking.md).
        "experiment": {"anyOf": [_text(500, minLength=1), {"type": "object"}]},
    },
    ("name", "command"),
)
CHECKPOINT_IN = _obj(
    {
        "step": _int(),
        "uri": _text(4096, minLength=1),
        "size_bytes": _int(),
        "kind": {"type": "string", "enum": ["full", "incremental", "differential"]},
        "parent": {"anyOf": [_int(1), {"type": "null"}]},
        "complete": {"type": "boolean"},
        "attempt": _int(0, 10**6),
    },
    ("step", "uri"),
)
QUOTA_PUT = _obj(
    {
        "nominal": RESOURCE_VEC,
        "borrowing_limit": RESOURCE_VEC,
        "lending_limit": {"anyOf": [RESOURCE_VEC, {"type": "null"}]},
        "pool": {"anyOf": [{"type": "string", "pattern": PATH_NAME}, {"const": ""}]},
        "overcommit": {"type": "number", "minimum": 1, "maximum": 100},
    },
    ("nominal",),
)
POOL_PUT = _obj(
    {
        "borrowing_limit": {"anyOf": [RESOURCE_VEC, {"type": "null"}]},
        "description": _text(1024),
    }
)
GPU_INFO = {
    "type": "object",
    "properties": {
        "index": _int(0, 63),
        "uuid": _text(128),
        "model": _text(128),
        "memory_mib": _int(),
        "mig_mode": {"type": "boolean"},
        "mig_instances": {"type": "array", "maxItems": 64},
        "nvlink_peers": {"type": "array", "items": _int(0, 63), "maxItems": 64},
        "numa_node": _int(-1, 1024),
        "healthy": {"type": "boolean"},
        "reason": _text(1024),
    },
    "required": ["index"],
}
#: How the node's agent isolates tasks (see cplat.runtime.isolation).
NODE_ISOLATION = _obj(
    {
        "task_user": _text(64),
        "user_mapping": {"type": "boolean"},
        "cgroup": {"type": "string", "enum": ["v1", "v2", "rlimits"]},
        "devices_restricted": {"type": "boolean"},
    }
)
NODE_REGISTER = _obj(
    {
        "name": {"type": "string", "pattern": NAME},
        "hostname": _text(255),
        "address": _text(255),
        "cpu_milli": _int(0, 10**9),
        "memory_mib": _int(0, 10**10),
        "gpus": {"type": "array", "items": GPU_INFO, "maxItems": 64},
        "rack": _int(0, 10**6),
        "spine": _int(0, 10**6),
        "labels": {
            "type": "object",
            "additionalProperties": _text(256),
            "maxProperties": 64,
        },
        "isolation": NODE_ISOLATION,
    },
    ("name", "cpu_milli", "memory_mib"),
)
TASK_REPORT = _obj(
    {
        "job_id": _int(1),
        "attempt": _int(0, 10**6),
        "rank": _int(0, 1023),
        "state": {"type": "string", "enum": ["running", "exited"]},
        "exit_code": {"anyOf": [_int(-(2**31), 2**31 - 1), {"type": "null"}]},
        "pid": {"anyOf": [_int(0, 2**31 - 1), {"type": "null"}]},
        "reason": _text(1024),
    },
    ("job_id", "attempt", "rank", "state"),
)
GPU_HEALTH = _obj(
    {"index": _int(0, 63), "healthy": {"type": "boolean"}, "reason": _text(1024)},
    ("index", "healthy"),
)
HEARTBEAT = _obj(
    {
        "tasks": {"type": "array", "items": TASK_REPORT, "maxItems": 4096},
        "gpus": {"type": "array", "items": GPU_HEALTH, "maxItems": 64},
    }
)
LOG_CHUNK = _obj(
    {
        "attempt": _int(0, 10**6),
        "rank": _int(0, 1023),
        "stream": {"type": "string", "enum": ["stdout", "stderr"]},
        "data": _text(1 << 20),
    },
    ("attempt", "rank", "data"),
)
LOGS_POST = _obj({"chunks": {"type": "array", "items": LOG_CHUNK, "maxItems": 4096}}, ("chunks",))

# Answers (documented in the spec; not validated at run time).
ERROR = _obj(
    {
        "error": _obj(
            {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
            ("code", "message", "field"),
        )
    },
    ("error",),
)
PLACEMENT = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "rank": {"type": "integer"},
            "node": {"type": "string"},
            "gpus": {"type": "array", "items": {"type": "integer"}},
        },
    },
}
NUM_OR_NULL = {"type": ["number", "null"]}
JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "project": {"type": "string"},
        "user": {"type": "string"},
        "state": {"type": "string", "enum": JOB_STATES},
        "reason": {"type": "string"},
        "priority": {"type": "integer"},
        "tasks": {"type": "object"},
        "gang": {"type": "boolean"},
        "max_runtime": {"type": "integer"},
        "checkpoint": {"type": ["object", "null"]},
        "command": {},
        "env": {
            "type": "object",
            "additionalProperties": {"type": ["string", "null"]},
            "description": "The job's environment. Its values may be secrets: callers with "
            "only the viewer role in the project see the names, each with the value null; "
            "members and admins of the project and cluster admins see the values.",
        },
        "workdir": {"type": ["string", "null"]},
        "on_failure": {"type": "string"},
        "max_restarts": {"type": "integer"},
        "attempt": {"type": "integer"},
        "placement": PLACEMENT,
        "submitted_at": {"type": "number"},
        "started_at": NUM_OR_NULL,
        "finished_at": NUM_OR_NULL,
        "exit_code": {"type": ["integer", "null"]},
        "tracking": {
            "type": ["object", "null"],
            "description": "The job's run (submitted with an experiment): "
            "{experiment, experiment_id, run_id}.",
        },
        "queue_position": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "A queued job's place in the order the next scheduling cycle "
            "considers the queue (1: first), counted over every project; null for jobs not "
            "queued (placed, finished, held as unschedulable, in a preemption grace).",
        },
    },
    "required": ["id", "name", "project", "user", "state", "reason", "tasks", "attempt"],
}
JOB_LIST = {
    "type": "object",
    "properties": {
        "jobs": {"type": "array", "items": JOB},
        "next_cursor": {"type": ["string", "null"]},
    },
    "required": ["jobs", "next_cursor"],
}
EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "number"},
        "state": {"type": "string"},
        "message": {"type": "string"},
    },
}
LOG_RECORD = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer"},
        "attempt": {"type": "integer"},
        "rank": {"type": "integer"},
        "stream": {"type": "string"},
        "data": {"type": "string"},
        "at": {"type": "number"},
    },
}
CHECKPOINT = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "job_id": {"type": "integer"},
        "attempt": {"type": "integer"},
        "step": {"type": "integer"},
        "uri": {"type": "string"},
        "size_bytes": {"type": "integer"},
        "kind": {"type": "string"},
        "parent": {"type": ["integer", "null"]},
        "complete": {"type": "boolean"},
        "at": {"type": "number"},
    },
}
LEASE = {
    "type": "object",
    "description": "The node's lease, renewed by this answer: an agent that cannot renew it "
    "for `seconds` stops its tasks (SIGTERM, SIGKILL `grace` seconds later); the server "
    "requeues them `seconds + grace` after the last renewal.",
    "properties": {"seconds": {"type": "number"}, "grace": {"type": "number"}},
    "required": ["seconds", "grace"],
}
NODE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "state": {"type": "string", "enum": ["up", "down", "cordoned", "draining"]},
        "cpu_milli": {"type": "integer"},
        "memory_mib": {"type": "integer"},
        "gpus": {"type": "array", "items": {"type": "object"}},
        "labels": {"type": "object"},
        "rack": {"type": "integer"},
        "spine": {"type": "integer"},
        "hostname": {"type": "string"},
        "address": {"type": "string"},
        "heartbeat_at": {"type": "number"},
        "allocated": RESOURCE_VEC,
        "jobs": {"type": "array", "items": {"type": "integer"}},
        "lease": LEASE,
        "isolation": {"anyOf": [NODE_ISOLATION, {"type": "null"}]},
    },
    "required": ["name", "state"],
}
QUOTA = {
    "type": "object",
    "properties": {
        "project": {"type": "string"},
        "nominal": RESOURCE_VEC,
        "borrowing_limit": RESOURCE_VEC,
        "lending_limit": {"anyOf": [RESOURCE_VEC, {"type": "null"}]},
        "pool": {"type": "string"},
        "overcommit": {"type": "number"},
        "usage": RESOURCE_VEC,
    },
}
POOL = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "borrowing_limit": {"anyOf": [RESOURCE_VEC, {"type": "null"}]},
        "description": {"type": "string"},
    },
}
AUDIT = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "number"},
        "user": {"type": "string"},
        "project": {"type": "string"},
        "action": {"type": "string"},
        "target": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "object"},
    },
}
ASSIGNMENT = {
    "type": "object",
    "properties": {
        "job_id": {"type": "integer"},
        "attempt": {"type": "integer"},
        "rank": {"type": "integer"},
        "world_size": {"type": "integer"},
        "local_rank": {"type": "integer"},
        "local_world_size": {"type": "integer"},
        "master_addr": {"type": "string"},
        "master_port": {"type": "integer"},
        "command": {},
        "env": {"type": "object"},
        "workdir": {"type": ["string", "null"]},
        "gpus": {"type": "array", "items": {"type": "integer"}},
        "hosts": {"type": "array", "items": {"type": "object"}},
        "resume_from": {"type": ["string", "null"]},
        "token": {"type": "string"},
        "max_runtime": {"type": "integer"},
    },
}
TASK_REF = {
    "type": "object",
    "properties": {"job_id": {"type": "integer"}, "attempt": {"type": "integer"}},
}
ASSIGNMENTS = {
    "type": "object",
    "properties": {
        "assignments": {"type": "array", "items": ASSIGNMENT},
        "cancel": {"type": "array", "items": TASK_REF},
    },
    "required": ["assignments", "cancel"],
}
HEARTBEAT_ANSWER = {
    "type": "object",
    "properties": {"cancel": {"type": "array", "items": TASK_REF}, "lease": LEASE},
    "required": ["cancel"],
}
CLUSTER = {"type": "object"}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "number": (int, float),
    "integer": (int,),
}


class LongInt(str):
    """An integer literal too long to convert (the parser's stand-in, reported by its field)."""


@functools.lru_cache(maxsize=256)
def compiled(pattern: str) -> re.Pattern[str]:
    r"""Return a schema ``pattern`` compiled with the meaning JSON Schema gives it.

    JSON Schema patterns are ECMA-262 regular expressions: ``$`` matches only at the very
    end and ``\d``, ``\w`` are ASCII. Python's ``$`` also matches before a final newline
    (so ``"name\n"`` would pass ``^...$``) and its classes are Unicode, so ``$`` outside a
    character class becomes ``\Z`` and the pattern is compiled with ``re.ASCII``.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            # A "]" right after "[" or "[^" is a literal member, not the end of the class.
            start = i + 2 if pattern[i + 1 : i + 2] == "^" else i + 1
            if pattern[start : start + 1] == "]":
                out.append(pattern[i : start + 1])
                i = start + 1
                continue
        elif ch == "$":
            ch = "\\Z"
        out.append(ch)
        i += 1
    return re.compile("".join(out), re.ASCII)


def pattern_matches(pattern: str, text: str) -> bool:
    """Whether ``text`` matches the schema ``pattern`` (anchored patterns match it whole)."""
    return compiled(pattern).search(text) is not None


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def _shown(key: str) -> str:
    """Return an object key as a field path shows it: escaped if it is not storable text."""
    if _text_problem(key) is None:
        return key
    return key.encode("unicode_escape").decode("ascii")


def _text_problem(text: str) -> str | None:
    """Return why ``text`` cannot be stored (a lone surrogate, a NUL), or None."""
    if text.isascii():
        return "must not contain NUL characters" if "\x00" in text else None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return f"holds a lone surrogate (\\u{code:04x}) at character {exc.start}"
    return "must not contain NUL characters" if "\x00" in text else None


def check_values(value: Any, path: str = "") -> None:
    """Check every key and value of a parsed body, wherever it is, schema or not.

    The stores keep text as UTF-8 without NUL and numbers as finite doubles or 64-bit
    integers; the scheduler and the agents read the same values. So text with a lone
    surrogate or a NUL, ``NaN`` and ``Infinity``, and integer literals too long to convert
    are refused here, before any field is read.

    Raises
    ------
    ApiError
        400 naming the field by its dotted path (``env.HOME``, ``command[1]``).
    """
    field = path or None
    where = path or "body"
    if isinstance(value, LongInt):
        raise bad_request(f"{where} is out of range (an integer of {len(value)} characters)", field)
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem is not None:
            raise bad_request(f"{where} {problem}", field)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad_request(f"{where} must be a finite number (got {value})", field)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_values(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            sub = _join(path, _shown(key))
            problem = _text_problem(key)
            if problem is not None:
                raise bad_request(f"the name of {sub} {problem}", sub)
            check_values(item, sub)


def validate(value: Any, schema: Schema, path: str = "") -> None:
    """Check ``value`` against ``schema``.

    Raises
    ------
    ApiError
        400 naming the offending field by its dotted path (``tasks.resources.num_gpu``).
    """
    field = path or None
    where = path or "body"
    if "anyOf" in schema:
        errors: list[tuple[Schema, ApiError]] = []
        for option in schema["anyOf"]:
            try:
                validate(value, option, path)
                return
            except ApiError as exc:
                errors.append((option, exc))
        # Report the option meant for this kind of value: for ``command: [5]`` that is
        # "command[0] must be string", not the string option's "command must be string".
        meant = [err for option, err in errors if _declares(option, value)]
        raise (meant or [errors[0][1]])[0]
    if "const" in schema and value != schema["const"]:
        raise bad_request(f"{where} must be {schema['const']!r}", field)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_type_ok(value, t) for t in names):
            raise bad_request(f"{where} must be {' or '.join(names)}", field)
    if "enum" in schema and value not in schema["enum"]:
        raise bad_request(f"{where} must be one of {', '.join(map(str, schema['enum']))}", field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise bad_request(f"{where} must be at least {schema['minimum']}", field)
        if "maximum" in schema and value > schema["maximum"]:
            raise bad_request(f"{where} must be at most {schema['maximum']}", field)
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise bad_request(f"{where} must not be empty", field)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise bad_request(f"{where} is longer than {schema['maxLength']} characters", field)
        if "pattern" in schema and not pattern_matches(schema["pattern"], value):
            raise bad_request(f"{where} has an invalid format ({schema['pattern']})", field)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise bad_request(f"{where} needs at least {schema['minItems']} items", field)
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise bad_request(f"{where} has more than {schema['maxItems']} items", field)
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        _validate_object(value, schema, path)


def _declares(option: Schema, value: Any) -> bool:
    types = option.get("type")
    if types is None:
        return False
    return any(_type_ok(value, t) for t in ([types] if isinstance(types, str) else types))


def _validate_object(value: dict[str, Any], schema: Schema, path: str) -> None:
    where = path or "body"
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise bad_request(f"{where} has more than {schema['maxProperties']} entries", path or None)
    for name in schema.get("required", ()):
        if name not in value:
            raise bad_request(f"missing required field {name!r}", _join(path, name))
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    names = schema.get("propertyNames")
    for key, item in value.items():
        sub = _join(path, key)
        if names is not None and not pattern_matches(names["pattern"], key):
            raise bad_request(f"invalid name {key!r} in {where}", sub)
        if key in props:
            validate(item, props[key], sub)
        elif extra is False:
            raise bad_request(f"unknown field {key!r}", sub)
        elif isinstance(extra, dict):
            validate(item, extra, sub)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
