"""Tests of the virtual board itself (tools/vboard, kmemhost.vboard): mpremote and raw
bytes over its pty behave as with a USB board. Independent of --target / the target fixture."""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

from kmemhost import ROOT
from kmemhost.profiles import load_profile
from kmemhost.vboard import RAW_PROMPT, SOFT_REBOOT, VirtualBoard, find_micropython

MPREMOTE = shutil.which("mpremote", path=str(Path(sys.executable).parent)) or shutil.which("mpremote")
TIMEOUT = 30  # s for any one mpremote call or wait

try:
    find_micropython()
    HAVE_PORT = True
except Exception:  # noqa: BLE001
    HAVE_PORT = False
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="vboard needs Linux ptys"),
    pytest.mark.skipif(not HAVE_PORT or not MPREMOTE, reason="needs the unix port and mpremote (make venv)"),
]


@pytest.fixture
def vboard(tmp_path):
    """A fresh rpi_pico virtual board with its flash in tmp_path/flash."""
    with VirtualBoard("rpi_pico", tmp_path / "flash") as vb:
        yield vb


def mpremote(vb, *args, ok=True):
    """Run `mpremote connect <pty> ARGS...`; return its stdout (text, \\n line ends)."""
    res = subprocess.run([MPREMOTE, "connect", vb.pty, *args], capture_output=True,  # pyright: ignore
                         text=True, timeout=TIMEOUT)
    if ok:
        assert res.returncode == 0, f"mpremote {args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


class Serial:
    """A bare serial client on the pty, for byte-level checks."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.seen = b""

    def write(self, data):
        os.write(self.fd, data)

    def read_until(self, marker, timeout=10):
        """Bytes up to and including `marker` (the rest is kept for the next read)."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.fd], [], [], left)[0], \
                f"no {marker!r} within {timeout}s; got {self.seen!r}"
            self.seen += os.read(self.fd, 4096)
        at = self.seen.index(marker) + len(marker)
        data, self.seen = self.seen[:at], self.seen[at:]
        return data

    def close(self):
        os.close(self.fd)


@pytest.fixture
def serial(vboard):
    s = Serial(vboard.pty)
    yield s
    s.close()


def test_exec_eval_and_board_layout(vboard):
    assert mpremote(vboard, "exec", "print('hello'); print(6 * 7)") == "hello\n42\n"
    out = mpremote(vboard, "exec", "import os, sys", "+", "eval", "(os.getcwd(), sys.path)")
    assert out.strip() == "('/', ['', '.frozen', '/lib'])"   # flash is "/", as on a board
    assert mpremote(vboard, "eval", "1 + 2").strip() == "3"


def test_fs_cp_ls_cat_rm(vboard, tmp_path):
    flash = vboard.flash_dir
    src = tmp_path / "data.txt"
    src.write_text("line one\nline two\n")
    mpremote(vboard, "cp", str(src), ":data.txt")
    assert (flash / "data.txt").read_text() == "line one\nline two\n"
    assert "data.txt" in mpremote(vboard, "ls")
    assert mpremote(vboard, "cat", "data.txt") == "line one\nline two\n"
    mpremote(vboard, "mkdir", "sub", "+", "cp", str(src), ":sub/copy.txt")
    assert (flash / "sub" / "copy.txt").is_file()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 5\n")
    mpremote(vboard, "cp", "-r", str(pkg), ":")          # bare ":" works (os.stat('') on "/")
    assert mpremote(vboard, "exec", "import pkg; print(pkg.VALUE)") == "5\n"
    mpremote(vboard, "rm", "data.txt", "+", "rm", "-r", "sub")
    assert not (flash / "data.txt").exists() and not (flash / "sub").exists()


def test_kmem_style_package_in_lib_imports(vboard, tmp_path):
    pkg = tmp_path / "kmemtoy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .core import size\n")
    (pkg / "core.py").write_text("def size():\n    return 32768\n")
    mpremote(vboard, "mkdir", "lib", "+", "cp", "-r", str(pkg), ":lib/")
    assert (vboard.flash_dir / "lib" / "kmemtoy" / "core.py").is_file()
    out = mpremote(vboard, "exec", "import kmemtoy; print(kmemtoy.size(), kmemtoy.__file__)")
    assert out == "32768 /lib/kmemtoy/__init__.py\n"


def test_mip_install_from_local_package_json(vboard, tmp_path):
    pkg = tmp_path / "mippkg"
    pkg.mkdir()
    (pkg / "greet.py").write_text("def hi():\n    return 'hi from mip'\n")
    (pkg / "package.json").write_text(json.dumps(
        {"urls": [["greet/__init__.py", "greet.py"]], "version": "0.1"}))
    out = mpremote(vboard, "mip", "install", str(pkg / "package.json"))
    assert "/lib/greet/__init__.py" in out
    assert (vboard.flash_dir / "lib" / "greet" / "__init__.py").is_file()
    assert mpremote(vboard, "exec", "import greet; print(greet.hi())") == "hi from mip\n"


def test_soft_reset_keeps_flash_but_not_state(vboard, serial):
    mpremote(vboard, "exec", "x = 41; open('keep.txt', 'w').write('kept')")
    assert mpremote(vboard, "resume", "exec", "print(x + 1)") == "42\n"   # no reset: state kept
    mpremote(vboard, "soft-reset")
    out = mpremote(vboard, "resume", "exec", "print('x' in globals(), open('keep.txt').read())")
    assert out == "False kept\n"
    # Byte level, as mpremote's enter_raw_repl(soft_reset=True) sees it.
    serial.write(b"\r\x03\r\x01")
    serial.read_until(RAW_PROMPT)
    serial.write(b"\x04")
    assert serial.read_until(b"soft reboot\r\n") == b"OK\r\n" + SOFT_REBOOT
    assert serial.read_until(RAW_PROMPT) == RAW_PROMPT    # still in the raw REPL, as a board
    serial.write(b"print('x' in globals())\x04")
    assert serial.read_until(b">") == b"OKFalse\r\n\x04\x04>"


def test_friendly_repl_soft_reboot_banner_and_boot_py(vboard, serial):
    (vboard.flash_dir / "boot.py").write_text("print('boot.py ran')\n")
    (vboard.flash_dir / "main.py").write_text("print('main.py ran')\n")
    serial.write(b"\r\x02")                     # (re)enter the friendly REPL: banner
    serial.read_until(b'for more information.\r\n>>> ')
    serial.write(b"for i in range(2): print(i)\r\r")
    assert serial.read_until(b">>> ").endswith(b"\r\n0\r\n1\r\n>>> ")   # print() ends lines with \r\n
    serial.write(b"\x04")                       # Ctrl-D: soft reset, main.py, banner
    out = serial.read_until(b">>> ")
    assert out.startswith(b"\r\n" + SOFT_REBOOT + b"boot.py ran\r\nmain.py ran\r\nMicroPython ")
    assert out.endswith(b'Type "help()" for more information.\r\n>>> ')


def test_boot_py_may_print_control_bytes_and_its_errors_show(vboard, serial):
    (vboard.flash_dir / "boot.py").write_text("print('a\\x04b')\nraise ValueError('in boot')\n")
    serial.write(b"\r\x03\r\x01")
    serial.read_until(RAW_PROMPT)
    serial.write(b"\x04")                       # soft reset in the raw REPL: boot.py runs
    out = serial.read_until(RAW_PROMPT)
    assert out.startswith(b"OK\r\n" + SOFT_REBOOT + b"a\x04b\r\n")
    assert b'File "boot.py", line 2' in out and b"ValueError: in boot" in out
    serial.write(b"print(1 + 1)\x04")           # and the board works
    assert serial.read_until(b">") == b"OK2\r\n\x04\x04>"


def test_run_script_and_sys_exit_restarts_board(vboard, tmp_path, serial):
    script = tmp_path / "script.py"
    script.write_text("import sys\nG = 1\nprint('before exit')\nsys.exit()\nprint('not reached')\n")
    assert mpremote(vboard, "run", str(script)) == "before exit\n"
    assert mpremote(vboard, "resume", "exec", "print('G' in globals())") == "False\n"
    # sys.exit() in the raw REPL: the exec completes, then the board soft-reboots.
    serial.write(b"\r\x03\r\x01")
    serial.read_until(RAW_PROMPT)
    serial.write(b"import sys\nprint(1)\nsys.exit()\x04")
    assert serial.read_until(RAW_PROMPT) == b"OK1\r\n\x04\x04" + SOFT_REBOOT + RAW_PROMPT


def test_consecutive_commands_and_interrupting_a_running_program(vboard, tmp_path):
    assert mpremote(vboard, "exec", "print('one')") == "one\n"
    assert mpremote(vboard, "exec", "print('two')") == "two\n"
    loop = tmp_path / "loop.py"
    loop.write_text("import time\nwhile True:\n    time.sleep(0.01)\n")
    mpremote(vboard, "run", "--no-follow", str(loop))    # leaves the board busy
    t0 = time.monotonic()
    assert mpremote(vboard, "resume", "exec", "print('three')") == "three\n"   # Ctrl-C, raw REPL
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("profile", ["rpi_pico", "esp32_generic"])
def test_heap_size_from_profile(profile, tmp_path):
    heap = load_profile(profile)["heap_size"]
    with VirtualBoard(profile, tmp_path / "flash") as vb:
        total = int(mpremote(vb, "exec", "import gc", "+", "eval", "gc.mem_free() + gc.mem_alloc()"))
    assert 0.95 * heap <= total <= heap


def test_cli_pty_file_and_clean_stop_on_ctrl_c(tmp_path):
    pty_file = tmp_path / "pty"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "vboard"), "--profile", "unix",
                             "--flash", str(tmp_path / "flash"), "--pty-file", str(pty_file), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not pty_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        path = pty_file.read_text().strip()
        assert path.startswith("/dev/")
        assert proc.stdout.readline().strip() == path     # the ready line
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1                          # the interpreter
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert not pty_file.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(int(children[0]), 0)                   # killed and reaped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_mount_passes_binary_frames_uncooked(vboard, tmp_path):
    """`mpremote mount` frames are binary (written with Ctrl-C disabled): no \\n -> \\r\\n,
    and Ctrl-C bytes in file data are data."""
    local = tmp_path / "local"
    local.mkdir()
    blob = bytes(range(256)) * 3
    (local / "in.bin").write_bytes(blob)
    out = mpremote(vboard, "mount", str(local), "exec",
                   "d = open('in.bin', 'rb').read()\nopen('out.bin', 'wb').write(d)\n"
                   "print(len(d), d == bytes(range(256)) * 3)")
    assert out.endswith("768 True\n")
    assert (local / "out.bin").read_bytes() == blob


def test_with_kmem_the_board_imports_kmem_at_once(tmp_path):
    # What `make vboard` (tools/vboard --with-kmem) gives: kmem deployed as .mpy in /lib.
    from kmemhost.vboard import install_kmem
    install_kmem(tmp_path / "flash")
    with VirtualBoard("rpi_pico", tmp_path / "flash") as vb:
        out = mpremote(vb, "exec", "import kmem; print(kmem.kmalloc(12), kmem.__file__)")
    addr, path = out.split()
    assert int(addr) % 8 == 0
    assert path == "/lib/kmem/__init__.mpy"


def test_cli_refuses_a_second_board_on_the_same_flash(tmp_path):
    # Two `make vboard` of one profile: the second must not share the first one's flash
    # or overwrite (and on exit delete) its pty file.
    pty_file = tmp_path / "pty"
    argv = [sys.executable, str(ROOT / "tools" / "vboard"), "--profile", "unix",
            "--flash", str(tmp_path / "flash"), "--pty-file", str(pty_file), "--quiet"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = first.stdout.readline().strip()
        assert path.startswith("/dev/")
        second = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode == 1
        assert f"is in use by another virtual board (pid {first.pid})" in second.stderr
        assert "--flash DIR --pty-file PATH" in second.stderr
        assert pty_file.read_text().strip() == path
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=10)
