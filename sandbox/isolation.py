"""Host side of isolation: how the worker is launched (bubblewrap or not), the
scrubbed environment it gets, and which paths Landlock lets it read/write.

The worker then confines itself further (sandbox.confine). Everything here is
computed from this interpreter's own layout, so the sandbox works from a venv,
a pyenv build or a system Python alike.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

BWRAP_ENV_SWITCH = "SANDBOX_BWRAP"        # "0" disables bubblewrap (bench, debugging)
INSIDE_LIB = "/opt/sandbox/lib"           # where our code appears inside bwrap
INSIDE_SCRATCH = "/scratch"
PRIVATE_TMP_BYTES = 64 * 1024 * 1024     # /tmp inside bwrap: tmpfs, counted in host RAM
SANDBOX_UID = 65534                       # "nobody" inside the user namespace
TOP_LEVEL_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
READ_ONLY_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
SECRET_NAME = re.compile(r"^AWS_|_API_KEY$|_TOKEN$|_SECRET|PASSWORD", re.IGNORECASE)


@dataclass
class LaunchPlan:
    """Everything needed to start one worker process."""
    argv: list[str]                        # up to (not including) the `-c` bootstrap
    env: dict[str, str]
    cwd: str
    lib_paths: list[str]                   # sys.path entries for our own imports (then dropped)
    import_paths: list[str] = field(default_factory=list)  # read-only dirs model code imports from
    read_paths: list[str] = field(default_factory=list)
    write_paths: list[str] = field(default_factory=list)
    bwrap: bool = False
    wrapper: list[str] = field(default_factory=list)  # bwrap and its options, no command


def python_executable() -> str:
    return os.path.realpath(sys.executable)


def python_prefixes() -> list[str]:
    return sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)})


def package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def scrubbed_env(scratch: str) -> dict[str, str]:
    """The worker's whole environment: nothing inherited, so no AWS_*, no
    *_API_KEY, no HOME with dotfiles."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": scratch, "TMPDIR": scratch, "PYTHONDONTWRITEBYTECODE": "1"}


def redact(text: str) -> str:
    """Remove the host's credential values from text bound for the sandbox
    (host exception messages), in case a host function echoed one."""
    for name, value in os.environ.items():
        if len(value) >= 6 and SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "[redacted]")
    return text


@functools.cache
def bwrap_status() -> tuple[bool, str]:
    """(usable, why not): bwrap must exist AND be allowed to create namespaces here."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed"
    probe = [exe, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid",
             str(SANDBOX_UID), "--cap-drop", "ALL", "--die-with-parent", "--ro-bind", "/", "/",
             "--proc", "/proc", python_executable(), "-I", "-S", "-c", "pass"]
    try:  # generous: on a loaded machine a slow probe must not mean "no bwrap"
        done = subprocess.run(probe, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap could not start: {exc}"
    if done.returncode != 0:
        return False, f"bwrap cannot create namespaces here: {done.stderr.decode()[:200].strip()}"
    return True, ""


def wants_bwrap(use_bwrap: bool | None) -> bool:
    if use_bwrap is not None:
        return use_bwrap
    return os.environ.get(BWRAP_ENV_SWITCH, "1") != "0"


def interpreter_args() -> list[str]:
    # -I: ignore PYTHON* env and user site; -S: no site-packages; -B: no .pyc writes.
    return [python_executable(), "-I", "-S", "-B"]


def _system_read_paths() -> list[str]:
    dirs = ["/usr", *(p for p in TOP_LEVEL_LINKS if os.path.exists(p)), *python_prefixes()]
    files = [p for p in (*READ_ONLY_FILES, *DEVICES) if os.path.exists(p)]
    return dirs + files


def direct_plan(scratch: str, import_paths: list[str]) -> LaunchPlan:
    """No bwrap: the worker sees the host's filesystem, narrowed by Landlock."""
    return LaunchPlan(argv=interpreter_args(), env=scrubbed_env(scratch), cwd=scratch,
                      lib_paths=[os.path.dirname(package_dir())], import_paths=import_paths,
                      read_paths=_system_read_paths() + import_paths, write_paths=[scratch])


def bwrap_plan(scratch: str | None, import_paths: list[str], scratch_mb: int = 0) -> LaunchPlan:
    """A fresh root built from an allow-list: system dirs and this Python
    read-only, our package at INSIDE_LIB; writable: scratch and a small private /tmp.
    `scratch` None: scratch is a private tmpfs of `scratch_mb` (a total size
    the kernel enforces, charged to the sandbox's memory cgroup, gone with it)."""
    args = [shutil.which("bwrap") or "bwrap",
            "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr"]
    for path in TOP_LEVEL_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for prefix in python_prefixes():
        if not prefix.startswith("/usr/"):
            args += ["--ro-bind", prefix, prefix]
    for path in READ_ONLY_FILES:
        args += ["--ro-bind-try", path, path]
    # A private, size-capped /tmp first, so import paths under the host's /tmp
    # can still be bound on top of it.
    args += ["--size", str(PRIVATE_TMP_BYTES), "--tmpfs", "/tmp"]
    args += ["--ro-bind", package_dir(), f"{INSIDE_LIB}/sandbox"]
    for path in import_paths:
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if scratch is None:
        args += ["--size", str(scratch_mb * 1024 * 1024), "--tmpfs", INSIDE_SCRATCH]
    else:
        args += ["--bind", scratch, INSIDE_SCRATCH]
    args += ["--chdir", INSIDE_SCRATCH, "--clearenv"]
    env = scrubbed_env(INSIDE_SCRATCH)
    for name, value in env.items():
        args += ["--setenv", name, value]
    return LaunchPlan(argv=args + interpreter_args(), env=env, cwd=scratch or "/",
                      lib_paths=[INSIDE_LIB], import_paths=import_paths,
                      read_paths=_system_read_paths() + import_paths,
                      write_paths=[INSIDE_SCRATCH, "/tmp"], bwrap=True, wrapper=args)
