"""Root conftest: the --target option, its validation and the report header.

They live here, not in host_tests/conftest.py (fixtures), because for
`pytest --target unix:rpi_pico` (no "=") pytest first takes "unix:rpi_pico" for a
test path, so host_tests/conftest.py would load too late to declare the option.
"""
import pytest

from kmemhost.profiles import ProfileError
from kmemhost.targets import make_target


def pytest_addoption(parser):
    parser.addoption("--target", default="unix",
                     help="where snippets run: unix[:PROFILE] (default unix), e.g. unix:rpi_pico")


def pytest_configure(config):
    # Fail once, up front, instead of erroring every test.
    try:
        make_target(config.getoption("--target"))
    except (ValueError, ProfileError, NotImplementedError) as e:
        raise pytest.UsageError(str(e))


def pytest_report_header(config):
    t = make_target(config.getoption("--target"))
    p = t.profile
    return (f"kmem target: {t.name} (board {p['board_id']}, heap {p['heap_size']} bytes, "
            f"arena {p['arena_size']} bytes)")
