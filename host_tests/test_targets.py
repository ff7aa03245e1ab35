"""Target specs (unix, vboard, port:, auto, id:), board requirements, and the serial wire's
robustness: a missing or busy port fails at once with a clear message, a board that never
answers times out instead of hanging. No real board needed: ptys and faked port lists."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import serial

from kmemhost import ROOT, targets
from kmemhost.profiles import ProfileError, load_profile
from kmemhost.targets import (BoardInfo, SerialTarget, TargetError, TargetTimeout,
                              TargetUnavailable, VboardTarget, VirtualBoardSerial, make_target)


def fake_port(device, vid=None, pid=None, manufacturer=None, serial_number=None, product=None):
    return SimpleNamespace(device=device, vid=vid, pid=pid, manufacturer=manufacturer,
                           serial_number=serial_number, product=product)


@pytest.fixture
def ports(monkeypatch):
    """Replace the host's serial ports (as mpremote lists them) with a fake list."""
    listed = []
    monkeypatch.setattr(targets, "list_ports", lambda: sorted(listed, key=lambda p: p.device))
    return listed


@pytest.fixture
def pty_pair():
    """(master fd, slave path): a serial device nobody answers on."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


# --- spec parsing ----------------------------------------------------------------

def test_vboard_specs():
    t = make_target("vboard")
    assert isinstance(t, VboardTarget) and t.name == "vboard:rpi_pico"
    t = make_target("vboard:esp32_generic")
    assert t.name == "vboard:esp32_generic" and t.profile["heap_size"] == 112640
    with pytest.raises(ProfileError, match="unknown board profile 'nope'"):
        make_target("vboard:nope")


@pytest.mark.parametrize("spec, message", [
    ("qemu:frozen", "target qemu takes no value"),
    ("auto:x", "unknown target 'auto:x'"),
    ("port:", "needs a value: port:DEVICE"),
    ("id:", "needs a value: id:SERIAL"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        make_target(spec)


def test_bad_deploy_mode():
    with pytest.raises(ValueError, match="unknown deploy mode 'usb'"):
        make_target("vboard", deploy="usb")


def test_unix_target_ignores_board_options():
    assert make_target("unix:rpi_pico", deploy="mount", board="esp32_generic").name == "unix:rpi_pico"


def test_port_spec_on_a_device_without_usb_id(pty_pair, ports):
    _, path = pty_pair
    t = make_target(f"port:{path}")
    assert isinstance(t, SerialTarget) and t.name == f"port:{path}"
    assert t.profile["name"] == "generic" and t.profile["arena_size"] == 32768
    assert make_target(f"port:{path}", board="esp32_generic").profile["name"] == "esp32_generic"


def test_port_profile_comes_from_the_usb_id(pty_pair, ports):
    _, path = pty_pair
    ports.append(fake_port(path, 0x2E8A, 0x0005, "MicroPython", "E660C0D1C7"))
    assert make_target(f"port:{path}").profile["name"] == "rpi_pico"


def test_auto_picks_the_first_micropython_board(ports):
    ports += [fake_port("/dev/ttyS0"),                                    # no USB
              fake_port("/dev/ttyACM9", 0x1234, 0x5678, "Acme", "X1"),     # not a board
              fake_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "Silicon Labs", "0001"),  # CP2102: esp32
              fake_port("/dev/ttyACM1", 0x2E8A, 0x0005, "MicroPython", "E66")]
    t = make_target("auto")
    assert (t.name, t.profile["name"]) == ("port:/dev/ttyACM1", "rpi_pico")  # sorted: ACM1 < USB0
    assert make_target("auto", board="esp32_generic").profile["name"] == "esp32_generic"


def test_auto_knows_micropython_by_manufacturer(ports):
    ports.append(fake_port("/dev/ttyACM3", 0xF055, 0x9802, "MicroPython", "AB"))
    t = make_target("auto")
    assert (t.name, t.profile["name"]) == ("port:/dev/ttyACM3", "generic")


def test_auto_without_a_board_says_what_it_saw(ports):
    ports.append(fake_port("/dev/ttyS0"))
    with pytest.raises(TargetUnavailable, match=r"no MicroPython board found .*2e8a:0005.*"
                                                r"ports: /dev/ttyS0 no-usb-id"):
        make_target("auto")


def test_id_picks_the_board_by_serial_number(ports):
    ports += [fake_port("/dev/ttyACM0", 0x2E8A, 0x0005, "MicroPython", "AAAA"),
              fake_port("/dev/ttyUSB0", 0x1A86, 0x7523, "QinHeng", "BBBB")]
    t = make_target("id:BBBB")
    assert (t.name, t.profile["name"]) == ("port:/dev/ttyUSB0", "esp32_generic")
    with pytest.raises(TargetUnavailable, match="no serial port with USB serial number 'CCCC'"):
        make_target("id:CCCC")


# --- clear errors, fast ----------------------------------------------------------

def test_missing_port_is_reported_at_once(ports):
    start = time.monotonic()
    with pytest.raises(TargetUnavailable, match=r"^port /dev/ttyKMEM404 not found "
                                                r"\(MicroPython boards connected: none\)$"):
        make_target("port:/dev/ttyKMEM404")
    assert time.monotonic() - start < 1


def test_busy_port_is_reported_at_once(pty_pair):
    _, path = pty_pair
    holder = serial.Serial(path, exclusive=True)  # e.g. another mpremote
    try:
        t = make_target(f"port:{path}")
        start = time.monotonic()
        with pytest.raises(TargetUnavailable, match=f"port {path} is busy: another program"):
            t.connect()
        assert time.monotonic() - start < 1
    finally:
        holder.close()
        t.close()


def test_pytest_refuses_a_missing_port_before_running_anything():
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pytest", "--target", "port:/dev/ttyKMEM404",
                          "-p", "no:cacheprovider", "host_tests/test_targets.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 4, res.stdout + res.stderr  # pytest's usage error
    assert "port /dev/ttyKMEM404 not found" in res.stderr
    assert time.monotonic() - start < 30


def test_dead_board_times_out_and_is_given_up_on(pty_pair):
    master, path = pty_pair
    t = SerialTarget(path, timeout=1)
    try:
        start = time.monotonic()
        with pytest.raises(TargetTimeout, match=f"^no answer from port:{path} within 1s$") as e:
            t.exec("print(1)")
        assert not isinstance(e.value, TargetError)
        assert 1 <= time.monotonic() - start < 3
        assert os.read(master, 100).startswith(b"\r\x03\r\x01")  # it tried to interrupt + raw REPL
        # Later tests fail at once instead of waiting again.
        start = time.monotonic()
        with pytest.raises(TargetUnavailable, match="given up on for this session"):
            t.exec("print(1)")
        assert time.monotonic() - start < 0.5
    finally:
        t.close()


def test_board_that_stops_mid_snippet_times_out(pty_pair):
    """Answers the raw REPL handshake, then goes silent while 'running' the snippet."""
    import threading
    master, path = pty_pair
    stop = threading.Event()

    def half_board():
        buf = b""
        while not stop.is_set():
            import select
            if not select.select([master], [], [], 0.05)[0]:
                continue
            try:
                buf += os.read(master, 1024)
            except OSError:
                return
            if buf.endswith(b"\r\x01"):
                os.write(master, b"raw REPL; CTRL-B to exit\r\n>")
                buf = b""
            elif buf.endswith(b"\x04") and b"\x05" not in buf and len(buf) == 1:
                os.write(master, b"OK\r\nMPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
                buf = b""
            elif buf.endswith(b"\x05A\x01"):
                os.write(master, b"R\x00")  # no raw paste
                buf = b""
            elif buf.endswith(b"\x04"):
                os.write(master, b"OKpartial output\r\n")  # ...and then nothing
                buf = b""

    thread = threading.Thread(target=half_board, daemon=True)
    thread.start()
    t = SerialTarget(path, timeout=3, prelude=False)
    board = t.board
    try:
        board.soft_reset()  # no deploy: this 'board' runs nothing
        start = time.monotonic()
        with pytest.raises(TargetTimeout, match="within 1s") as e:
            board.run("print(1)", timeout=1)
        assert 1 <= time.monotonic() - start < 3
        assert e.value.stdout == "partial output\n"
    finally:
        stop.set()
        thread.join(2)
        t.close()


# --- requirements detected on the board ----------------------------------------------

def test_board_info_decodes_sys_implementation_mpy():
    info = BoardInfo(mpy=0xB06, native=True, heap=196608)
    assert (info.mpy_version, info.mpy_sub, info.arch, info.mpy) == (6, 3, "x64", "6.3")
    assert BoardInfo(mpy=(10 << 10) | 0x306).arch == "xtensawin"
    assert BoardInfo(mpy=(4 << 10) | 0x306).arch == "armv6m"
    assert BoardInfo(mpy=6).arch is None and BoardInfo(mpy=0).mpy == "none"


def test_board_info_is_probed_on_the_board(board_info, target):
    assert board_info.mpy_version == 6 and board_info.native is True
    heap = target.profile.get("heap_size")
    if heap:
        assert 0.95 * heap <= board_info.heap <= heap


def test_unmet_requirements_name_the_reason():
    pico = BoardInfo(mpy=(4 << 10) | 0x306, native=True, heap=196608)
    bare = BoardInfo(mpy=0x306, native=False, heap=65536)
    assert targets.unmet_requirement(pico, "port:/dev/ttyACM0", native=True, heap=150000) is None
    assert (targets.unmet_requirement(bare, "port:/dev/ttyUSB0", native=True)
            == "needs the native emitter (@micropython.viper); port:/dev/ttyUSB0 has none")
    assert (targets.unmet_requirement(pico, "vboard:rpi_pico", heap=1 << 20)
            == "needs a 1048576-byte MicroPython heap; vboard:rpi_pico has 196608")


@pytest.mark.requires_heap(64 * 1024)
@pytest.mark.requires_native
def test_requires_native_runs_where_viper_compiles(board_info, target):
    assert target.eval("f(20)", setup="""
        @micropython.viper
        def f(x: int) -> int:
            return x + 22
    """) == 42


def test_board_that_crashes_fails_at_once_and_comes_back():
    """A snippet that kills the interpreter (the vboard restarts it, as a board reboots)
    fails with a Crash error at once, not after the timeout; the next test works."""
    board = VirtualBoardSerial(load_profile("rpi_pico"), timeout=10)
    try:
        board.soft_reset()
        start = time.monotonic()
        out, err = board.run("print('before')\nimport micropython\n@micropython.viper\n"
                             "def f():\n    ptr32(0)[0] = 1\nf()\n")
        assert time.monotonic() - start < 5
        assert out.replace("\r\n", "\n") == "before\n"
        assert err == "Crash: vboard:rpi_pico reset while running the snippet (MPY: soft reboot)"
        assert not board.fresh
        board.soft_reset()
        assert board.exec("print('alive')") == "alive\n"
    finally:
        board.close()
        board.remove_flash()


def test_port_closed_mid_command_is_unavailable_not_a_crash_of_the_harness():
    board = VirtualBoardSerial(load_profile("unix"), timeout=10)
    try:
        board.soft_reset()
        closer = threading.Timer(0.5, board.wire._port.close)
        closer.start()
        with pytest.raises(TargetUnavailable, match="lost the connection.*the port was closed"):
            board.run("import time\ntime.sleep(3)\nprint('late')")
        closer.join()
    finally:
        board.close()
        board.remove_flash()


def test_resets_are_seen_at_once_when_boot_py_prints():
    # A board prints boot.py's output between "MPY: soft reboot" and the raw REPL banner.
    t = make_target("vboard:unix", prelude=False, timeout=10)
    try:
        t.exec("pass")
        (Path(t.board.flash_dir) / "boot.py").write_text("print('boot.py says hi')\n")
        start = time.monotonic()
        with pytest.raises(TargetError, match="^SystemExit: exit status 3$"):
            t.exec("print('bye')\nimport sys\nsys.exit(3)")
        out, err = t.board.run("import micropython\n@micropython.viper\n"
                               "def f():\n    ptr32(0)[0] = 1\nf()\n")
        assert err.startswith("Crash: vboard:unix reset while running the snippet")
        assert time.monotonic() - start < 8
    finally:
        t.close()
