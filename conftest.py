"""Root conftest: the --target/--deploy/--board options, their validation, markers and the
report header.

They live here, not in host_tests/conftest.py (fixtures), because for
`pytest --target unix:rpi_pico` (no "=") pytest first takes "unix:rpi_pico" for a
test path, so host_tests/conftest.py would load too late to declare the option.

Markers:
  host_only              the test does not use the board; set automatically on every test
                         that requests none of TARGET_FIXTURES, so `-m "not host_only"` runs
                         only the tests that depend on --target (make test runs host-only
                         tests once, with the first target)
  requires_native        skip unless the board compiles @micropython.viper code
  requires_heap(bytes)   skip unless the board's MicroPython heap is at least that big
Both requirements are detected on the board itself (host_tests/conftest.py).
"""
import pytest

from kmemhost.profiles import ProfileError
from kmemhost.targets import (DEPLOY_MODES, SPECS, TargetUnavailable, close_all, make_target)

# Tests requesting any of these run on the --target board; all others are host_only.
TARGET_FIXTURES = {"target", "bare", "board_info"}


def pytest_addoption(parser):
    parser.addoption("--target", default="unix",
                     help=f"where snippets run: {SPECS} (default unix), e.g. unix:rpi_pico, "
                          "vboard:esp32_generic, port:/dev/ttyACM0")
    parser.addoption("--deploy", default=None, choices=DEPLOY_MODES,
                     help="how kmem gets onto a board target: flash (copy .mpy to /lib/kmem, "
                          "changed files only; default for boards), ram (a RAM disk, redone "
                          "after every soft reset), mount (served from the host over the "
                          "serial line), romfs (a ROMFS image on the board; default for "
                          "qemu) or frozen (kmem frozen into the firmware: with qemu, "
                          "build/qemu/firmware-kmem.elf)")
    parser.addoption("--board", default=None,
                     help="board profile for port:/auto/id: targets whose USB VID:PID names none")
    parser.addoption("--heap-margin", type=int, default=0, metavar="BYTES",
                     help="keep BYTES of the board's MicroPython heap taken during every test "
                          "(as a board's own objects would): the suite must not depend on the "
                          "last free bytes or on where they lie")


def target_options(config):
    """kwargs for make_target from the command line."""
    return {"deploy": config.getoption("--deploy"), "board": config.getoption("--board")}


def pytest_configure(config):
    config.addinivalue_line("markers", "host_only: does not use the --target board (automatic)")
    config.addinivalue_line("markers", "requires_native: needs the native emitter (viper)")
    config.addinivalue_line("markers", "requires_heap(bytes): needs a MicroPython heap this big")
    # Fail once, up front, instead of erroring every test: bad spec, missing or busy port.
    try:
        target = make_target(config.getoption("--target"), **target_options(config))
        if hasattr(target, "connect"):
            target.connect()
    except (ValueError, ProfileError, TargetUnavailable) as e:
        raise pytest.UsageError(str(e))
    from kmemhost import targets

    def progress(message):  # a board's start and deploy, as they happen, past the capture
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(message, flush=True)
    targets.progress = progress


def pytest_unconfigure(config):
    close_all()


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        on_board = (TARGET_FIXTURES & set(getattr(item, "fixturenames", ()))
                    or item.get_closest_marker("requires_native")
                    or item.get_closest_marker("requires_heap"))
        if not on_board:
            item.add_marker(pytest.mark.host_only)


def pytest_report_header(config):
    t = make_target(config.getoption("--target"), **target_options(config))
    p = t.profile
    heap = f"heap {p['heap_size']} bytes" if p.get("heap_size") else "heap from the board"
    deploy = f", kmem deploy: {t.deploy}" if t.kind != "unix" else ""
    return f"kmem target: {t.name} (board {p['board_id']}, {heap}, arena {p['arena_size']} bytes{deploy})"


def pytest_terminal_summary(terminalreporter, config):
    from kmemhost import targets
    for board in list(targets._BOARDS.values()):
        for line in [*board.log, *([f"given up: {board.failed}"] if board.failed else [])]:
            terminalreporter.write_line(f"{board.name}: {line}")
