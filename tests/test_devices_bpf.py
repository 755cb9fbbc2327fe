"""Device programs for cgroup v2: what the assembled eBPF says, and what the kernel enforces.

The first part runs the assembled instructions in a small interpreter of the eBPF subset the
program may use (checking, as the kernel's verifier would, that every instruction is
reachable, every jump goes forward and stays inside, no register is read before it is set
and the answer is 0 or 1), against random rule lists and random devices, and compares every
answer with the allow-list semantics written out here independently.

The second part loads and attaches programs for real: to a child cgroup of the node's v2
hierarchy (which needs no controller), with a process moved in before it opens anything,
against device nodes made in a temporary directory. This process must sit in a v1 devices
cgroup that allows everything (the root one does) so that only the program decides; where
it does not, the checks that need it skip. The agent's wiring is checked the same way, with
``devices = "bpf"`` forcing the program on this v1 machine: through :class:`Isolation` and
through a real server and agent running jobs as dynamic users.

Skips only where the kernel cannot: not root, no cgroup2 mount, or bpf() refused (EPERM,
ENOSYS, a kernel without device programs).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cplat.errors import InputError
from cplat.runtime import devices_bpf as bpf
from cplat.runtime.devices_bpf import (
    ACC_MKNOD,
    ACC_READ,
    ACC_WRITE,
    DEV_BLOCK,
    DEV_CHAR,
    BpfError,
    DeviceRule,
    Insn,
    assemble,
    encode,
    parse_rule,
)
from cplat.runtime.isolation import (
    Cgroups,
    Isolation,
    IsolationError,
    IsolationSettings,
    Limits,
    _cgroup_mounts,
    _setup_devices,
    device_rules,
    load_isolation_settings,
)

PROC = Path("/proc")
PY3 = "/usr/bin/python3"
ALL = ACC_MKNOD | ACC_READ | ACC_WRITE


# --------------------------------------------------------------------------------------------
# An interpreter of the eBPF subset, with the verifier's structural checks
# --------------------------------------------------------------------------------------------

MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
CTX = "ctx"  # what R1 holds at entry


def _sext(imm: int) -> int:
    return imm & MASK64  # an s32 immediate, sign-extended to 64 bits


def check_structure(prog: Sequence[Insn]) -> None:
    """What the verifier refuses before running anything: bad jumps, unreachable code."""
    assert prog, "empty program"
    assert len(prog) <= 4096
    seen, todo = set(), [0]
    while todo:
        pc = todo.pop()
        if pc in seen:
            continue
        assert 0 <= pc < len(prog), f"control falls off the program at {pc}"
        seen.add(pc)
        insn = prog[pc]
        assert 0 <= insn.dst <= 10 and 0 <= insn.src <= 10
        assert -(2**15) <= insn.off < 2**15 and -(2**31) <= insn.imm < 2**31
        cls, op = insn.code & 0x07, insn.code & 0xF0
        if cls == 0x05 and op == 0x90:  # exit
            continue
        if cls == 0x05 and op != 0x00:  # conditional jump
            assert insn.off >= 0, f"backward jump at {pc}"
            todo += [pc + 1, pc + 1 + insn.off]
        elif cls == 0x05:  # ja
            assert insn.off >= 0
            todo.append(pc + 1 + insn.off)
        else:
            todo.append(pc + 1)
    unreachable = sorted(set(range(len(prog))) - seen)
    assert not unreachable, f"unreachable instructions {unreachable}"


def run(prog: Sequence[Insn], access_type: int, major: int, minor: int) -> int:
    """Run a device program on ``struct bpf_cgroup_dev_ctx``; return R0 at exit."""
    ctx = {0: access_type, 4: major, 8: minor}
    regs: dict[int, int | str] = {1: CTX, 10: "fp"}

    def scalar(reg: int) -> int:
        value = regs.get(reg)
        assert value is not None, f"R{reg} read before it is set"
        assert isinstance(value, int), f"R{reg} holds a pointer where a number is needed"
        return value

    pc = 0
    for _ in range(10_000):
        insn = prog[pc]
        code, dst, src, off, imm = insn
        cls, op, source = code & 0x07, code & 0xF0, code & 0x08
        pc += 1
        if code == 0x61:  # ldx w: dst = *(u32 *)(src + off)
            assert regs.get(src) == CTX, f"load through R{src}, not the context"
            assert off in ctx, f"context offset {off}"
            regs[dst] = ctx[off]
        elif cls == 0x04:  # alu32
            operand = (imm & MASK32) if source == 0 else scalar(src) & MASK32
            if op == 0xB0:
                regs[dst] = operand
            elif op == 0x50:
                regs[dst] = scalar(dst) & MASK32 & operand
            elif op == 0x70:
                assert operand < 32
                regs[dst] = (scalar(dst) & MASK32) >> operand
            else:
                raise AssertionError(f"unexpected alu32 op {op:#x}")
        elif cls == 0x05 and op == 0x90:
            result = scalar(0)
            assert result in (0, 1), "a device program answers 0 or 1"
            return result
        elif cls == 0x05 and op == 0x50:  # jne
            other = _sext(imm) if source == 0 else scalar(src)
            if scalar(dst) != other:
                pc += off
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("the program does not end")


def expected(rules: Sequence[DeviceRule], default: bool, dev: tuple[int, int, int, int]) -> int:
    """The allow-list semantics, written independently of the module's."""
    dev_type, major, minor, access = dev
    letters = {"r": ACC_READ, "w": ACC_WRITE, "m": ACC_MKNOD}
    for r in rules:
        if r.kind == "c" and dev_type != DEV_CHAR:
            continue
        if r.kind == "b" and dev_type != DEV_BLOCK:
            continue
        if r.major is not None and r.major != major:
            continue
        if r.minor is not None and r.minor != minor:
            continue
        granted = sum(letters[c] for c in r.access)
        if access & granted != access:
            continue
        return int(r.allow)
    return int(default)


def decide(prog: Sequence[Insn], dev: tuple[int, int, int, int]) -> int:
    dev_type, major, minor, access = dev
    return run(prog, (access << 16) | dev_type, major, minor)


# Few distinct numbers, so that rules and devices collide often; a large one for the range.
numbers = st.sampled_from([0, 1, 3, 5, 136, 195, 255, 4095, 2**20 - 1, 2**31 - 1])
accesses = st.sets(st.sampled_from("rwm"), min_size=1).map(lambda s: "".join(sorted(s)))
rule_st = st.builds(
    DeviceRule,
    kind=st.sampled_from("abc"),
    major=st.none() | numbers,
    minor=st.none() | numbers,
    access=accesses,
    allow=st.booleans(),
)
device_st = st.tuples(st.sampled_from([DEV_CHAR, DEV_BLOCK]), numbers, numbers, st.integers(1, ALL))


@settings(max_examples=300, deadline=None)
@given(st.lists(rule_st, max_size=12), st.booleans(), st.lists(device_st, min_size=1, max_size=20))
def test_program_decides_as_the_rules_say(
    rules: list[DeviceRule], default: bool, devices: list[tuple[int, int, int, int]]
) -> None:
    prog = assemble(rules, default_allow=default)
    check_structure(prog)
    assert len(encode(prog)) == 8 * len(prog)
    for dev in devices:
        assert decide(prog, dev) == expected(rules, default, dev), (rules, dev)
        assert any(r.matches(*dev) for r in rules) or decide(prog, dev) == default


@settings(max_examples=100, deadline=None)
@given(st.lists(rule_st, max_size=8))
def test_rules_read_back_from_their_text(rules: list[DeviceRule]) -> None:
    for r in rules:
        text = f"{r.kind} {'*' if r.major is None else r.major}:"
        text += f"{'*' if r.minor is None else r.minor} {r.access}"
        assert parse_rule(text, allow=r.allow) == r


def test_the_task_allow_list_as_a_program() -> None:
    proc_devices = "Character devices:\n  1 mem\n136 pts\n195 nvidia\n238 nvidia-uvm\n"
    rules = device_rules([3], proc_devices)
    prog = assemble(rules)
    check_structure(prog)
    rw = ACC_READ | ACC_WRITE
    allowed = [(1, 3), (1, 9), (5, 2), (136, 7), (195, 3), (195, 255), (195, 254), (238, 0)]
    for major, minor in allowed:
        assert decide(prog, (DEV_CHAR, major, minor, rw)) == 1, (major, minor)
    for major, minor in [(195, 2), (195, 0), (10, 229), (1, 1), (8, 0), (238 + 1, 0)]:
        assert decide(prog, (DEV_CHAR, major, minor, rw)) == 0, (major, minor)
    # The same numbers as a block device are another device altogether.
    assert decide(prog, (DEV_BLOCK, 1, 3, ACC_READ)) == 0
    # Without GPUs no NVIDIA device, the control device included.
    none = assemble(device_rules([], proc_devices))
    assert decide(none, (DEV_CHAR, 195, 255, rw)) == 0
    assert decide(none, (DEV_CHAR, 1, 3, rw)) == 1


def test_encoding_and_shape() -> None:
    prog = assemble(["c 1:3 rw"])
    code = encode(prog)
    # r2 = *(u32 *)(r1 + 0): opcode 0x61, dst 2 in the low nibble, src 1 in the high one.
    if sys.byteorder == "little":
        assert code[:8] == bytes([0x61, 0x12, 0, 0, 0, 0, 0, 0])
    # Prologue of 6, then type, access (3), major, minor, mov, exit; then deny and exit.
    assert len(prog) == 6 + 8 + 2
    assert [i.code for i in prog[-2:]] == [0xB4, 0x95] and prog[-2].imm == 0
    # A rule matching everything ends the program: nothing after it could run.
    assert assemble(["a", "c 1:3 rwm"]) == assemble(["a *:* rwm"])
    assert len(assemble(["a"])) == 6 + 2
    assert assemble([], default_allow=True)[-2].imm == 1


def test_bad_rules_are_named() -> None:
    for text in ("x 1:3 rwm", "c 1 rwm", "c 1:3", "c a:3 rwm", "c 1:3 rwx", "c 1:3 rr", "c 1:3 "):
        with pytest.raises(ValueError, match="bad device rule"):
            parse_rule(text)
    with pytest.raises(ValueError, match="major"):
        DeviceRule("c", -1)
    with pytest.raises(ValueError, match="minor"):
        DeviceRule("c", 1, 2**31)
    with pytest.raises(ValueError, match="access"):
        DeviceRule("b", access="")
    with pytest.raises(ValueError, match="bad device rule"):
        assemble(["c 1:3 rwm", "c 1:*:3 rwm"])


def test_settings_name_the_devices_field() -> None:
    assert IsolationSettings().devices == "auto"
    assert load_isolation_settings(None, env={"CPLAT_DEVICES": "bpf"}).devices == "bpf"
    assert load_isolation_settings(None, env={}, flags={"devices": "none"}).devices == "none"
    with pytest.raises(InputError, match="devices"):
        load_isolation_settings(None, env={}, flags={"devices": "ebpf"})


def test_bpf_insisted_on_without_a_cgroup_fails_at_start(tmp_path: Path) -> None:
    settings_ = IsolationSettings(task_user="self", cgroup="none", devices="bpf")
    with pytest.raises(IsolationError, match="devices = 'bpf' needs a cgroup"):
        Isolation(settings_, tmp_path / "agent").start("n")


def test_a_program_that_cannot_be_attached_fails_the_task_or_the_start(tmp_path: Path) -> None:
    # A directory that is no cgroup: the load (without privilege) or the attach fails.
    fake = tmp_path / "fake"
    fake.mkdir()
    cgroups = Cgroups(2, {"unified": fake}, devices=True, bpf=True)
    with pytest.raises(OSError):
        cgroups.create("7.1.0", Limits(0, 0, 10))
    agent = tmp_path / "agent"
    agent.mkdir()
    # At start: "auto" says why and restricts nothing; "bpf" refuses to start.
    auto = Cgroups(2, {"unified": agent}, devices=False)
    _setup_devices(auto, PROC, "n", "auto")
    assert not auto.devices and not auto.bpf and auto.devices_why
    assert "not restricted" in auto.devices_how
    with pytest.raises(IsolationError, match="devices = 'bpf' cannot be had"):
        _setup_devices(Cgroups(2, {"unified": agent}, devices=False), PROC, "n", "bpf")
    off = Cgroups(1, {"devices": agent}, devices=True)
    _setup_devices(off, PROC, "n", "none")
    assert not off.devices and "turned off" in off.devices_why
    v1 = Cgroups(1, {"devices": agent}, devices=False)
    _setup_devices(v1, PROC, "n", "auto")
    assert v1.devices and not v1.bpf and "v1" in v1.devices_how
    assert list(agent.iterdir()) == []  # the probes' cgroups are gone


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------


def _v2_mount() -> Path | None:
    _, mount = _cgroup_mounts(PROC)
    return mount[0] if mount is not None else None


def _kernel_why() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    mount = _v2_mount()
    if mount is None:
        return "no cgroup2 hierarchy is mounted"
    why = bpf.probe(mount)
    if why is not None and any(w in why for w in ("not permitted", "not implemented", "Invalid")):
        return why
    return None  # anything else is a failure the tests should show


KERNEL_WHY = _kernel_why()
needs_kernel = pytest.mark.skipif(KERNEL_WHY is not None, reason=f"{KERNEL_WHY}")


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh child cgroup of the v2 hierarchy, removed (its processes killed) at the end."""
    mount = _v2_mount()
    assert mount is not None
    path = mount / f"cplat-test-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while True:
            try:
                path.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture
def nodes() -> Iterator[Path]:
    """A world-traversable directory for device nodes (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cplat-dev-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: The child: opens (or mknods) each node as asked, prints {name: errno or 0}.
TRY = r"""
import json, os, sys
out = {}
for name, path, how in json.loads(sys.argv[1]):
    try:
        if how == "m":
            os.mknod(path + ".made", 0o600 | (0o020000 if name[0] == "c" else 0o060000),
                     os.makedev(*map(int, name[1:].split("_"))))
        else:
            flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[how]
            os.close(os.open(path, flags | os.O_NONBLOCK))
        out[name + "/" + how] = 0
    except OSError as err:
        out[name + "/" + how] = err.errno
print(json.dumps(out))
"""


def _make(nodes: Path, kind: str, major: int, minor: int) -> tuple[str, str]:
    name = f"{kind}{major}_{minor}"
    mode = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
    os.mknod(nodes / name, 0o666 | mode, os.makedev(major, minor))
    os.chmod(nodes / name, 0o666)
    return name, str(nodes / name)


def _attempt(tries: list[tuple[str, str, str]], cgroup: Path | None) -> dict[str, int]:
    """Run TRY in a child that joins ``cgroup`` (None: stays here) before it opens anything."""
    procs = os.open(cgroup / "cgroup.procs", os.O_WRONLY) if cgroup is not None else None

    def join() -> None:
        if procs is not None:
            os.write(procs, b"0")

    try:
        out = subprocess.run(
            [sys.executable, "-c", TRY, json.dumps(tries)],
            preexec_fn=join,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        if procs is not None:
            os.close(procs)
    result: dict[str, int] = json.loads(out.stdout)
    return result


@needs_kernel
def test_the_kernel_enforces_the_program(cgroup: Path, nodes: Path) -> None:
    # Majors 60 and 61 are reserved for local use, never a driver's: no side effect, ENXIO.
    rules = ["c 1:3 rwm", "c 1:5 r", "c 10:* rw", "b 61:* r", "c 60:1 rw", "a 60:2 w"]
    devices = [("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 10, 229), ("b", 61, 7)]
    devices += [("c", 60, 1), ("c", 60, 2), ("b", 60, 2), ("b", 60, 1), ("c", 60, 3)]
    made = [_make(nodes, *d) for d in devices]
    tries = [(name, path, how) for name, path in made for how in ("r", "w", "rw", "m")]
    # Outside the program: whatever the nodes answer (ENXIO for no driver...), never EPERM,
    # else this process's v1 devices cgroup decides too and the comparison means nothing.
    outside = _attempt(tries, None)
    if errno.EPERM in outside.values():
        pytest.skip(f"this process's own device cgroup already refuses some: {outside}")
    for path in nodes.glob("*.made"):
        path.unlink()
    bpf.attach(cgroup, rules)
    assert len(bpf.attached_programs(cgroup)) == 1
    inside = _attempt(tries, cgroup)
    parsed = [parse_rule(r) for r in rules]
    letters = {"r": ACC_READ, "w": ACC_WRITE, "rw": ACC_READ | ACC_WRITE, "m": ACC_MKNOD}
    for (kind, major, minor), (name, _) in zip(devices, made, strict=True):
        for how, access in letters.items():
            dev = (DEV_CHAR if kind == "c" else DEV_BLOCK, major, minor, access)
            key = f"{name}/{how}"
            if expected(parsed, False, dev):
                assert inside[key] == outside[key], (key, inside[key], outside[key])
            else:
                assert inside[key] == errno.EPERM, (key, inside[key])
    assert inside["c1_3/rw"] == 0 and inside["c1_5/r"] == 0
    assert inside["c1_5/w"] == inside["c1_7/r"] == errno.EPERM


@needs_kernel
def test_the_program_adds_to_an_ancestors(cgroup: Path, nodes: Path) -> None:
    # The parent allows null and zero, the child null and full: only null passes both.
    bpf.attach(cgroup, ["c 1:3 rwm", "c 1:5 rwm"])
    child = cgroup / "child"
    child.mkdir()
    try:
        bpf.attach(child, ["c 1:3 rwm", "c 1:7 rwm"])
        made = [_make(nodes, "c", 1, m) for m in (3, 5, 7)]
        out = _attempt([(n, p, "r") for n, p in made], child)
        assert out == {"c1_3/r": 0, "c1_5/r": errno.EPERM, "c1_7/r": errno.EPERM}
    finally:
        child.rmdir()


@needs_kernel
def test_the_verifier_log_comes_with_a_refusal() -> None:
    # Reads R6, which nothing set: the verifier refuses and says so.
    bad = [Insn(0xBC, 0, 6), Insn(0x95)]
    with pytest.raises(BpfError) as info:
        bpf.load(bad)
    assert info.value.errno == errno.EACCES
    assert "R6" in str(info.value), str(info.value)
    assert bpf.probe(Path("/nonexistent-cgroup")) is not None


@needs_kernel
@pytest.mark.skipif(not os.access(PY3, os.X_OK), reason=f"{PY3} is missing")
def test_isolation_attaches_the_task_program(nodes: Path) -> None:
    """devices = "bpf": each task's v2 directory has the program of its own GPUs only."""
    name = f"bpf-{secrets.token_hex(3)}"
    iso = Isolation(IsolationSettings(devices="bpf", task_root=nodes / "tasks"), nodes / "agent")
    iso.start(name)
    try:
        assert iso.cgroups is not None and iso.cgroups.bpf and iso.cgroups.devices
        assert iso.describe()["devices_restricted"] is True
        mount = _v2_mount()
        assert mount is not None and mount in iso.cgroups.bases["unified"].parents
        # Node GPU 1 is /dev/nvidia3; GPU 0 (/dev/nvidia2) belongs to someone else.
        made = [_make(nodes, "c", 195, m) for m in (2, 3, 255)]
        made += [_make(nodes, "c", 1, 3), _make(nodes, "c", 10, 229)]
        sandbox = iso.prepare("7.1.0", {"gpus": [1]}, {0: 2, 1: 3})
        try:
            assert sandbox.cgroup is not None
            unified = sandbox.cgroup.dirs["unified"]
            assert len(bpf.attached_programs(unified)) == 1
            tries = json.dumps([(n, p, "rw") for n, p in made])
            proc = subprocess.run(
                [PY3, "-c", TRY, tries],
                preexec_fn=sandbox.preexec_fn(),
                capture_output=True,
                text=True,
                timeout=30,
            )
            sandbox.spawned()
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout)
            assert out["c1_3/rw"] == 0
            assert out["c195_2/rw"] == errno.EPERM and out["c10_229/rw"] == errno.EPERM
            # Allowed through the program (then refused by the driver where there is no GPU).
            assert out["c195_3/rw"] != errno.EPERM and out["c195_255/rw"] != errno.EPERM
        finally:
            sandbox.finish()
            sandbox.release()
        assert not unified.exists()
    finally:
        iso.close()
    assert not (mount / "cplat" / name).exists()


@needs_kernel
@pytest.mark.skipif(not os.access(PY3, os.X_OK), reason=f"{PY3} is missing")
def test_jobs_of_an_agent_with_device_programs(nodes: Path) -> None:
    """A real server and agent: the node says devices are restricted, and they are."""
    pytest.importorskip("aiohttp")
    from cplat.testing.service import running_service
    from cplat_server.auth import create_token
    from cplat_server.keys import SECRET

    name = f"bpf-agent-{secrets.token_hex(3)}"
    made = dict([_make(nodes, "c", 1, 3), _make(nodes, "c", 10, 229)])
    script = f"head -c1 {made['c1_3']} >/dev/null && echo null-ok\n" + (
        f'{PY3} -c \'import os\ntry:\n    os.close(os.open("{made["c10_229"]}", os.O_RDWR))\n'
        '    print("fuse opened")\nexcept OSError as e:\n    print("fuse errno", e.errno)\''
    )

    async def main() -> None:
        async with running_service(nodes, data_dir=nodes / "data") as svc:
            settings_ = IsolationSettings(devices="bpf", task_root=nodes / "tasks")
            await svc.start_agent(name, nodes / "agent", task_user=None, isolation=settings_)
            admin = create_token(svc.app[SECRET], "root", "system", "admin", cluster_admin=True)
            _, node = await svc.call("GET", f"/v1/nodes/{name}", admin)
            assert node["isolation"]["devices_restricted"] is True, node
            tok = create_token(svc.app[SECRET], "ana", "alpha", "member")
            job = await svc.submit(
                tok,
                name="devices",
                command=script,
                tasks={"resources": {"cpu_milli": 50, "memory_mib": 64}},
                max_runtime=60,
            )
            done = await svc.wait(int(job["id"]), tok, timeout=40)
            assert done["state"] == "SUCCEEDED", done
            _, body = await svc.call("GET", f"/v1/jobs/{job['id']}/logs", tok)
            out = "".join(c["data"] for c in body["logs"])
            assert "null-ok" in out and f"fuse errno {errno.EPERM}" in out, out

    asyncio.run(main())
