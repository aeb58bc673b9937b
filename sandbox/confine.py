"""Isolation layers the worker applies to ITSELF, after its own imports and
before the first line of model code: rlimits, no-new-privs, Landlock, seccomp.

Each layer reports whether it took effect; the host decides whether a missing
layer is fatal (`require_isolation`). Order matters: Landlock's syscalls must
run before seccomp is loaded, and both need PR_SET_NO_NEW_PRIVS first. Both
apply to the calling thread and the threads it starts afterwards only.
Stdlib only and no dataclasses/typing: every import here is start-up time.
"""
from __future__ import annotations

import ctypes
import os
import resource

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1

# -- rlimits -----------------------------------------------------------------

def apply_rlimits(memory_mb: int, cpu_s: int, file_mb: int, nofile: int) -> bool:
    limits = {
        resource.RLIMIT_AS: memory_mb * 1024 * 1024,
        resource.RLIMIT_CPU: cpu_s,        # lifetime CPU backstop; wall time is the host's job
        resource.RLIMIT_FSIZE: file_mb * 1024 * 1024,
        resource.RLIMIT_NOFILE: nofile,
        resource.RLIMIT_CORE: 0,
    }
    try:
        for which, value in limits.items():
            resource.setrlimit(which, (value, value))
    except (OSError, ValueError):
        return False
    return True


def die_with_parent(signal_number: int) -> None:
    """Without bwrap nothing else kills us if the host dies; ask the kernel to."""
    _libc.prctl(PR_SET_PDEATHSIG, signal_number, 0, 0, 0)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


SYS_CAPSET, LINUX_CAPABILITY_VERSION_3, PR_CAPBSET_DROP, LAST_CAP = 126, 0x20080522, 24, 63


def drop_capabilities() -> bool:
    """Without bwrap a worker started by root would keep root's capabilities;
    Landlock and seccomp hold anyway, but nothing should rest on them alone."""
    for cap in range(LAST_CAP + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last cap
    header, data = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    return _libc.syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)) == 0


def set_no_new_privs() -> bool:
    return _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0


# -- Landlock (raw syscalls: no library exists on every machine) ---------------

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
# Filesystem rights by the ABI version that introduced them.
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
FILE_ONLY_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_ALL = 0b11            # bind + connect TCP (ABI 4)
SCOPE_ALL = 0b11          # abstract unix sockets + signals to outside the domain (ABI 6)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(abi, 0)


def _fs_rights(abi: int) -> int:
    return max(rights for version, rights in FS_RIGHTS_BY_ABI.items() if version <= abi)


def apply_landlock(read_paths: list[str], write_paths: list[str],
                   max_abi: int | None = None) -> tuple[bool, bool]:
    """Reads only under `read_paths`, writes only under `write_paths`, no TCP,
    no signals or abstract sockets leaving the sandbox (as far as the ABI allows).
    Returns (filesystem rules applied, signal/abstract-socket scoping applied):
    scoping needs ABI 6 (Linux 6.12), and is never claimed below it."""
    abi = landlock_abi() if max_abi is None else min(landlock_abi(), max_abi)
    if abi < 1:
        return False, False
    fs_all = _fs_rights(abi)
    attr = _RulesetAttr(fs_all, NET_ALL if abi >= 4 else 0, SCOPE_ALL if abi >= 6 else 0)
    size = ctypes.sizeof(attr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset_fd = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset_fd < 0:
        return False
    try:
        read_rights = FS_READ_FILE | FS_READ_DIR | FS_EXECUTE
        for paths, rights in ((read_paths, read_rights), (write_paths, fs_all)):
            for path in paths:
                _add_path_rule(ruleset_fd, path, rights)
        applied = _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0) == 0
        return applied, applied and abi >= 6
    finally:
        os.close(ruleset_fd)


def _add_path_rule(ruleset_fd: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # an absent optional path (e.g. /lib32) is simply not allowed
    try:
        if not os.path.isdir(path):
            rights &= FILE_ONLY_RIGHTS  # the kernel rejects directory rights on files
        rule = _PathBeneathAttr(rights, fd)
        _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH,
                      ctypes.byref(rule), 0)
    finally:
        os.close(fd)


# -- seccomp (the program is compiled by the host: sandbox.seccomp_policy) ----

PR_SET_SECCOMP, SECCOMP_MODE_FILTER, BPF_INSTRUCTION_BYTES = 22, 2, 8


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(program: bytes | None) -> bool:
    """Load the BPF program for this thread and every thread it starts later
    (so the watchdog is started after this)."""
    if not program or len(program) % BPF_INSTRUCTION_BYTES:
        return False
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // BPF_INSTRUCTION_BYTES, ctypes.addressof(code))
    return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
