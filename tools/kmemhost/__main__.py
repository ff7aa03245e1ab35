"""kmemctl: one command line for kmem's board jobs (also `python -m kmemhost`).

README.md ("Command line: kmemctl") describes each command. A failure that has a cause (no
board, port busy, kmem not deployed, the toolchain missing) ends in one line."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

from . import ROOT

TOOLS = ("deploy", "flash", "bench", "qemu", "vboard")


def _targets():
    from . import profiles, qemu, targets
    print("profiles (boards/*.json): " + ", ".join(profiles.list_profiles()))
    print("targets: unix[:PROFILE], vboard[:PROFILE], qemu, port:DEVICE, auto, id:SERIAL")
    ports = targets.micropython_ports()
    for port, profile in ports:
        print(f"board: {port.device} ({port.description}; profile {profile or 'unknown'})")
    if not ports:
        print("board: none plugged in")
    why = qemu.available()
    print("qemu: " + (f"not available: {why}" if why else "can be built and run here"))
    return 0


def _target(args, **kwargs):
    from . import targets
    return targets.make_target(args.target, deploy=args.deploy, board=args.board, **kwargs)


def _map(args):
    from . import heapmap, targets
    target = _target(args)
    setup = (args.code or "") + "\n" + (Path(args.run).read_text() + "\n" if args.run else "")
    try:
        if args.watch:
            return _watch(args, target, setup)
        if args.mm and not args.output:  # the board's own mm_map()
            print(target.exec(setup + "mm_map(%s, %d)\n" % (args.mm, args.width)), end="")
            return 0
        if args.mm:
            heapmap.areas_png(heapmap.fetch_areas(target, args.mm, setup), args.output, args.width)
        else:
            _draw(args, heapmap.fetch(target, setup))
    finally:
        targets.close_all()
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _draw(args, pic, path=None):
    from . import heapmap
    if not args.output:
        print("\n".join(heapmap.text(pic, args.width, colour=sys.stdout.isatty())))
    elif args.output.endswith(".svg"):
        heapmap.svg(pic, path or args.output, args.width)
    else:
        try:
            heapmap.png(pic, path or args.output, args.width)
        except ImportError:
            raise SystemExit("kmemctl map: writing a PNG needs Pillow (make venv installs "
                             "it); an SVG does not: -o map.svg") from None


def _watch(args, target, program):
    # Each picture replaces the last: the terminal is cleared (when it is one) and the file
    # is rewritten whole (renamed into place, so a viewer never reads half a picture).
    from collections import deque

    from . import heapmap
    said, frames = deque(maxlen=5), [0]
    tty = sys.stdout.isatty() and not args.output

    def show(pic):
        frames[0] += 1
        if args.output:
            root, ext = os.path.splitext(args.output)
            _draw(args, pic, root + ".part" + ext)
            os.replace(root + ".part" + ext, args.output)
            print(f"picture {frames[0]}: wrote {args.output} ({pic.figures()})", flush=True)
            return
        print("\x1b[H\x1b[2J" if tty else f"-- picture {frames[0]}", flush=True)
        _draw(args, pic)
        if tty:
            print("\n".join(said), flush=True)

    def output(line):
        said.append(line)
        if not tty:
            print(line, flush=True)

    heapmap.watch(target, program, show, output, args.interval, args.timeout)
    return 0


def _pytest(args, extra, env=None):
    cmd = [sys.executable, "-m", "pytest", "--target", args.target, *extra]
    cmd += ["--deploy", args.deploy] if args.deploy else []
    cmd += ["--board", args.board] if args.board else []
    return subprocess.call(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})))


def _repl(args):
    from . import targets
    if args.target.startswith("unix"):
        from . import run
        return run.main(["--profile", args.target.partition(":")[2] or "unix"])
    target = _target(args)
    try:
        board = target.board
        if isinstance(board, targets.LocalBoard):  # start it, deploy, leave it running
            target.probe()
            print(f"{board.name}: up, kmem deployed ({board.log[-1] if board.log else ''}); "
                  "Ctrl-] or Ctrl-X leaves and stops it", flush=True)
            targets.SerialBoard.close(board)  # the port only: mpremote takes it over
        return subprocess.call([sys.executable, "-m", "mpremote", "connect", board._device(),
                                "repl"])
    finally:
        targets.close_all()


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
        p.add_argument("--target", default="unix", help="unix[:PROFILE] (default), "
                       "vboard[:PROFILE], qemu, port:DEVICE, auto, id:SERIAL")
        p.add_argument("--deploy", help="how kmem gets on a board: flash, ram, mount, romfs, frozen")
        p.add_argument("--board", help="the profile of a board its USB id does not name")
    m.add_argument("-o", "--output", help="FILE.png or FILE.svg (default: the terminal)")
    m.add_argument("--width", type=int, default=64, help="cells per row (default 64)")
    m.add_argument("-c", "--code", help="MicroPython code to run on the target first")
    m.add_argument("--run", metavar="FILE", help="a MicroPython file to run there first (after -c)")
    m.add_argument("--mm", metavar="EXPR", help="an address space instead (EXPR: its address, or "
                   "a name -c bound): mm_map() in the terminal, or a PNG")
    m.add_argument("--watch", action="store_true", help="redraw while -c / --run runs (kmem's "
                   "calls are wrapped: the program needs nothing)")
    m.add_argument("--interval", type=int, default=200, metavar="MS", help="--watch: at most "
                   "one picture per MS milliseconds (default 200; 0: after every call)")
    m.add_argument("--timeout", type=float, default=600, help="--watch: seconds (default 600)")
    f.add_argument("--examples", type=int, help="sequences to run (default: the long run's)")
    args, extra = ap.parse_known_args(argv)
    if extra and args.command != "test":
        ap.error("unrecognized arguments: " + " ".join(extra))
    from .build import BuildError
    from .profiles import ProfileError
    from .targets import TargetError  # TargetTimeout and TargetUnavailable are OSErrors
    try:
        if args.command == "targets":
            return _targets()
        if args.command == "map":
            return _map(args)
        if args.command == "test":
            return _pytest(args, extra)
        if args.command == "fuzz":
            env = {"KMEM_FUZZ_LONG": "1"}
            env.update({"KMEM_FUZZ_EXAMPLES": str(args.examples)} if args.examples else {})
            return _pytest(args, ["host_tests/test_fuzz.py", "-s", "-q"], env)
        return _repl(args)
    except (TargetError, ProfileError, BuildError, ValueError, OSError) as e:
        print(f"kmemctl {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kmemctl {args.command}: stopped (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
