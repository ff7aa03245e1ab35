"""kmemctl: one command line for kmem's board jobs (also `python -m kmemhost`).

kmemctl targets                      the board profiles, and the MicroPython boards plugged in
kmemctl map [--target T] [-o F]      the target's heap: a PNG or SVG (by F's suffix), or the
        [--width N] [-c CODE]        terminal; CODE runs first (on the unix port each call
        [--mm EXPR]                  is a fresh process: build the layout there); --mm: the
                                     address space EXPR names (mm_map(), or a PNG)
kmemctl test [--target T] [ARGS]     the test suite on a target (pytest ARGS)
kmemctl fuzz [--target T]            the long differential fuzz (make fuzz)
kmemctl repl [--target T]            a REPL with kmem (the unix port, or mpremote on a board)
kmemctl deploy|flash|bench|qemu|vboard ARGS
                                     the tools behind make deploy, make flash, make bench,
                                     make qemu, tools/vboard, with their own options (-h)
T is as for the test suite: unix[:PROFILE] (default), vboard[:PROFILE], qemu, port:DEVICE,
auto, id:SERIAL. A failure that has a cause (no board, port busy, kmem not deployed, the
toolchain missing) ends in one line saying so."""
import argparse
import os
import subprocess
import sys

from . import ROOT

TOOLS = ("deploy", "flash", "bench", "qemu", "vboard")


def _targets():
    from . import profiles, targets
    print("profiles (boards/*.json): " + ", ".join(profiles.list_profiles()))
    print("targets: unix[:PROFILE], vboard[:PROFILE], qemu, port:DEVICE, auto, id:SERIAL")
    ports = targets.micropython_ports()
    for port, profile in ports:
        print(f"board: {port.device} ({port.description}; profile {profile or 'unknown'})")
    if not ports:
        print("board: none plugged in")
    from .qemu import available
    why = available()
    print("qemu: " + (f"not available: {why}" if why else "can be built and run here"))
    return 0


def _map(args):
    from . import heapmap, targets
    target = targets.make_target(args.target)
    if args.mm:
        return _mm_map(args, target)
    try:
        pic = heapmap.fetch(target, (args.code or "") + "\n")
    finally:
        targets.close_all()
    if not args.output:
        for line in heapmap.text(pic, args.width, colour=sys.stdout.isatty()):
            print(line)
    elif args.output.endswith(".svg"):
        heapmap.svg(pic, args.output, args.width)
    else:
        try:
            heapmap.png(pic, args.output, args.width)
        except ImportError:
            raise SystemExit("kmemctl map: writing a PNG needs Pillow (make venv installs "
                             "it); an SVG does not: -o map.svg")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _mm_map(args, target):
    # An address space: the board's own mm_map() in the terminal, else a PNG of its bar.
    from . import heapmap, targets
    setup = (args.code or "") + "\n"
    try:
        if not args.output:
            print(target.exec(setup + "mm_map(%s, %d)\n" % (args.mm, args.width)), end="")
            return 0
        areas = heapmap.fetch_areas(target, args.mm, setup)
    finally:
        targets.close_all()
    heapmap.areas_png(areas, args.output, args.width)
    print(f"wrote {args.output}")
    return 0


def _pytest(target, extra, env=None):
    cmd = [sys.executable, "-m", "pytest", "--target", target, *extra]
    return subprocess.call(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})))


def _repl(target):
    if target.startswith("unix"):
        from . import run
        profile = target.partition(":")[2] or "unix"
        return run.main(["--profile", profile])
    from . import targets
    if target.startswith(("vboard", "qemu")):
        raise ValueError(f"start the board first (kmemctl {target.partition(':')[0]}), then "
                         "kmemctl repl --target port:PTY")
    device, _ = targets.resolve_port(target)
    return subprocess.call([sys.executable, "-m", "mpremote", "connect", device, "repl"])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:  # the tool parses its own options
        import importlib
        tool = importlib.import_module(f".{argv[0]}", __package__)
        rest = argv[1:] if argv[0] != "qemu" or argv[1:2] in (["build"], ["check"], ["run"]) \
            else ["run", *argv[1:]]
        return tool.main(rest) or 0
    ap = argparse.ArgumentParser(prog="kmemctl", description=__doc__.split("\n")[0],
                                 epilog="Also: " + ", ".join(TOOLS) + " (each with -h).")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("targets", help="board profiles, boards plugged in, whether qemu can run")
    m = sub.add_parser("map", help="the target's heap as a picture or in the terminal")
    t = sub.add_parser("test", help="the test suite on a target")
    f = sub.add_parser("fuzz", help="the long differential fuzz")
    r = sub.add_parser("repl", help="a REPL with kmem")
    for p in (m, t, f, r):
        p.add_argument("--target", default="unix", help="unix (default), vboard, qemu, port:DEVICE, ...")
    m.add_argument("-o", "--output", help="FILE.png or FILE.svg (default: the terminal)")
    m.add_argument("--width", type=int, default=64, help="cells per row (default 64)")
    m.add_argument("-c", "--code", help="MicroPython code to run on the target first")
    m.add_argument("--mm", metavar="EXPR", help="draw the address space EXPR names instead "
                   "(an mm_struct's address, or a name -c bound): mm_map() in the terminal, "
                   "or a PNG")
    args, extra = ap.parse_known_args(argv)
    if extra and args.command != "test":
        ap.error("unrecognized arguments: " + " ".join(extra))
    from .targets import TargetError, TargetTimeout, TargetUnavailable
    try:
        if args.command == "targets":
            return _targets()
        if args.command == "map":
            return _map(args)
        if args.command == "test":
            return _pytest(args.target, extra)
        if args.command == "fuzz":
            return _pytest(args.target, ["host_tests/test_fuzz.py", "-s", "-q"],
                           {"KMEM_FUZZ_LONG": "1"})
        return _repl(args.target)
    except (TargetError, TargetTimeout, TargetUnavailable, ValueError, OSError) as e:
        print(f"kmemctl {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
