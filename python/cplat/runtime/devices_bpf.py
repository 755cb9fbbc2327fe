"""Which devices a task may open, on cgroup v2: an eBPF device program on its cgroup.

cgroup v2 has no devices controller: the kernel asks the ``BPF_PROG_TYPE_CGROUP_DEVICE``
programs attached to a process's cgroup (and, with ``BPF_F_ALLOW_MULTI``, to its
ancestors) whether an open or mknod of a device node may proceed; any program answering 0
makes it fail with ``EPERM``. The program needs no controller, so it works on a unified
hierarchy with none enabled (a hybrid node's ``/sys/fs/cgroup/unified``) as well.

This module turns the allow-list that :func:`cplat.runtime.isolation.device_rules` writes
for cgroup v1 (``c 195:3 rwm``...) into such a program, loads it and attaches it with the
raw ``bpf(2)`` system call through ctypes, as the OCI runtimes do:

* The program reads ``struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }``
  (``access_type`` is ``access << 16 | type``) into registers, then checks the rules in
  order; the first rule that matches decides (1: allow, 0: deny), and a device no rule
  matches is denied. A rule matches when its type (``c``, ``b`` or ``a`` for both), major
  and minor (``*`` for any) agree and the access asked for (``r``, ``w``, ``m``) is a subset
  of the rule's.
* :func:`attach` loads it (``BPF_PROG_LOAD``, the verifier's log in the error when it is
  refused), attaches it to the cgroup directory (``BPF_PROG_ATTACH``, ``BPF_CGROUP_DEVICE``,
  ``BPF_F_ALLOW_MULTI`` so that device programs of the agent's own cgroup still apply) and
  closes its descriptor: the attachment holds the program until the cgroup is removed.
* :func:`probe` tells at agent start whether this works here at all (root or
  ``CAP_BPF``/``CAP_SYS_ADMIN``, a kernel with ``CONFIG_CGROUP_BPF``, no ancestor program
  that forbids more).

Only little- and big-endian Linux on x86-64 and aarch64 are known (the ``bpf`` system call
number differs per architecture); elsewhere :func:`attach` fails with ``ENOSYS``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import random
import resource
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "ACC_MKNOD",
    "ACC_READ",
    "ACC_WRITE",
    "DEV_BLOCK",
    "DEV_CHAR",
    "BpfError",
    "DeviceRule",
    "Insn",
    "assemble",
    "attach",
    "attached_programs",
    "encode",
    "load",
    "load_program",
    "parse_rule",
    "probe",
]

# struct bpf_cgroup_dev_ctx's encodings (include/uapi/linux/bpf.h).
DEV_BLOCK = 1
DEV_CHAR = 2
ACC_MKNOD = 1
ACC_READ = 2
ACC_WRITE = 4
_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}

# bpf(2) commands, program and attach types, flags.
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
SYS_BPF = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}

# Instruction classes, sizes, modes, operations and sources (include/uapi/linux/bpf_common.h).
BPF_LDX = 0x01
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_W = 0x00
BPF_MEM = 0x60
BPF_K = 0x00
BPF_X = 0x08
BPF_AND = 0x50
BPF_RSH = 0x70
BPF_MOV = 0xB0
BPF_JNE = 0x50
BPF_EXIT = 0x90

R0, R1, R2, R3, R4, R5 = range(6)
#: Largest major or minor a rule may name: the instructions compare against a signed 32-bit
#: immediate (the kernel's own limits, 12-bit majors and 20-bit minors, are far below).
MAX_NUMBER = 2**31 - 1
#: Verifier log size when a load is refused (the kernel wants at least 128 bytes).
LOG_SIZE = 1 << 16


class BpfError(OSError):
    """Loading or attaching a device program failed; ``errno`` is the kernel's answer."""


# -- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRule:
    """One entry of a device allow-list, as cgroup v1's ``devices.allow`` spells it.

    Parameters
    ----------
    kind : str
        ``"c"`` (character), ``"b"`` (block) or ``"a"`` (both).
    major, minor : int, optional
        The device numbers; None matches any.
    access : str
        A non-empty subset of ``"rwm"`` (read, write, mknod).
    allow : bool
        What a match decides.
    """

    kind: str
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"
    allow: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("a", "b", "c"):
            raise ValueError(f"device rule kind must be a, b or c, not {self.kind!r}")
        for name in ("major", "minor"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= MAX_NUMBER
            ):
                raise ValueError(f"device rule {name} must be * or 0..{MAX_NUMBER}, not {value!r}")
        if (
            not self.access
            or set(self.access) - set("rwm")
            or len(set(self.access)) != len(self.access)
        ):
            raise ValueError(f"device rule access must be a subset of rwm, not {self.access!r}")

    @property
    def access_mask(self) -> int:
        """The access as ``BPF_DEVCG_ACC_*`` bits."""
        return sum(_ACCESS_BITS[c] for c in self.access)

    def matches(self, dev_type: int, major: int, minor: int, access: int) -> bool:
        """Whether this rule covers an access (the semantics the program implements).

        Parameters
        ----------
        dev_type : int
            :data:`DEV_CHAR` or :data:`DEV_BLOCK`.
        major, minor : int
            The device.
        access : int
            The ``ACC_*`` bits asked for.
        """
        return (
            (self.kind == "a" or _TYPES[self.kind] == dev_type)
            and (self.major is None or self.major == major)
            and (self.minor is None or self.minor == minor)
            and access & ~self.access_mask == 0
        )


def parse_rule(text: str, allow: bool = True) -> DeviceRule:
    """Parse a ``devices.allow`` line: ``c 1:3 rwm``, ``c 136:* rw``, ``a`` or ``a *:* rwm``.

    Raises
    ------
    ValueError
        For anything else, quoting the rule.
    """
    parts = text.split()
    if parts == ["a"]:
        return DeviceRule("a", allow=allow)
    if len(parts) != 3:
        raise ValueError(f"bad device rule {text!r}: expected TYPE MAJOR:MINOR ACCESS")
    kind, numbers, access = parts
    major, sep, minor = numbers.partition(":")
    if not sep:
        raise ValueError(f"bad device rule {text!r}: expected MAJOR:MINOR")

    def number(word: str) -> int | None:
        if word == "*":
            return None
        if not (word.isascii() and word.isdigit()):
            raise ValueError(f"bad device rule {text!r}: {word!r} is not a number or *")
        return int(word)

    try:
        return DeviceRule(kind, number(major), number(minor), access, allow)
    except ValueError as err:
        raise ValueError(f"bad device rule {text!r}: {err}") from None


def _rules(rules: Iterable[DeviceRule | str]) -> list[DeviceRule]:
    return [r if isinstance(r, DeviceRule) else parse_rule(r) for r in rules]


# -- assembly ---------------------------------------------------------------------------


class Insn(NamedTuple):
    """One eBPF instruction (``struct bpf_insn``).

    Parameters
    ----------
    code : int
        Opcode: class | operation | source (or size | mode for loads).
    dst, src : int
        Registers 0-10.
    off : int
        Signed 16-bit offset: of a memory access, or of a jump from the next instruction.
    imm : int
        Signed 32-bit immediate.
    """

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0


def _load_word(dst: int, offset: int) -> Insn:
    return Insn(BPF_LDX | BPF_MEM | BPF_W, dst, R1, offset)


def _alu32(op: int, dst: int, imm: int) -> Insn:
    return Insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm)


def _mov32_reg(dst: int, src: int) -> Insn:
    return Insn(BPF_ALU | BPF_MOV | BPF_X, dst, src)


def _jne(dst: int, imm: int) -> Insn:
    # Offset 0 for now: the rule's block fills in the distance to its end.
    return Insn(BPF_JMP | BPF_JNE | BPF_K, dst, 0, 0, imm)


def _jne_reg(dst: int, src: int) -> Insn:
    return Insn(BPF_JMP | BPF_JNE | BPF_X, dst, src)


def _is_jne(insn: Insn) -> bool:
    # The class must be checked too: BPF_JNE and BPF_AND share their operation bits.
    return insn.code & 0x07 == BPF_JMP and insn.code & 0xF0 == BPF_JNE


def _exit_with(value: int) -> list[Insn]:
    return [_alu32(BPF_MOV, R0, value), Insn(BPF_JMP | BPF_EXIT)]


#: R2 = type, R3 = access, R4 = major, R5 = minor. Registers, not the context, are what the
#: rules test: R1 (the context pointer) is reused as a scratch register by access checks.
_PROLOGUE = [
    _load_word(R2, 0),
    _alu32(BPF_AND, R2, 0xFFFF),
    _load_word(R3, 0),
    _alu32(BPF_RSH, R3, 16),
    _load_word(R4, 4),
    _load_word(R5, 8),
]


def assemble(rules: Iterable[DeviceRule | str], default_allow: bool = False) -> list[Insn]:
    """Return the program that decides device accesses by ``rules``, the first match winning.

    Parameters
    ----------
    rules : iterable of DeviceRule or str
        In order; strings are parsed by :func:`parse_rule` (as allow rules).
    default_allow : bool
        What an access no rule matches gets (the allow-lists deny it).

    Returns
    -------
    list of Insn
        Every instruction reachable, every jump forward (the verifier refuses anything else).
    """
    prog = list(_PROLOGUE)
    for rule in _rules(rules):
        block: list[Insn] = []
        if rule.kind != "a":
            block.append(_jne(R2, _TYPES[rule.kind]))
        mask = rule.access_mask
        if mask != ACC_MKNOD | ACC_READ | ACC_WRITE:
            # Allowed when the access asked for has no bit outside the rule's: (R3 & mask) == R3.
            block += [_mov32_reg(R1, R3), _alu32(BPF_AND, R1, mask), _jne_reg(R1, R3)]
        if rule.major is not None:
            block.append(_jne(R4, rule.major))
        if rule.minor is not None:
            block.append(_jne(R5, rule.minor))
        unconditional = not block
        block += _exit_with(1 if rule.allow else 0)
        # Each failed test skips to the first instruction after this rule's exit.
        prog += [
            insn._replace(off=len(block) - i - 1) if _is_jne(insn) else insn
            for i, insn in enumerate(block)
        ]
        if unconditional:
            # Nothing after a rule that matches everything can run, and the verifier
            # refuses a program with unreachable instructions.
            return prog
    return prog + _exit_with(1 if default_allow else 0)


def encode(prog: Sequence[Insn]) -> bytes:
    """Return the program as the kernel reads it: 8 bytes per instruction, native order."""
    out = bytearray()
    for insn in prog:
        # struct bpf_insn's dst_reg:4, src_reg:4 bit-fields: dst in the low nibble on
        # little-endian machines, in the high one on big-endian.
        regs = (
            (insn.src << 4) | insn.dst if sys.byteorder == "little" else (insn.dst << 4) | insn.src
        )
        out += struct.pack("=BBhi", insn.code, regs, insn.off, insn.imm)
    return bytes(out)


# -- the bpf(2) system call -------------------------------------------------------------


class _ProgLoadAttr(ctypes.Structure):
    # union bpf_attr, BPF_PROG_LOAD (up to expected_attach_type: kernel 4.17 and later;
    # older kernels accept it as long as the fields they do not know are zero).
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _AttachAttr(ctypes.Structure):
    # union bpf_attr, BPF_PROG_ATTACH (replace_bpf_fd: 5.6; zero means none).
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _QueryAttr(ctypes.Structure):
    # union bpf_attr, BPF_PROG_QUERY (4.15).
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
    ]


_syscall: Callable[[int, int, int, int], int] | None = None
# RLIMIT_MEMLOCK is the process's: changes to it around a load must not interleave.
_memlock = threading.Lock()


def _syscall_fn() -> Callable[[int, int, int, int], int]:
    global _syscall
    if _syscall is None:
        fn = ctypes.CDLL(None, use_errno=True).syscall
        fn.restype = ctypes.c_long
        fn.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_ulong]
        _syscall = fn
    return _syscall


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(2); return its result or raise BpfError with the errno."""
    if not sys.platform.startswith("linux"):
        raise BpfError(errno.ENOSYS, f"bpf() exists on Linux only, not {sys.platform}")
    number = SYS_BPF.get(platform.machine().lower())
    if number is None:
        raise BpfError(errno.ENOSYS, f"bpf() system call number unknown on {platform.machine()}")
    call = _syscall_fn()
    for _ in range(5):
        ret = call(number, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno()
        # The verifier answers EAGAIN when interrupted by a signal; retried as libbpf does.
        if err not in (errno.EINTR, errno.EAGAIN):
            break
    raise BpfError(err, os.strerror(err))


def _load(code: bytes, count: int, license_: bytes, log: ctypes.Array[ctypes.c_char] | None) -> int:
    attr = _ProgLoadAttr()
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license_)
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE
    attr.insn_cnt = count
    attr.insns = ctypes.addressof(insns)
    attr.license = ctypes.addressof(lic)
    attr.prog_name = b"cplat_devices"
    if log is not None:
        attr.log_level = 1
        attr.log_size = len(log)
        attr.log_buf = ctypes.addressof(log)
    return _bpf(BPF_PROG_LOAD, attr)


def load_program(rules: Iterable[DeviceRule | str], default_allow: bool = False) -> int:
    """Load the device program of ``rules`` (see :func:`assemble`); return its descriptor.

    Raises
    ------
    BpfError
        As :func:`load`.
    ValueError
        For a malformed rule.
    """
    return load(assemble(rules, default_allow))


def load(prog: Sequence[Insn]) -> int:
    """Load instructions as a device program; return its descriptor (the caller closes it).

    Raises
    ------
    BpfError
        ``EPERM`` without the privilege, ``EINVAL`` where the kernel lacks device
        programs, ``ENOSYS`` without ``bpf()``; a refusal by the verifier carries its log.
    """
    code = encode(prog)
    try:
        return _load(code, len(prog), b"Apache-2.0", None)
    except BpfError as err:
        first = err
    if first.errno == errno.EPERM and os.geteuid() == 0:
        # Kernels before 5.11 charge programs to RLIMIT_MEMLOCK (64 KiB by default, shared
        # by all of root's programs): raise it for this one call only, so that tasks, which
        # the agent forks, never inherit the raised limit for longer than the call.
        with _memlock:
            saved = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            try:
                inf = resource.RLIM_INFINITY
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (inf, inf))
            except (OSError, ValueError):
                raise first from None
            try:
                return _load(code, len(prog), b"Apache-2.0", None)
            except BpfError as err:
                first = err
            finally:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, saved)
    if first.errno in (errno.EACCES, errno.EINVAL):
        # Loaded again with a log only on failure: the log costs verifier time, and a log
        # buffer too small for a valid program's log would itself fail the load.
        log = ctypes.create_string_buffer(LOG_SIZE)
        with contextlib.suppress(BpfError):
            os.close(_load(code, len(prog), b"Apache-2.0", log))
        text = log.value.decode(errors="replace").strip()
        if text:
            raise BpfError(
                first.errno, f"the kernel refused the device program: {first.strerror}\n{text}"
            ) from None
    raise first


def attach(cgroup: Path, rules: Iterable[DeviceRule | str], default_allow: bool = False) -> None:
    """Restrict the devices the processes of a cgroup v2 directory may open or mknod.

    Attach before any process joins: a device opened earlier stays open. The program
    lives until the cgroup is removed.

    Parameters
    ----------
    cgroup : Path
        A directory of a cgroup v2 hierarchy (no controller needs to be enabled).
    rules : iterable of DeviceRule or str
        The allow-list (see :func:`assemble`).
    default_allow : bool
        What an access no rule matches gets.

    Raises
    ------
    BpfError
        When the program cannot be loaded or attached (``EPERM``: no privilege, or an
        ancestor's device program forbids others below it).
    OSError
        When the directory cannot be opened.
    """
    dir_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        prog_fd = load_program(rules, default_allow)
        try:
            attr = _AttachAttr()
            attr.target_fd = dir_fd
            attr.attach_bpf_fd = prog_fd
            attr.attach_type = BPF_CGROUP_DEVICE
            # With ALLOW_MULTI the programs of the ancestors run too, and an access must pass
            # them all: a task never gets a device its agent's own cgroup may not open.
            attr.attach_flags = BPF_F_ALLOW_MULTI
            try:
                _bpf(BPF_PROG_ATTACH, attr)
            except BpfError as err:
                raise BpfError(
                    err.errno, f"cannot attach the device program to {cgroup}: {err.strerror}"
                ) from None
        finally:
            os.close(prog_fd)
    finally:
        os.close(dir_fd)


def attached_programs(cgroup: Path) -> list[int]:
    """Return the ids of the device programs attached to a cgroup directory itself.

    Raises
    ------
    BpfError, OSError
        As :func:`attach`.
    """
    dir_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ids = (ctypes.c_uint32 * 64)()
        attr = _QueryAttr()
        attr.target_fd = dir_fd
        attr.attach_type = BPF_CGROUP_DEVICE
        attr.prog_ids = ctypes.addressof(ids)
        attr.prog_cnt = len(ids)
        _bpf(BPF_PROG_QUERY, attr)
        return list(ids[: min(attr.prog_cnt, len(ids))])
    finally:
        os.close(dir_fd)


def probe(parent: Path) -> str | None:
    """Whether device programs work below a cgroup v2 directory: None, or why not.

    Attaches an allow-all program to a throwaway child cgroup of ``parent``, then removes
    the child (which releases the program).
    """
    child = parent / f"probe~{os.getpid()}~{random.randrange(10**9)}"
    try:
        child.mkdir()
    except OSError as err:
        return f"cannot create a cgroup under {parent}: {err.strerror or err}"
    try:
        attach(child, [DeviceRule("a")])
    except BpfError as err:
        hint = {
            errno.EPERM: " (no CAP_BPF/CAP_SYS_ADMIN, or an ancestor cgroup's device program "
            "allows no other below it)",
            errno.EINVAL: " (a kernel without CONFIG_CGROUP_BPF?)",
            errno.ENOSYS: " (no bpf() system call)",
        }.get(err.errno or 0, "")
        return f"device programs cannot be attached: {err.strerror}{hint}"
    except OSError as err:
        return f"cannot open {child}: {err.strerror or err}"
    finally:
        with contextlib.suppress(OSError):
            child.rmdir()
    return None
