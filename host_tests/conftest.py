"""Shared fixtures: `target` runs snippets on the board chosen by --target
(declared in ../conftest.py)."""
import pytest

from kmemhost import build
from kmemhost.targets import TargetError, make_target


@pytest.fixture(scope="session")
def kmem_mpy_dir():
    """firmware/kmem compiled to .mpy for the host once per session (dir for MICROPYPATH)."""
    return build.build_kmem(build.host_arch())


@pytest.fixture
def target(request, kmem_mpy_dir):
    """A Target whose snippets start with `import kmem; from kmem import *; init(arena_size)`."""
    return make_target(request.config.getoption("--target"), mpy_dir=kmem_mpy_dir)


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
