"""Targets run MicroPython snippets and report stdout, values and exceptions to the host.

A Target subclass implements only `_run(script, timeout) -> (stdout, error_text)`; the base
class adds the kmem prelude, exception parsing and eval's repr round-trip. Specs:
  unix[:PROFILE]     the unix port in a subprocess per snippet, heap sized like the board
  vboard[:PROFILE]   the virtual board (tools/vboard) over a pty, through mpremote
  qemu               the emulated Cortex-M0 board (kmemhost.qemu), its UART on a pty
  port:DEVICE        a board on a serial port, through mpremote
  auto               the first USB MicroPython board (VID:PID from boards/*.json, or
                     manufacturer "MicroPython"), in `mpremote devs` order
  id:SERIAL          the board with that USB serial number
Boards get kmem deployed (kmemhost.deploy) before their first snippet and a soft reset before
the first snippet of each test; every serial step has a deadline (TargetTimeout).
"""
import ast
import atexit
import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from . import build
from .profiles import list_profiles, load_profile

DEFAULT_TIMEOUT = 30  # seconds per snippet
TRACEBACK_HEADER = "Traceback (most recent call last):"


class TargetError(Exception):
    """An uncaught exception on the target. str(e) == "Type: message"."""

    def __init__(self, type, message="", traceback="", stdout="", script=""):
        self.type, self.message, self.traceback = type, message, traceback
        self.stdout, self.script = stdout, script  # for failure reports
        super().__init__(f"{type}: {message}" if message else type)


class TargetTimeout(TimeoutError):
    """The target did not finish in time. Not a TargetError: a hang must never satisfy
    pytest.raises(TargetError)."""

    def __init__(self, target_name, timeout, stdout=""):
        self.stdout = stdout
        super().__init__(f"no answer from {target_name} within {timeout:g}s")


def parse_traceback(text):
    """MicroPython error output -> (type, message, traceback), from its last traceback; else
    "Type: message" if it looks like that, else ("TargetError", text, text)."""
    tb = text.replace("\r\n", "\n").strip("\n")
    start = tb.rfind(TRACEBACK_HEADER)
    if start >= 0:
        tb = tb[start:]
        lines = tb.split("\n")[1:]
        while lines and lines[0].startswith(" "):  # the "  File ..." lines
            lines.pop(0)
        exc = "\n".join(lines)  # the message may span several lines
    elif re.match(r"[A-Za-z_][\w.]*(:|$)", tb):
        exc = tb
    else:
        return "TargetError", tb, tb
    type_, sep, message = exc.partition(": ")
    if not sep:  # "KeyboardInterrupt" or "KeyboardInterrupt:" (empty message)
        type_, message = exc.rstrip(":"), ""
    return type_.strip(), message, tb


def _stdout_or_raise(result, script):
    out, err = result
    out = out.replace("\r\n", "\n")
    if err:
        raise TargetError(*parse_traceback(err), stdout=out, script=script)
    return out


class Target:
    """exec/eval on top of `_run`. `prelude`: True (kmem from the profile), False (bare
    MicroPython) or source. Creating one stays cheap and side-effect free (conftest makes
    one to validate --target): connect or build on the first `_run`."""

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
        """(stdout, error_text), error_text "" on success; TargetTimeout past `timeout` s."""
        raise NotImplementedError

    def probe(self):
        """What the board can do (a BoardInfo), probed once per target name and process."""
        if self.name not in _PROBED:
            out = _stdout_or_raise(self._run(PROBE, self.timeout), PROBE)
            _PROBED[self.name] = _parse_probe(out, self.name)
        return _PROBED[self.name]

    def exec(self, code, timeout=None):
        """Run `code` after the prelude; return its stdout or raise TargetError."""
        script = self.prelude + textwrap.dedent(code)
        return _stdout_or_raise(self._run(script, timeout or self.timeout), script)

    def eval(self, expr, setup="", timeout=None):
        """Run `setup`, then return the value of `expr` (its repr must be a Python literal)."""
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
    """The unix port emulating a board: a fresh process per snippet with the profile's heap
    size, importing kmem from .mpy files (as a board would)."""

    kind = "unix"

    def __init__(self, profile="unix", micropython=None, mpy_dir=None, **kwargs):
        super().__init__(profile, **kwargs)
        self.micropython, self.mpy_dir = micropython, mpy_dir

    @property
    def kmem_path(self):
        """The directory holding kmem/ as the target sees it (here: on MICROPYPATH)."""
        self.mpy_dir = str(self.mpy_dir or build.build_kmem(build.host_arch()))
        return self.mpy_dir

    def spawn(self, script, tmp, stderr=subprocess.PIPE):
        """The unix port running `script` (written into the directory `tmp`), its output on
        pipes; in its own session, so that kill() ends it with any wrapper around it."""
        self.micropython = self.micropython or find_micropython()
        Path(tmp, "snippet.py").write_text(script)
        return subprocess.Popen(
            [self.micropython, "-X", f"heapsize={self.profile['heap_size']}", "snippet.py"],
            cwd=tmp, env=dict(os.environ, MICROPYPATH=self.kmem_path), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)

    @staticmethod
    def kill(proc):
        with contextlib.suppress(ProcessLookupError):  # it finished just then
            os.killpg(proc.pid, signal.SIGKILL)

    def _run(self, script, timeout):
        with tempfile.TemporaryDirectory(prefix="kmem-snippet-") as tmp:
            proc = self.spawn(script, tmp)
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(proc)
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


# --- what a board can do -------------------------------------------------------

# sys.implementation._mpy >> 10 -> mpy-cross -march name (MicroPython's MP_NATIVE_ARCH_*).
MPY_ARCHES = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
              "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")

# Run bare (no prelude) on a fresh board; prints one dict literal.
PROBE = """\
import sys, gc
try:
 import micropython
 exec('@micropython.viper\\ndef __kmem_viper(x: int) -> int:\\n return x + 1\\n')
 __kmem_native = __kmem_viper(1) == 2
except Exception:
 __kmem_native = False
gc.collect()
print(repr({'mpy': getattr(sys.implementation, '_mpy', 0), 'native': __kmem_native,
 'heap': gc.mem_free() + gc.mem_alloc(), 'platform': sys.platform,
 'machine': getattr(sys.implementation, '_machine', ''),
 'version': tuple(sys.implementation.version), 'path': list(sys.path)}))
"""


class BoardInfo:
    """What the probe found on a board: .mpy version/arch, native emitter, heap, sys.path."""

    def __init__(self, mpy=0, native=False, heap=0, platform="", machine="", version=(),
                 path=()):
        # sys.implementation._mpy: version (6 since 1.22), sub-version (3 for 1.29), arch.
        self.mpy_version, self.mpy_sub, self.arch_index = mpy & 0xFF, (mpy >> 8) & 3, mpy >> 10
        index = self.arch_index
        self.arch = MPY_ARCHES[index] if index < len(MPY_ARCHES) else f"arch#{index}"
        self.native, self.heap, self.platform, self.machine = native, heap, platform, machine
        self.version, self.path = tuple(version), list(path)

    @property
    def mpy(self):
        return f"{self.mpy_version}.{self.mpy_sub}" if self.mpy_version else "none"

    def __repr__(self):
        return (f"<BoardInfo {self.platform} mpy v{self.mpy} arch {self.arch} "
                f"native={self.native} heap={self.heap}>")


def unmet_requirement(info, name, native=False, heap=0):
    """Why a board (its BoardInfo) cannot run a test needing the native emitter and/or a
    heap of `heap` bytes; None when it can. (pytest markers requires_native/requires_heap.)"""
    if native and not info.native:
        return f"needs the native emitter (@micropython.viper); {name} has none"
    if heap and info.heap < heap:
        return f"needs a {heap}-byte MicroPython heap; {name} has {info.heap}"
    return None


def _parse_probe(out, name):
    try:
        return BoardInfo(**ast.literal_eval(out.strip().splitlines()[-1]))
    except (ValueError, SyntaxError, IndexError, TypeError):
        raise TargetError("ProbeError", f"unexpected probe output from {name}: {out!r}") from None


_PROBED = {}  # target name -> BoardInfo


# --- boards over a serial line (real boards and the virtual board), via mpremote ---------

BAUDRATE = 115200
POLL = 0.05         # seconds one port read may block; deadlines are checked between reads
WRITE_TIMEOUT = 5   # seconds a write may block (a hung USB device stops draining its buffer)
RECOVER_TIMEOUT = 5  # seconds for the soft reset after a timeout before reconnecting/restarting
DEPLOY_MODES = ("flash", "ram", "mount", "romfs", "frozen")

# A snippet runs in two raw-REPL execs. The first compiles it, so that while it runs only its
# bytecode takes heap, not its source (as on the unix port, which reads a file). The second
# runs it (tracebacks name "snippet.py") and ends its output with END_MARK, so that a \x04 it
# prints is output, not the raw REPL's end of output. sys.exit() and machine.soft_reset()
# print EXIT_MARK with the status first; the raw REPL then soft-resets the board, as firmware
# does, and the host reports the status as the unix port would ("SystemExit: exit status 3").
_COMPILE = """\
__kmem_c = {src!r}
try:
 __kmem_c = compile(__kmem_c, 'snippet.py', 'exec')
except NameError:
 pass
"""
END_MARK = b"\x05kmem-end\x05"
EXIT_MARK = re.compile(rb"\x05kmem-exit (.*?)\x05", re.S)
_RUN = """\
__import__('gc').collect()
try:
 exec(__kmem_c)
except SystemExit as __kmem_e:
 print(end='\\x05kmem-exit %r\\x05' % (__kmem_e.args[0] if __kmem_e.args else None,))
 raise
finally:
 print(end='\\x05kmem-end\\x05')
"""


def _exit_error(value_repr):
    """The unix port's error text for a snippet that ended with SystemExit(value)."""
    try:
        value = ast.literal_eval(value_repr)
    except (ValueError, SyntaxError):
        value = value_repr  # sys.exit(obj): its repr
    if value in (None, 0):
        return ""
    if isinstance(value, int):
        return f"SystemExit: exit status {value}"
    return f"SystemExit: exit status 1\n{value}"


class TargetUnavailable(ConnectionError):
    """The board cannot be used: port missing or busy, board gone, or given up on.
    Deliberately not a TargetError."""


SOFT_REBOOT = b"MPY: soft reboot\r\n"
# A board that soft-resets in the raw REPL prints SOFT_REBOOT, whatever boot.py prints, then
# RAW_BANNER; a snippet printing "MPY: soft reboot" alone is just output.
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"  # then the ">" prompt


class _Rebooted(Exception):
    """The board printed "MPY: soft reboot" while running a snippet."""


class _Expired(Exception):
    """The current serial step ran past its deadline (raised inside the wire)."""


class _Wire:
    """Stands in for the pyserial port under mpremote's SerialTransport so that no read or
    write blocks past the current step's deadline (time.monotonic(); None = no limit)."""

    _FORWARD = ("rts", "dtr", "baudrate")

    def __init__(self, port):
        # timeout: mpremote's mount sets it, reads use POLL; received: bytes read in this step.
        self.__dict__.update(_port=port, deadline=None, timeout=None, received=0)
        port.timeout = POLL
        port.write_timeout = WRITE_TIMEOUT

    def __getattr__(self, name):
        return getattr(self._port, name)

    def __setattr__(self, name, value):
        if name in self._FORWARD:
            setattr(self._port, name, value)
        else:
            object.__setattr__(self, name, value)

    def _call(self, method, *args):
        import serial
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _Expired()
        try:
            return method(*args)
        except serial.SerialTimeoutException:  # a write the device did not drain in time
            raise _Expired() from None
        except (TypeError, AttributeError, ValueError, OSError) as e:
            # pyserial closed under a running call (another thread, the board gone) fails
            # with whatever its fd of None gives (TypeError, or EBADF from its abort pipe;
            # is_open drops a moment later): a lost port.
            if self._port.is_open and getattr(self._port, "fd", 0) is not None:
                raise
            raise serial.SerialException(f"the port was closed ({type(e).__name__}: {e})") from None

    def read(self, n=1):
        data = b""
        while len(data) < n:
            data += self._call(self._port.read, n - len(data))
            self.received += len(data)
        return data

    def inWaiting(self):  # mpremote's name for in_waiting
        return self._call(lambda: self._port.in_waiting)

    def write(self, data):
        return self._call(self._port.write, data)


def _profiles_by_usb_id():
    ids = {}
    for name in list_profiles():
        for vid_pid in load_profile(name).get("usb_vid_pid", []):
            ids.setdefault(vid_pid.lower(), name)
    return ids


def list_ports():
    """Serial ports as mpremote lists them (`mpremote devs`)."""
    import serial.tools.list_ports
    return sorted(serial.tools.list_ports.comports())


def _usb_id(p):
    return f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None


def _describe_ports(ports):
    if not ports:
        return "no serial ports at all"
    return "; ".join(" ".join(f"{p.device} {_usb_id(p) or 'no-usb-id'} {p.manufacturer or ''} "
                              f"{p.product or ''} serial {p.serial_number or '-'}".split())
                     for p in ports)


def micropython_ports():
    """[(port info, profile name or None)] for ports that look like MicroPython boards: a USB
    VID:PID listed in boards/*.json usb_vid_pid, or manufacturer "MicroPython"."""
    ids = _profiles_by_usb_id()
    return [(p, ids.get(_usb_id(p))) for p in list_ports()
            if _usb_id(p) and (_usb_id(p) in ids or p.manufacturer == "MicroPython")]


def resolve_port(spec):
    """"auto", "id:SERIAL", "port:DEVICE" or "DEVICE" -> (device, profile name or None).
    TargetUnavailable, at once, when no such board or port is present."""
    if spec == "auto":
        found = micropython_ports()
        if not found:
            raise TargetUnavailable(
                "no MicroPython board found (looked for USB VID:PID "
                f"{', '.join(sorted(_profiles_by_usb_id()))} or manufacturer MicroPython); "
                f"ports: {_describe_ports(list_ports())}")
        return found[0][0].device, found[0][1]
    if spec.startswith("id:"):
        ports = [p for p in list_ports() if p.serial_number == spec[3:]]
        if not ports:
            raise TargetUnavailable(f"no serial port with USB serial number {spec[3:]!r}; "
                                    f"ports: {_describe_ports(list_ports())}")
        device = ports[0].device
    else:
        device = spec.removeprefix("port:")
        if not device:
            raise ValueError("port: needs a device, e.g. port:/dev/ttyACM0")
        if os.name == "posix" and "://" not in device and not os.path.exists(device):
            boards = ", ".join(p.device for p, _ in micropython_ports()) or "none"
            raise TargetUnavailable(f"port {device} not found (MicroPython boards connected: {boards})")
        ports = [p for p in list_ports() if os.path.realpath(p.device) == os.path.realpath(device)]
    return device, (_profiles_by_usb_id().get(_usb_id(ports[0])) if ports else None)


def port_problem(device):
    """Why `device` cannot be opened now (missing, busy, not permitted), or None."""
    import serial
    if os.name == "posix" and "://" not in device and not os.path.exists(device):
        return f"port {device} not found"
    try:
        s = serial.serial_for_url(device, do_not_open=True, exclusive=True)
        s.open()
        s.close()
    except (serial.SerialException, OSError, ValueError) as e:
        text = str(e)
        if "lock" in text or "busy" in text.lower() or "temporarily unavailable" in text:
            return (f"port {device} is busy: another program has it open (mpremote, a serial "
                    f"monitor, Thonny, another test run?) [{text}]")
        if "ermission denied" in text:
            return (f"no permission to open {device} (on Linux add yourself to the dialout "
                    f"group and log in again) [{text}]")
        return f"cannot open {device}: {text}"
    return None


def _text(data):
    return bytes(data).decode("utf-8", "replace")


class SerialBoard:
    """One MicroPython board on a serial port, shared by every Target naming it in this
    process: mpremote's SerialTransport in raw REPL, kmem deployed once, a soft reset before
    the first snippet of each test (begin_test). Every serial step has a deadline; a board
    that stops answering raises TargetTimeout and is interrupted (Ctrl-C). One that fails
    again after reconnecting is given up on: later snippets raise TargetUnavailable at once."""

    restart_on_timeout = False  # a real board that ignores Ctrl-C needs a hard reset

    def __init__(self, device, name, profile, deploy="flash", arch=None, timeout=DEFAULT_TIMEOUT):
        self.device, self.name, self.profile = device, name, profile
        self.deploy_mode, self.arch, self.timeout = deploy, arch, timeout
        self.transport = self.wire = None
        self.info = None        # BoardInfo, probed before deploying
        self.deployment = None  # deploy.Deployment once kmem is on the board
        self.fresh = False      # soft-reset and not used since
        self.timed_out = False  # the last step ran out of time (the board may be hung)
        self.failed = None      # why the board was given up on
        self.log = []           # deploy messages, for reports

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    def _device(self):
        return self.device

    def open(self):
        """Open the port (raw REPL is entered by the next soft reset)."""
        if self.transport:
            return self.transport
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        device = self._device()
        try:
            t = SerialTransport(device, baudrate=BAUDRATE)
        except TransportError as e:
            raise TargetUnavailable(f"{self.name}: {port_problem(device) or e}") from None
        self.wire = t.serial = _Wire(t.serial)
        self.transport = t
        return t

    def close(self):
        t, self.transport, self.fresh = self.transport, None, False
        if t is not None:
            with contextlib.suppress(Exception):  # closing a board that may be gone
                self._unmount(t)
                if self.wire:
                    self.wire.deadline = time.monotonic() + 1
                t.exit_raw_repl()
            with contextlib.suppress(Exception):
                t.close()

    @staticmethod
    def _unmount(t):
        if getattr(t, "mounted", False):  # a soft reset unmounts on the board anyway
            t.serial = t.serial.orig_serial
            t.mounted = False

    @contextlib.contextmanager
    def step(self, timeout, partial=None):
        """The serial work inside must finish within `timeout` seconds; its failures become
        TargetTimeout (with `partial` output), TargetError or TargetUnavailable."""
        import serial
        from mpremote.transport import TransportError, TransportExecError
        start = time.monotonic()
        self.wire.deadline, self.wire.received = start + timeout, 0
        try:
            yield
        except _Expired:
            self.fresh, self.timed_out = False, True
            self.wire.deadline = time.monotonic() + 1
            with contextlib.suppress(Exception):  # stop what runs (a hung board ignores it)
                self.wire.write(b"\r\x03\x03")
            raise TargetTimeout(self.name, timeout,
                                _text(partial or b"").replace("\r\n", "\n")) from None
        except TransportExecError as e:  # mpremote's own snippets (mount) raised
            raise TargetError(*parse_traceback(e.error_output)) from None
        except (TransportError, struct.error) as e:
            silent = not self.wire.received
            self.close()
            if silent:  # mpremote gave up on a silent line first (its own 10 s between bytes)
                raise TargetTimeout(self.name, round(time.monotonic() - start)) from None
            raise TargetUnavailable(f"{self.name}: not talking MicroPython's raw REPL protocol "
                                    f"({type(e).__name__}: {e})") from e
        except (serial.SerialException, OSError) as e:
            self.close()
            raise TargetUnavailable(f"{self.name}: lost the connection ({type(e).__name__}: {e})") from e
        finally:
            self.wire.deadline = None

    def soft_reset(self, timeout=None):
        timeout = timeout or self.timeout
        t = self.open()
        self._unmount(t)
        with self.step(timeout):
            t.enter_raw_repl(soft_reset=True, timeout_overall=timeout + 1)  # our deadline first
        if self.deployment is not None:
            self.deployment.after_reset(self)
        self.fresh = True

    def run(self, script, timeout=None, end=b""):
        """Run `script` in the raw REPL: (stdout, error text or ""). `end`: bytes it prints
        last (END_MARK), so stdout ends at end + \\x04, not at the first \\x04. A board that
        resets meanwhile (a crash; the vboard restarts a crashed interpreter) gives "Crash:
        ..." at once; a SystemExit after EXIT_MARK gives its exit status."""
        timeout = timeout or self.timeout
        t = self.open()
        out = bytearray()

        def read_until(ending, watch=True):
            while not out.endswith(ending):
                out.extend(t.serial.read(1))  # under `mount`, its intercepting reader
                if watch and out.endswith(RAW_BANNER + b">") and SOFT_REBOOT in out:
                    raise _Rebooted()

        try:
            with self.step(timeout, out):
                t.exec_raw_no_follow(script.encode())
                read_until(end + b"\x04")
                err = t.read_until(1, b"\x04", timeout=None)  # pyright: ignore[reportArgumentType]
                exited = EXIT_MARK.search(out) if end else None
                if exited:  # the raw REPL soft-resets the board after a SystemExit
                    self.fresh = False
                    stdout = out[:exited.start()] + out[exited.end():-len(end) - 1]
                    read_until(SOFT_REBOOT, watch=False)
                    read_until(RAW_BANNER, watch=False)  # after boot.py's output; ">" is
                    # left for mpremote, which reads the prompt before its next exec
                    return _text(stdout), _exit_error(_text(exited.group(1)))
        except _Rebooted:
            self.fresh = False
            return (_text(out[:out.rfind(SOFT_REBOOT)]),
                    f"Crash: {self.name} reset while running the snippet ({SOFT_REBOOT.decode().strip()})")
        return _text(out[:-len(end) - 1]), _text(err[:-1])

    def exec(self, code, timeout=None):
        """Run `code` as is (no prelude, no wrapper); return stdout or raise TargetError."""
        return _stdout_or_raise(self.run(code, timeout), code)

    def probe(self):
        self.info = _parse_probe(self.exec(PROBE), self.name)
        return self.info

    def prepare(self):
        """Make the board ready for a snippet: connected, kmem deployed, soft-reset if used
        since the test began. Tries once more after reconnecting (a board that rebooted or a
        virtual board that crashed); after that the board is given up on."""
        if self.failed:
            raise TargetUnavailable(f"{self.failed} (given up on for this session)")
        if self.fresh:
            return
        from . import deploy
        for attempt in (1, 2):
            try:
                if self.deployment is None or self.transport is None:
                    self.deployment = None
                    progress(f"{self.name}: starting, then deploying kmem ({self.deploy_mode})")
                    self.soft_reset()
                    self.probe()
                    self.deployment = deploy.deploy(self, mode=self.deploy_mode, arch=self.arch,
                                                    log=progress)
                    self.log = self.deployment.messages()
                # After a timeout the board may ignore Ctrl-C (the qemu port never sees it
                # while code runs): do not wait the full timeout before reconnecting.
                self.soft_reset(RECOVER_TIMEOUT if self.timed_out else None)
                self.timed_out = False
                return
            except (deploy.DeployError, TargetError) as e:
                self.failed = f"{self.name}: deploying kmem failed: {e}"
                raise TargetUnavailable(self.failed) from e
            except (TargetTimeout, TargetUnavailable) as e:
                self.close()
                if attempt == 2 or (isinstance(e, TargetTimeout) and not self.restart_on_timeout):
                    self.failed = str(e)
                    raise


_BOARDS = {}  # key -> SerialBoard shared by the targets of this process


def progress(message):
    """Told what a board is doing before its first snippet (the suite's conftest shows it)."""


def _dispose(board):
    if board is not None:
        board.close()
        if hasattr(board, "remove_flash"):
            board.remove_flash()


def begin_test():
    """A new test starts: every board gets a soft reset before its next snippet."""
    for board in _BOARDS.values():
        board.fresh = False


def close_all():
    """Close every board this process opened (virtual ones: stopped, flash deleted)."""
    while _BOARDS:
        _dispose(_BOARDS.popitem()[1])


atexit.register(close_all)


class SerialTarget(Target):
    """A board over a serial port (mpremote raw REPL): kmem deployed before the first snippet
    (as python -m kmemhost.deploy does), a soft reset before the first snippet of every test.
    `deploy`: flash (default) | ram | mount | romfs | frozen (see kmemhost.deploy)."""

    kind = "port"
    default_deploy = "flash"

    def __init__(self, device, profile=None, deploy=None, arch=None, mpy_dir=None,
                 micropython=None, **kwargs):
        deploy = deploy or self.default_deploy
        if deploy not in DEPLOY_MODES:
            raise ValueError(f"unknown deploy mode {deploy!r}; expected one of {', '.join(DEPLOY_MODES)}")
        super().__init__(profile or GENERIC_PROFILE, **kwargs)
        self.device, self.deploy, self.arch = device, deploy, arch

    @property
    def name(self):
        return f"port:{self.device}" if self.device else super().name

    @property
    def _key(self):
        """One board per device, whatever link names it; a local board: its target's name."""
        if not self.device:
            return self.name
        return "port:" + (os.path.realpath(self.device) if os.name == "posix" else self.device)

    def _new_board(self):
        return SerialBoard(self.device, self.name, self.profile, self.deploy, self.arch,
                           self.timeout)

    @property
    def board(self):
        """The SerialBoard shared by every target naming this board in this process."""
        board = _BOARDS.get(self._key)
        if board is None:
            board = _BOARDS[self._key] = self._new_board()
        if (board.deploy_mode, board.arch) != (self.deploy, self.arch):
            board.deploy_mode, board.arch, board.deployment = self.deploy, self.arch, None
        return board

    def connect(self):
        """Open the port now (clear error if missing or busy); no bytes are exchanged."""
        self.board.open()

    def close(self):
        """Close the board (a vboard is stopped and its flash deleted)."""
        _dispose(_BOARDS.pop(self._key, None))

    def probe(self):
        """The board's BoardInfo, probed on the freshly reset board before deploying."""
        self.board.prepare()
        return self.board.info

    @property
    def kmem_path(self):
        """Where kmem/ was deployed on the board: /lib, /ram or /remote."""
        self.board.prepare()
        return self.board.deployment.package_parent

    def _run(self, script, timeout):
        board = self.board
        board.prepare()
        out, err = board.run(_COMPILE.format(src=script), timeout)
        if err:
            return out, err
        more, err = board.run(_RUN, timeout, end=END_MARK)
        return out + more, err


class LocalBoard(SerialBoard):
    """A SerialBoard whose far end (a virtual or emulated board) this process starts on first
    use and stops in close(). Subclasses implement _start() -> (handle with .stop(), pty)."""

    restart_on_timeout = True  # a hung local board is restarted once
    what = "board"

    def __init__(self, name, profile, **kwargs):
        super().__init__(None, name, profile, **kwargs)
        self.process = None

    def _start(self):
        raise NotImplementedError

    def _device(self):
        if self.process is None:
            try:
                self.process, self.device = self._start()
            except Exception as e:  # noqa: BLE001 - report, do not hang
                self.process = None
                raise TargetUnavailable(f"{self.name}: the {self.what} did not start: {e}") from None
        return self.device

    def close(self):
        super().close()
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(Exception):
                process.stop()


class VirtualBoardSerial(LocalBoard):
    """The tools/vboard virtual board; its flash, in a temporary directory, is kept for the
    session (deleted by remove_flash)."""

    what = "virtual board"

    def __init__(self, profile, **kwargs):
        super().__init__(f"vboard:{profile['name']}", profile, **kwargs)
        self.flash_dir = None

    def _start(self):
        from .vboard import VirtualBoard
        if self.flash_dir is None:  # in a directory of its own, with its .lock beside it
            self.flash_dir = os.path.join(
                tempfile.mkdtemp(prefix=f"kmem-vboard-{self.profile['name']}-"), "flash")
        vboard = VirtualBoard(self.profile["name"], self.flash_dir)
        return vboard, vboard.start()

    def remove_flash(self):
        if self.flash_dir:
            shutil.rmtree(os.path.dirname(self.flash_dir), ignore_errors=True)
            self.flash_dir = None


class QemuSerial(LocalBoard):
    """The emulated Cortex-M0 board (kmemhost.qemu), one QEMU per process. With deploy romfs
    QEMU loads kmem's ROMFS image into flash (mounted at /rom); frozen runs the firmware
    that has kmem frozen in."""

    what = "emulated board (QEMU)"

    def __init__(self, profile, icount=None, **kwargs):
        super().__init__("qemu", profile, **kwargs)
        self.icount = icount

    def _start(self):
        from . import qemu
        arch = self.arch or self.profile["mpy_arch"]
        image = qemu.romfs_image(arch) if self.deploy_mode == "romfs" else None
        board = qemu.QemuBoard(frozen=self.deploy_mode == "frozen", romfs=image,
                               icount=self.icount)
        return board, board.start()


class VboardTarget(SerialTarget):
    """The virtual board (tools/vboard): the unix port behind a pty with the profile's heap,
    reached through mpremote like a real board (kmem as .mpy for the arch it reports)."""

    kind = "vboard"

    def __init__(self, profile="rpi_pico", **kwargs):
        super().__init__(None, profile, **kwargs)

    def _new_board(self):
        return VirtualBoardSerial(self.profile, deploy=self.deploy, arch=self.arch,
                                  timeout=self.timeout)

    def connect(self):
        """Nothing to check before the board starts (lazily, on the first snippet)."""


class QemuTarget(SerialTarget):
    """The emulated Cortex-M0 board (boards/qemu_microbit.json) through mpremote, like a USB
    board. deploy: romfs (default: a ROMFS image QEMU loads), mount, ram, or frozen (the
    firmware with kmem frozen in, nothing deployed). Build it first: make qemu-firmware."""

    kind = "qemu"
    default_deploy = "romfs"

    def __init__(self, profile="qemu_microbit", icount=None, **kwargs):
        self.icount = icount  # QEMU -icount shift (make bench), None: real time
        super().__init__(None, profile, **kwargs)
        if self.deploy == "flash":
            raise ValueError("--target qemu has no writable flash filesystem; use --deploy "
                             "romfs (default), mount, ram or frozen")

    @property
    def name(self):
        return "qemu"

    def _new_board(self):
        return QemuSerial(self.profile, icount=self.icount, deploy=self.deploy, arch=self.arch,
                          timeout=self.timeout)

    @property
    def board(self):
        board = _BOARDS.get(self._key)
        if board is not None and (board.deploy_mode, board.icount) != (self.deploy, self.icount):
            _dispose(_BOARDS.pop(self._key))  # other firmware or image: a new QEMU
        return super().board

    def connect(self):
        """Fail early, with what to do, when the firmware or QEMU is missing."""
        from . import qemu
        try:
            qemu.require_tools("qemu-system-arm")
            qemu.QemuBoard(frozen=self.deploy == "frozen").command()
        except qemu.QemuError as e:
            raise TargetUnavailable(f"qemu: {e}") from None


# A board that matches no profile: kmem's default arena; heap and arch come from the board.
GENERIC_PROFILE = {"name": "generic", "description": "a MicroPython board without a profile",
                   "board_id": "unknown", "mpy_arch": None, "heap_size": None,
                   "arena_size": 32768, "usb_vid_pid": [], "flash": {"method": "none"}}
SPECS = "unix[:PROFILE], vboard[:PROFILE], qemu, port:DEVICE, auto, id:SERIAL"


def make_target(spec="unix", deploy=None, arch=None, board=None, **kwargs) -> Any:
    """A Target (of the class the spec names) from a spec in SPECS, default unix. kwargs:
    prelude, timeout, mpy_dir (unix), deploy and arch (boards), board (the profile of a
    port/auto/id board whose USB id names none), icount (qemu)."""
    kind, _, arg = spec.partition(":")
    if kind == "unix":
        return UnixTarget(arg or "unix", **kwargs)
    if kind == "vboard":
        return VboardTarget(arg or "rpi_pico", deploy=deploy, arch=arch, **kwargs)
    if kind == "qemu":
        if arg:
            raise ValueError(f"target qemu takes no value (got qemu:{arg}); pick the firmware "
                             "with --deploy: romfs, mount, ram or frozen")
        return QemuTarget(deploy=deploy, arch=arch, **kwargs)
    if kind in ("port", "id") and not arg:
        raise ValueError(f"target {spec!r} needs a value: {kind}:{'DEVICE' if kind == 'port' else 'SERIAL'}")
    if kind not in ("port", "id", "auto") or (kind == "auto" and arg):
        raise ValueError(f"unknown target {spec!r}; expected one of: {SPECS}")
    device, found = resolve_port(spec)
    profile = board or found
    return SerialTarget(device, load_profile(profile) if profile else None, deploy=deploy,
                        arch=arch, **kwargs)
