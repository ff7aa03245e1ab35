"""Shared fixtures: `target` runs snippets on the board chosen by --target
(declared in ../conftest.py, with --deploy and --board).

On a board target (vboard, port, auto, id) kmem is deployed before the first snippet of the
session, and the board is soft-reset before the first snippet of every test (state lingers
between the snippets of one test, as it would on a board).

Requirements, detected on the board itself and skipped with the reason:
  @pytest.mark.requires_native        the native emitter (@micropython.viper compiles)
  @pytest.mark.requires_heap(bytes)   gc.mem_free() + gc.mem_alloc() >= bytes
or in a test: `board_info` (a kmemhost.targets.BoardInfo: .native, .heap, .arch, .mpy, ...).
"""
import pytest

from kmemhost import build, targets
from kmemhost.targets import TargetError, make_target


@pytest.fixture(scope="session")
def kmem_mpy_dir():
    """firmware/kmem compiled to .mpy for the host once per session (dir for MICROPYPATH)."""
    return build.build_kmem(build.host_arch())


@pytest.fixture(autouse=True)
def _fresh_board():
    """Each test starts from a soft-reset board (done lazily, before its first snippet)."""
    targets.begin_test()


def _target(request, **kwargs):
    config = request.config
    return make_target(config.getoption("--target"), deploy=config.getoption("--deploy"),
                       board=config.getoption("--board"), **kwargs)


@pytest.fixture
def bare(request, tmp_path):
    """The --target board (with --deploy and --board) running plain MicroPython: no prelude,
    nothing on MICROPYPATH."""
    return _target(request, prelude=False, mpy_dir=tmp_path)


@pytest.fixture
def board_info(request, kmem_mpy_dir):
    """What the --target board can do (probed on the board once per session)."""
    return _target(request, prelude=False, mpy_dir=kmem_mpy_dir).probe()


@pytest.fixture(autouse=True)
def _board_requirements(request):
    """Skip tests marked requires_native / requires_heap(bytes) the board cannot run."""
    native = request.node.get_closest_marker("requires_native")
    heaps = [m.args[0] for m in request.node.iter_markers("requires_heap")]
    if not native and not heaps:
        return
    info = request.getfixturevalue("board_info")
    why = targets.unmet_requirement(info, request.config.getoption("--target"),
                                    native=bool(native), heap=max(heaps, default=0))
    if why:
        pytest.skip(why)


@pytest.fixture
def target(request, kmem_mpy_dir, board_info):
    """A Target whose snippets start with `import kmem; from kmem import *; init(arena_size)`.

    kmem's allocator core is viper code, so on firmware without the native emitter
    every kmem test is skipped with that reason rather than failing at import."""
    why = targets.unmet_requirement(board_info, request.config.getoption("--target"),
                                    native=True, heap=0)
    if why:
        pytest.skip(why)
    t = _target(request, mpy_dir=kmem_mpy_dir)
    margin = request.config.getoption("--heap-margin")
    if margin:  # once per board reset: a test's later snippets keep the first one
        t.prelude = (f"if '_heap_margin' not in globals():\n"
                     f"    _heap_margin = bytearray({margin})\n") + t.prelude
    return t


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # Show the on-target traceback and the numbered script its line numbers refer to.
    err = call.excinfo.value if call.excinfo else None
    if isinstance(err, TargetError) and err.script:
        script = "\n".join(f"{n:4} {line}" for n, line in enumerate(err.script.splitlines(), 1))
        report.sections.append(("target traceback", err.traceback or str(err)))
        report.sections.append(("target script", script))
    return report
