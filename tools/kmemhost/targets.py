"""Targets run MicroPython snippets and report stdout, values and exceptions to the host.

A Target subclass implements only `_run(script, timeout) -> (stdout, error_text)`;
the base class adds the kmem prelude, exception parsing and eval's repr round-trip,
so every kind of target (unix port now, boards over serial later) behaves the same.
"""
import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

from . import build
from .profiles import load_profile

DEFAULT_TIMEOUT = 30  # seconds per snippet
TRACEBACK_HEADER = "Traceback (most recent call last):"


class TargetError(Exception):
    """An uncaught exception on the target. str(e) == "Type: message"."""

    def __init__(self, type, message="", traceback="", stdout="", script=""):
        self.type, self.message, self.traceback = type, message, traceback
        self.stdout, self.script = stdout, script  # for failure reports
        super().__init__(f"{type}: {message}" if message else type)


class TargetTimeout(TimeoutError):
    """The target did not finish a snippet in time.

    Deliberately not a TargetError: a hang must never satisfy pytest.raises(TargetError).
    """

    def __init__(self, target_name, timeout, stdout=""):
        self.stdout = stdout
        super().__init__(f"no answer from {target_name} within {timeout:g}s")


def parse_traceback(text):
    """Split MicroPython error output into (type, message, traceback).

    Uses the last traceback in `text`; the exception line follows the indented
    "  File ..." lines and its message may span several lines. Output without a
    traceback is read as "Type: message" if it looks like that, else ("TargetError", text).
    """
    tb = text.replace("\r\n", "\n").strip("\n")
    start = tb.rfind(TRACEBACK_HEADER)
    if start >= 0:
        tb = tb[start:]
        lines = tb.split("\n")[1:]
        while lines and lines[0].startswith(" "):
            lines.pop(0)
        exc = "\n".join(lines)
    elif re.match(r"[A-Za-z_][\w.]*(:|$)", tb):
        exc = tb
    else:
        return "TargetError", tb, tb
    type_, sep, message = exc.partition(": ")
    if not sep:  # "KeyboardInterrupt" or "KeyboardInterrupt:" (empty message)
        type_, message = exc.rstrip(":"), ""
    return type_.strip(), message, tb


class Target:
    """Base class: exec/eval on top of `_run`. `prelude` is True (kmem from the
    profile), False (bare MicroPython) or a custom source string.
    Creating a target must stay cheap and side-effect free (conftest makes one just
    to validate --target): connect or build on the first `_run`."""

    kind = "target"

    def __init__(self, profile, prelude=True, timeout=DEFAULT_TIMEOUT):
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.timeout = timeout
        if prelude is True:
            prelude = f"import kmem\nfrom kmem import *\ninit({self.profile['arena_size']})\n"
        self.prelude = prelude or ""

    @property
    def name(self):
        return self.kind if self.profile["name"] == self.kind else f"{self.kind}:{self.profile['name']}"

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    def _run(self, script, timeout):
        """Run `script`; return (stdout, error_text) with error_text "" on success.
        Raise TargetTimeout if it does not finish within `timeout` seconds."""
        raise NotImplementedError

    def exec(self, code, timeout=None):
        """Run `code` after the prelude; return its stdout or raise TargetError."""
        script = self.prelude + textwrap.dedent(code)
        out, err = self._run(script, timeout or self.timeout)
        out = out.replace("\r\n", "\n")
        if err:
            raise TargetError(*parse_traceback(err), stdout=out, script=script)
        return out

    def eval(self, expr, setup="", timeout=None):
        """Run `setup`, evaluate `expr` on the target and return its value
        (anything whose repr is a Python literal: numbers, str, bytes, tuples, lists, dicts, ...)."""
        marker = f"--kmem-eval-{uuid.uuid4().hex}--"
        # Parentheses on their own lines allow multi-line exprs and trailing comments.
        code = (textwrap.dedent(setup) + f"\n__kmem_value = (\n{textwrap.dedent(expr).strip()}\n)\n"
                f"print({marker!r})\nprint(repr(__kmem_value))\n")
        out = self.exec(code, timeout)
        head, found, text = out.rpartition(marker + "\n")
        if not found:
            raise TargetError("EvalError", f"no result marker in output: {out!r}", stdout=out)
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise TargetError("EvalError", f"repr is not a Python literal: {text.strip()!r}",
                              stdout=head) from None


def find_micropython():
    """The unix-port binary: $MICROPYTHON, the one next to this Python (venv), or PATH."""
    candidates = [os.environ.get("MICROPYTHON"), Path(sys.executable).with_name("micropython"),
                  shutil.which("micropython")]
    for c in candidates:
        if c and Path(c).is_file():
            return str(c)
    raise FileNotFoundError("micropython (unix port) not found; run `make venv` or set MICROPYTHON")


class UnixTarget(Target):
    """MicroPython unix port emulating a board: a fresh process per snippet with the
    profile's heap size, importing kmem from .mpy files (as a board would)."""

    kind = "unix"

    def __init__(self, profile="unix", micropython=None, mpy_dir=None, **kwargs):
        super().__init__(profile, **kwargs)
        self.micropython, self.mpy_dir = micropython, mpy_dir

    def _run(self, script, timeout):
        self.micropython = self.micropython or find_micropython()
        self.mpy_dir = str(self.mpy_dir or build.build_kmem(build.host_arch()))
        with tempfile.TemporaryDirectory(prefix="kmem-snippet-") as tmp:
            Path(tmp, "snippet.py").write_text(script)
            env = dict(os.environ, MICROPYPATH=self.mpy_dir)
            # Own session so a timeout kills the whole process group, wrappers included.
            proc = subprocess.Popen(
                [self.micropython, "-X", f"heapsize={self.profile['heap_size']}", "snippet.py"],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # finished just as the timeout hit
                    pass
                out, _ = proc.communicate()
                raise TargetTimeout(self.name, timeout, out) from None
        if proc.returncode == 0:
            return out, ""
        if TRACEBACK_HEADER in err:
            return out, err
        if TRACEBACK_HEADER in out:  # this port prints uncaught exceptions to stdout
            at = out.rfind(TRACEBACK_HEADER)
            return out[:at], out[at:] + err
        if proc.returncode < 0:
            return out, f"Crash: killed by signal {-proc.returncode}\n{err}"
        return out, f"SystemExit: exit status {proc.returncode}\n{err}"


def _unix(arg, **kwargs):
    return UnixTarget(arg or "unix", **kwargs)


def _not_yet(arg, **kwargs):
    raise NotImplementedError("this target kind is planned but not implemented yet")


# Target kinds by spec prefix. Hook for later kinds: "vboard[:PROFILE]" (emulated
# board), "port:/dev/ttyX" (real board via mpremote), "auto" (detect by usb_vid_pid).
KINDS = {"unix": _unix, "vboard": _not_yet, "port": _not_yet, "auto": _not_yet}


def make_target(spec="unix", **kwargs):
    """Create a Target from a spec like "unix" or "unix:rpi_pico"."""
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown target {spec!r}; expected one of: "
                         "unix[:PROFILE], vboard[:PROFILE], port:DEVICE, auto")
    try:
        return KINDS[kind](arg, **kwargs)
    except NotImplementedError as e:
        raise NotImplementedError(f"target {spec!r}: {e}") from None
