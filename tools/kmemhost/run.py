"""Run a script (or the REPL) on the unix port with kmem importable from .mpy.

python -m kmemhost.run [--profile NAME] [SCRIPT [ARGS...]]
"""
import argparse
import os
import sys

from . import build
from .profiles import ProfileError, load_profile
from .targets import find_micropython


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kmemhost.run", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="unix", help="board profile giving the heap size (default unix)")
    ap.add_argument("script", nargs=argparse.REMAINDER, help="script and its args; none for the REPL")
    args = ap.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        mpy_dir = build.build_kmem(build.host_arch())
        micropython = find_micropython()
    except (ProfileError, build.BuildError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    cmd = [micropython, "-X", f"heapsize={profile['heap_size']}", *args.script]
    # exec, not subprocess: the REPL needs the terminal and Ctrl-C to itself.
    os.execve(micropython, cmd, dict(os.environ, MICROPYPATH=str(mpy_dir)))


if __name__ == "__main__":
    main()
