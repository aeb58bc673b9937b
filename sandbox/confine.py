"""Isolation layers the worker applies to ITSELF, after its own imports and
before the first line of model code: rlimits, no-new-privs, Landlock, seccomp.

Each layer reports whether it took effect; the host decides whether a missing
layer is fatal (`require_isolation`). Order matters: Landlock's syscalls must
run before seccomp is loaded, and both need PR_SET_NO_NEW_PRIVS first.
"""
from __future__ import annotations

import ctypes
import errno
import os
import resource
from dataclasses import dataclass, field
from typing import Any

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


def apply_landlock(read_paths: list[str], write_paths: list[str]) -> bool:
    """Reads only under `read_paths`, writes only under `write_paths`, no TCP,
    no signals or abstract sockets leaving the sandbox (as far as the ABI allows)."""
    abi = landlock_abi()
    if abi < 1:
        return False
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
        return _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0) == 0
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


# -- seccomp -----------------------------------------------------------------

CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412
# Denied outright: new processes, programs, network, debugging other
# processes, kernel-wide state, and escape hatches from the namespaces.
DENIED_SYSCALLS = (
    "fork", "vfork", "execve", "execveat",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "tkill", "mount", "umount2", "unshare", "setns", "chroot",
    "pivot_root", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "personality", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "userfaultfd", "open_by_handle_at", "name_to_handle_at", "kexec_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "acct", "quotactl", "syslog", "iopl", "ioperm", "sethostname", "setdomainname",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "setrlimit", "mknod",
    "mknodat", "fanotify_init", "vhangup", "lookup_dcookie", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # real-time scheduling of a busy loop would starve the host's own threads
    "sched_setscheduler", "sched_setattr", "sched_setparam",
)


@dataclass
class SeccompPlan:
    """Rules that depend on the worker's own pid (signals only to itself)."""
    pid: int
    denied: tuple[str, ...] = DENIED_SYSCALLS
    notes: list[str] = field(default_factory=list)


def load_seccomp() -> Any:
    """pyseccomp, or None. Import it before Landlock: afterwards its own file
    (and find_library's helper program) are out of reach."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):  # RuntimeError: libseccomp not found
        return None
    return pyseccomp


def apply_seccomp(sc: Any, plan: SeccompPlan) -> bool:
    if sc is None:
        return False
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    try:
        for name in plan.denied:
            _add(sc, f, deny, name, plan.notes)
        # Threads stay allowed: only clone() without CLONE_THREAD is a new process.
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        # glibc tries clone3 first and falls back to clone on ENOSYS; clone3's flags
        # live in memory seccomp cannot inspect, so send everyone down the clone path.
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
            f.add_rule(deny, name, sc.Arg(0, sc.NE, plan.pid))
        f.add_rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))  # getrlimit passes NULL
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.EQ, TIOCSTI))
        f.load()
    except OSError as exc:
        plan.notes.append(f"seccomp load failed: {exc}")
        return False
    return True


def _add(sc: Any, f: Any, action: int, name: str, notes: list[str]) -> None:
    try:
        f.add_rule(action, name)
    except (OSError, ValueError) as exc:  # a syscall this arch does not have
        notes.append(f"{name}: {exc}")
