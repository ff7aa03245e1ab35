"""make lint (README: Tests): ruff over the tree, pyright over the host code, and pyright over
firmware/ once per board profile against the micropython stubs its "stubs" key pins
(installed once into .venv/kmem-stubs/<profile>; typings/ first). All in parallel.

python -m kmemhost.lint [--only ruff|host|PROFILE ...]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import ROOT
from .profiles import list_profiles, load_profile

BIN = Path(sys.executable).parent
BUILD = ROOT / "build" / "lint"
STUBS = Path(sys.prefix) / "kmem-stubs"
STUBS_PYTHON = "3.10"  # the stubs' stdlib is typeshed's, cut down; any recent version will do
PIP_TIMEOUT = 600     # seconds to install one board's stubs
CHECK_TIMEOUT = 600   # seconds for all the checks


class LintError(Exception):
    pass


def ensure_stubs(profile, specs):
    """The directory holding `specs` (pip install --target), installed if not already."""
    dest = STUBS / profile
    marker = dest / ".kmem-specs"
    want = "\n".join(specs) + "\n"
    if marker.is_file() and marker.read_text() == want:
        return dest
    print(f"lint: installing the {profile} stubs: {' '.join(specs)}", flush=True)
    shutil.rmtree(dest, ignore_errors=True)  # the marker comes last: a broken install is redone
    # --no-deps: every package is pinned in the profile, micropython-stdlib-stubs too.
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--disable-pip-version-check", "--target", str(dest), *specs],
                         capture_output=True, text=True, timeout=PIP_TIMEOUT)
    if res.returncode:
        raise LintError(f"pip could not install the {profile} stubs:\n" + res.stdout + res.stderr)
    marker.write_text(want)
    return dest


def firmware_config(profile, stubs):
    """Write and return build/lint/<profile>/pyrightconfig.json."""
    d = BUILD / profile
    # An empty environment: CPython's packages must not resolve a firmware import.
    site = d / "env" / "lib" / f"python{STUBS_PYTHON}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    config = {
        "include": [str(ROOT / "firmware")],
        "typeshedPath": str(stubs),
        # typings/ first: its micropython.pyi shadows the board's (see its docstring);
        # firmware/ so that examples import kmem as on a board.
        "extraPaths": [str(ROOT / "typings"), str(ROOT / "firmware"), str(stubs)],
        "venvPath": str(d), "venv": "env", "pythonVersion": STUBS_PYTHON,
        # Standard mode, less what does not fit MicroPython code: the board stubs have no
        # source to find (machine, uctypes...), and the inlined blocks (and kheap, with `if
        # hardened:`) set a temporary under one condition and use it under one implying it.
        "typeCheckingMode": "standard",
        "reportMissingModuleSource": "none",
        "reportPossiblyUnboundVariable": "none",
    }
    path = d / "pyrightconfig.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def tool(name):
    path = BIN / name
    if not path.exists():
        raise LintError(f"{path} is missing: make lint installs requirements-lint.txt")
    return str(path)


def checks(only):
    """[(name, argv)] of the checks to run."""
    pyright = tool("basedpyright")
    out = [("ruff", [tool("ruff"), "check", "--no-cache", str(ROOT)]),
           ("host", [pyright, "-p", str(ROOT), "--pythonpath", sys.executable])]
    for profile in list_profiles():
        specs = load_profile(profile).get("stubs")  # pinned PyPI packages
        if specs and (not only or profile in only):
            config = firmware_config(profile, ensure_stubs(profile, list(specs)))
            out.append((profile, [pyright, "-p", str(config)]))
    return [(n, argv) for n, argv in out if not only or n in only]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kmemhost.lint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[],
                    help="run only this check: ruff, host or a board profile (repeatable)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        todo = checks(args.only)
    except (LintError, subprocess.TimeoutExpired) as e:
        print(f"lint: {e}", file=sys.stderr)
        return 2
    if not todo:
        print(f"lint: nothing to run for --only {' '.join(args.only)}", file=sys.stderr)
        return 2
    env = dict(os.environ, NO_COLOR="1")
    # Each check in its own process group: pyright's node child goes with it on a timeout.
    procs = [(name, argv, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True,
                                           start_new_session=True))
             for name, argv in todo]
    deadline, failed = time.monotonic() + CHECK_TIMEOUT, []
    try:
        for name, argv, p in procs:
            try:
                text, _ = p.communicate(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                text = p.communicate()[0] + f"\n(no result within {CHECK_TIMEOUT} s)"
            last = text.strip().rsplit("\n", 1)[-1]
            if p.returncode:
                failed.append(name)
                print(f"--- {name}: FAILED ({' '.join(argv)})\n{text.rstrip()}")
            else:
                print(f"{name}: {last}")
    finally:  # Ctrl-C, or an error: no check outlives lint
        for _, _, p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    took = time.monotonic() - t0
    if failed:
        print(f"lint: FAILED: {', '.join(failed)} ({took:.1f} s)", file=sys.stderr)
        return 1
    print(f"lint: all {len(procs)} checks passed ({took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
