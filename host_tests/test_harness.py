"""Tests of the host harness itself (tools/kmemhost). kmem is only imported, never exercised."""
import time

import pytest

from kmemhost import build
from kmemhost.profiles import ProfileError, list_profiles, load_profile
from kmemhost.targets import TargetError, TargetTimeout, make_target, parse_traceback

MPY_ARCH_CODES = {"x86": 1, "x64": 2, "armv6m": 4, "xtensawin": 10}  # .mpy header byte 2 >> 2
HAVE_KMEM = (build.FIRMWARE / "kmem" / "__init__.py").is_file()
needs_kmem = pytest.mark.skipif(not HAVE_KMEM, reason="firmware/kmem/__init__.py not written yet")


# --- exec / eval -------------------------------------------------------------

def test_exec_returns_stdout(bare):
    assert bare.exec("print('hello')\nprint(1 + 2)") == "hello\n3\n"


def test_exec_dedents_indented_code(bare):
    assert bare.exec("""
        x = 5
        print(x)
    """) == "5\n"


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**70, 1.5, "", "quo'te\"s\n\tand é", b"", b"\x00\xff\r\n",
    [], [1, [2, [3]]], (), (1,), {}, {"a": [1, (2, None)], 3: b"x", "t": True},
])
def test_eval_round_trips_literals(bare, value):
    assert bare.eval(repr(value)) == value


def test_eval_runs_setup_and_ignores_printed_output(bare):
    setup = """
        def f(x):
            print('noise')
            return x * 2
    """
    assert bare.eval("f(21)  # trailing comment", setup=setup) == 42


def test_eval_rejects_non_literal_repr(bare):
    with pytest.raises(TargetError) as e:
        bare.eval("object()")
    assert e.value.type == "EvalError"


# --- exceptions --------------------------------------------------------------

def test_exception_becomes_target_error(bare):
    with pytest.raises(TargetError) as e:
        bare.exec("print('before')\nraise ValueError('bad address 0x%08x' % 16)")
    err = e.value
    assert (err.type, err.message) == ("ValueError", "bad address 0x00000010")
    assert str(err) == "ValueError: bad address 0x00000010"
    assert err.traceback.startswith("Traceback (most recent call last):")
    assert err.stdout == "before\n"


@pytest.mark.parametrize("code, type_, message", [
    ("raise KeyboardInterrupt", "KeyboardInterrupt", ""),
    ("import errno\nraise OSError(errno.EEXIST)", "OSError", "[Errno 17] EEXIST"),
    ("class CorruptionError(Exception): pass\nraise CorruptionError('stack overflow\\nat 0x10')",
     "CorruptionError", "stack overflow\nat 0x10"),
    ("x = (", "SyntaxError", "invalid syntax"),
    ("import no_such_module", "ImportError", "no module named 'no_such_module'"),
    ("import sys\nsys.exit(3)", "SystemExit", "exit status 3"),
])
def test_exception_variants(bare, code, type_, message):
    with pytest.raises(TargetError) as e:
        bare.exec(code)
    assert (e.value.type, e.value.message) == (type_, message)
    assert str(e.value) == (f"{type_}: {message}" if message else type_)


def test_output_may_hold_the_raw_repls_control_bytes(bare):
    # \x04 ends a raw-REPL output section; printed by a snippet it is just output.
    assert bare.exec("print('a\\x04b')\nprint('c\\x04')") == "a\x04b\nc\x04\n"


def test_output_ending_like_a_reboot_is_not_a_crash(bare):
    assert bare.exec("print('MPY: soft reboot')") == "MPY: soft reboot\n"


def test_soft_reset_in_a_snippet_resets_the_board(bare):
    bare.exec("import builtins\nbuiltins.kmem_mark = 1")
    assert bare.exec("print('bye')\nimport machine\nmachine.soft_reset()") == "bye\n"
    assert bare.eval("hasattr(builtins, 'kmem_mark')", setup="import builtins") is False


def test_eval_propagates_exception(bare):
    with pytest.raises(TargetError, match="^ZeroDivisionError: divide by zero$"):
        bare.eval("1 // 0")


def test_parse_traceback_handles_serial_output():
    text = ("noise\r\nTraceback (most recent call last):\r\n"
            '  File "<stdin>", line 1, in <module>\r\nMemoryError: \r\n')
    assert parse_traceback(text)[:2] == ("MemoryError", "")
    assert parse_traceback("garbage, no traceback")[:2] == ("TargetError", "garbage, no traceback")


# --- timeouts and the emulated board -----------------------------------------

def test_endless_loop_times_out_and_is_killed(bare, tmp_path):
    # On the unix port the loop writes to a host file, to see that the process was killed.
    # A board cannot write host files: its loop prints without end (a board that keeps
    # talking must time out too), and the next snippet answering shows the loop was stopped.
    on_host = bare.kind == "unix"
    log = tmp_path / "alive"
    code = f"""
        f = open({str(log)!r}, 'w')
        while True:
            f.write('x')
            f.flush()
    """ if on_host else """
        while True:
            print('x' * 60)
    """
    start = time.monotonic()
    with pytest.raises(TargetTimeout, match=r"^no answer from \S+ within 2s$") as e:
        bare.exec(code, timeout=2)
    assert time.monotonic() - start < 10
    assert not isinstance(e.value, TargetError)  # a hang must not pass as an expected error
    if on_host:
        size = log.stat().st_size
        time.sleep(0.5)
        assert log.stat().st_size == size, "snippet still running after the timeout"
    start = time.monotonic()
    assert bare.exec("print('ok')") == "ok\n"
    assert time.monotonic() - start < 10


def test_heap_size_is_the_boards(bare, board_info):
    # Emulated boards get their heap from the profile; a real board's comes from its firmware.
    emulated = bare.kind in ("unix", "vboard", "qemu")
    heap = bare.profile["heap_size"] if emulated else board_info.heap
    total = bare.eval("gc.mem_free() + gc.mem_alloc()", setup="import gc")
    assert 0.95 * heap <= total <= heap  # the GC keeps a little for its own tables
    assert bare.eval(f"len(bytearray({heap // 2}))") == heap // 2
    with pytest.raises(TargetError) as e:
        bare.exec(f"bytearray({heap})")
    assert e.value.type == "MemoryError"


# --- kmem build ----------------------------------------------------------------

@needs_kmem
def test_kmem_is_imported_from_where_it_was_deployed(target):
    files = target.eval("sorted((n, m.__file__) for n, m in sys.modules.items() "
                        "if n.split('.')[0] == 'kmem')", setup="import sys")
    if getattr(target, "deploy", None) == "frozen":
        # Frozen into the firmware: __file__ is the manifest's relative name, no filesystem.
        assert ("kmem", "kmem/__init__.py") in files
        assert not any(f.startswith("/") for _, f in files)
        return
    # kmem_path: MICROPYPATH on unix, e.g. /lib where kmem was deployed on a board
    assert ("kmem", f"{target.kmem_path}/kmem/__init__.mpy") in files
    assert all(f.endswith(".mpy") for _, f in files)


@needs_kmem
def test_build_compiles_every_module_for_the_host_arch(kmem_mpy_dir):
    sources = sorted(p.stem for p in (build.FIRMWARE / "kmem").glob("*.py"))
    mpys = sorted((kmem_mpy_dir / "kmem").glob("*.mpy"))
    assert [p.stem for p in mpys] == sources
    for mpy in mpys:
        header = mpy.read_bytes()[:3]
        assert header[:2] == b"M\x06", mpy
        # arch is 0 without native code; otherwise it must be this host's
        assert header[2] >> 2 in (0, MPY_ARCH_CODES.get(build.host_arch())), mpy


@needs_kmem
def test_build_skips_unchanged_sources(kmem_mpy_dir):
    before = {p: p.stat().st_mtime_ns for p in kmem_mpy_dir.rglob("*.mpy")}
    assert build.build_kmem(build.host_arch()) == kmem_mpy_dir
    assert {p: p.stat().st_mtime_ns for p in kmem_mpy_dir.rglob("*.mpy")} == before


# --- profiles and target specs -------------------------------------------------

def test_profiles_load():
    assert {"unix", "rpi_pico", "esp32_generic"} <= set(list_profiles())
    assert load_profile("rpi_pico")["heap_size"] == 196608
    assert load_profile("esp32_generic")["mpy_arch"] == "xtensawin"


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ProfileError, match="unknown board profile 'nope'; available: .*rpi_pico"):
        make_target("unix:nope")


def test_target_specs():
    assert make_target("unix").name == "unix"
    assert make_target("unix:rpi_pico").name == "unix:rpi_pico"
    with pytest.raises(ValueError, match="unknown target"):
        make_target("renode")
    assert make_target("qemu").name == "qemu" and make_target("qemu").deploy == "romfs"
    with pytest.raises(ValueError, match="no writable flash filesystem"):
        make_target("qemu", deploy="flash")
    assert make_target("vboard:rpi_pico").name == "vboard:rpi_pico"  # more in test_targets.py
