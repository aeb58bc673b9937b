"""The worker's syscall policy, compiled to a BPF program IN THE HOST.

pyseccomp (over the system libseccomp) builds the filter here, once per
worker pid, and the worker only installs the bytes with one prctl. That keeps
libseccomp, pyseccomp and ctypes.util's `ldconfig` subprocess out of every
worker start-up (tens of ms each) and out of the untrusted process.
"""
from __future__ import annotations

import errno
import functools
import tempfile

CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412
# Denied outright (EPERM, so model code gets a PermissionError and the REPL
# lives on): new processes and programs, network, debugging or signalling
# other processes, kernel-wide state, and ways out of the namespaces.
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
    # Metadata of files the sandbox can see but does not own the contents of
    # (without bwrap: the host's own files, as the same uid). Landlock has no
    # right for these, so they are refused here in every mode.
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "setxattrat", "removexattrat",
    # watching host folders shows live host file names
    "inotify_init", "inotify_init1", "inotify_add_watch",
    # System V IPC objects outlive the worker (and without bwrap are the host's)
    "shmget", "msgget", "semget",
    "memfd_secret",
)
# fcntl commands that make the kernel signal another process (F_SETOWN +
# F_SETSIG + O_ASYNC can SIGKILL the host where Landlock cannot scope signals)
# or report events on other files (leases, dnotify).
F_SETOWN, F_SETSIG, F_SETOWN_EX, F_SETLEASE, F_NOTIFY = 8, 10, 15, 1024, 1026
DENIED_FCNTL = (F_SETOWN, F_SETSIG, F_SETOWN_EX, F_SETLEASE, F_NOTIFY)
FIOSETOWN, SIOCSPGRP = 0x8901, 0x8902    # the ioctl spellings of F_SETOWN
# Syscalls newer than some libseccomp releases know by name. Numbers from 424
# on are the same on every architecture, so they can be given as numbers.
NEW_SYSCALL_NUMBERS = {"setxattrat": 463, "removexattrat": 466, "file_setattr": 469}
# Signals only to itself (the watchdog's wake-up); never to the host or others.
SELF_ONLY_SIGNALS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")


def available() -> bool:
    return _library() is not None


@functools.cache
def _library():
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):  # RuntimeError: libseccomp not found
        return None
    return pyseccomp


@functools.lru_cache(maxsize=64)
def program(pid: int, deny_memfd: bool = True) -> bytes | None:
    """The BPF program for a worker whose own pid is `pid` (None: no libseccomp).
    `deny_memfd`: refuse memfd_create (where no memory cgroup would charge it)."""
    sc = _library()
    if sc is None:
        return None
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    for name in (*DENIED_SYSCALLS, "file_setattr"):
        try:
            f.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            if name in NEW_SYSCALL_NUMBERS:  # the kernel may have it though libseccomp does not
                f.add_rule(deny, NEW_SYSCALL_NUMBERS[name])
            # else: a syscall this architecture does not have
    # Threads stay allowed: only clone() without CLONE_THREAD makes a process.
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    # glibc tries clone3 first and falls back to clone on ENOSYS; clone3's flags
    # live in memory a filter cannot read, so send everyone down the clone path.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for name in SELF_ONLY_SIGNALS:
        f.add_rule(deny, name, sc.Arg(0, sc.NE, pid))
    f.add_rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))  # getrlimit passes new_limit=NULL
    for command in (TIOCSTI, FIOSETOWN, SIOCSPGRP):  # TIOCSTI: no typing into a terminal
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.EQ, command))
    for command in DENIED_FCNTL:
        f.add_rule(deny, "fcntl", sc.Arg(1, sc.EQ, command))
    if deny_memfd:
        f.add_rule(deny, "memfd_create")
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()
