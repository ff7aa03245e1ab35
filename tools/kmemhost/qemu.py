"""The emulated RP2040-class board: MicroPython's qemu port under QEMU.

BOARD=MICROBIT is a Cortex-M0 (armv6m, the RP2040's instruction set and RAM base); its UART
is a pty that mpremote drives like a USB board. Numbers in boards/qemu_microbit.json, more in
README (The emulated board).

python -m kmemhost.qemu build [--src DIR|TARBALL]   build/qemu/firmware.elf and
    firmware-kmem.elf (kmem frozen in), from a copy of a MicroPython tree in build/qemu/src
python -m kmemhost.qemu check    why the board cannot be built here (exit 1), if it cannot
python -m kmemhost.qemu run [--frozen] [--romfs] [--pty-file PATH]   start it, print its pty

mpy-tool.py aligns frozen armv6m native code to 2 bytes, but armv6m viper code must start
4-byte aligned to read its constants right: the build fixes its copy of mpy-tool.py where
needed and checks the linked symbol table.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from . import ROOT, build
from .profiles import load_profile

PROFILE = "qemu_microbit"
OUT = build.BUILD / "qemu"
FIRMWARES = {False: OUT / "firmware.elf", True: OUT / "firmware-kmem.elf"}
SHARED_SOURCES = ROOT.parent / "shared" / "micropython"
APT_LINE = ("sudo apt-get install -y --no-install-recommends gcc-arm-none-eabi "
            "libnewlib-arm-none-eabi qemu-system-arm")
BUILD_TIMEOUT = 900  # seconds for one make; a cold build takes about 30 s
START_TIMEOUT = 10   # seconds for QEMU to report its pty


class QemuError(RuntimeError):
    """The emulated board cannot be built or started; the message says what to do."""


def missing_tools(*tools):
    return [t for t in tools if not shutil.which(t)]


def require_tools(*tools):
    missing = missing_tools(*tools)
    if missing:
        raise QemuError(f"{', '.join(missing)} not found; install the toolchain: {APT_LINE}")


def default_source():
    """$MICROPYTHON_SRC, else the tarball in ../shared/micropython, else None."""
    if os.environ.get("MICROPYTHON_SRC"):
        return Path(os.environ["MICROPYTHON_SRC"]).expanduser()
    tarballs = sorted(SHARED_SOURCES.glob("*.tar.gz"))
    return tarballs[-1] if tarballs else None


def available():
    """Why the qemu board cannot be built here (toolchain or source missing), or None."""
    missing = missing_tools("arm-none-eabi-gcc", "arm-none-eabi-nm", "qemu-system-arm")
    if missing:
        return f"{', '.join(missing)} not found ({APT_LINE})"
    src = default_source()
    if src is None:
        return "no MicroPython source (set MICROPYTHON_SRC to a checkout or .tar.gz)"
    if not src.exists():
        return f"MICROPYTHON_SRC={src} does not exist"
    return None


# --- the source tree, copied into build/qemu/src ---------------------------------------------

def _copy_ignore(directory, names):
    # Skip git metadata, build outputs and git submodules (a .git entry below the top):
    # the qemu port needs none of them, and a full checkout's submodules are gigabytes.
    skip = {n for n in names if n == ".git" or n.startswith("build")}
    for n in names:
        if n not in skip and os.path.exists(os.path.join(directory, n, ".git")):
            skip.add(n)
    return skip


def prepare_source(src, log=print):
    """Unpack or copy the MicroPython tree `src` into build/qemu/src; return its top dir.
    Another source than last time starts afresh, builds included (copies keep their mtimes,
    which make would not see as newer than the old objects)."""
    src = Path(src).expanduser().resolve()
    dest = OUT / "src"
    stamp = dest / ".source"
    not_a_tree = QemuError(f"MICROPYTHON_SRC={src}: expected a MicroPython checkout or a "
                           ".tar.gz of one (with ports/qemu/Makefile)")
    if src.is_dir():
        if not (src / "ports" / "qemu" / "Makefile").is_file():
            raise not_a_tree
        identity = str(src)
    elif src.is_file() and src.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(src) as tar:
            first = tar.next()
            topname = first.name.split("/")[0] if first else ""
            try:
                tar.getmember(f"{topname}/ports/qemu/Makefile")
            except KeyError:
                raise not_a_tree from None
        identity = f"{src} {src.stat().st_size} {src.stat().st_mtime_ns}"
    else:
        raise not_a_tree
    fresh = not (stamp.is_file() and stamp.read_text() == identity)
    if fresh:
        for old in (dest, OUT / "build-plain", OUT / "build-kmem"):
            shutil.rmtree(old, ignore_errors=True)
        dest.mkdir(parents=True)
    if src.is_dir():
        top = dest / "micropython"
        log(f"copying {src} into {top} (without .git, submodules and build directories)")
        # A fresh copy each time (files deleted in the user's tree go too); copy2 keeps
        # mtimes, so make rebuilds only what changed there.
        shutil.rmtree(top, ignore_errors=True)
        shutil.copytree(src, top, ignore=_copy_ignore, copy_function=shutil.copy2)
    else:
        top = dest / topname
        if fresh:
            log(f"unpacking {src.name} into {dest}")
            with tarfile.open(src) as tar:
                tar.extractall(dest, filter="data")
    stamp.write_text(identity)
    return top


# The tuple of arches mpy-tool aligns to 4 bytes, e.g. (MP_NATIVE_ARCH_ARMV6, ..., XTENSAWIN).
_FOUR_BYTE_ARCHES = re.compile(r"if config\.native_arch in \(\s*MP_NATIVE_ARCH_ARMV6,(?P<rest>[^)]*)\)")


def fix_mpy_tool(top, log=print):
    """Make tools/mpy-tool.py (in the copy) align frozen armv6m native code to 4 bytes.
    Returns "present", "applied" or "not found" (the symbol check still guards the build)."""
    path = top / "tools" / "mpy-tool.py"
    text = path.read_text()
    m = _FOUR_BYTE_ARCHES.search(text)
    if m is None:
        log("note: tools/mpy-tool.py has an unfamiliar shape; the alignment fix was not applied "
            "(the symbol check below still catches misaligned kmem code)")
        return "not found"
    if "MP_NATIVE_ARCH_ARMV6M" in m.group("rest"):
        return "present"
    at = m.start("rest")
    path.write_text(text[:at] + "\n            MP_NATIVE_ARCH_ARMV6M," + text[at:])
    log("note: this MicroPython's tools/mpy-tool.py aligns frozen armv6m native code to 2 bytes; "
        "applied the fix to the copy in build/qemu/src (MP_NATIVE_ARCH_ARMV6M added to the "
        "arches aligned to 4 bytes)")
    return "applied"


def misaligned_native_functions(elf, frozen_c):
    """[(symbol, address)] of kmem's frozen native functions not on a 4-byte boundary: names
    from mpy-tool's output (only native code has a section attribute), addresses from nm."""
    native = set(re.findall(r"static const byte (fun_data_kmem\w*)\[\d+\] __attribute__\(\(section",
                            Path(frozen_c).read_text()))
    if not native:
        raise QemuError(f"{frozen_c}: no frozen kmem native code (was kmem frozen with "
                        "-march=armv6m?)")
    try:
        out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        raise QemuError(f"arm-none-eabi-nm {elf} failed: {e}") from None
    addresses = {parts[2]: int(parts[0], 16) for parts in map(str.split, out.splitlines())
                 if len(parts) == 3 and parts[2] in native}
    if set(addresses) != native:
        raise QemuError(f"{elf}: {len(native - set(addresses))} of kmem's native functions are "
                        "missing from the symbol table")
    return sorted((name, a) for name, a in addresses.items() if a % 4)


def _make(args, log):
    cmd = ["make", f"-j{os.cpu_count() or 2}", *args]
    log("$ " + " ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise QemuError(f"make did not finish within {BUILD_TIMEOUT}s: {' '.join(cmd)}") from None
    if res.returncode:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-25:])
        raise QemuError(f"make failed ({' '.join(cmd)}):\n{tail}")


def build_firmware(src=None, log=print):
    """Build both firmwares into build/qemu/ and check the frozen one; return their paths."""
    require_tools("arm-none-eabi-gcc", "arm-none-eabi-nm", "make")
    src = src or default_source()
    if src is None:
        raise QemuError("no MicroPython source: make qemu-firmware MICROPYTHON_SRC=DIR "
                        "(a MicroPython checkout, v1.28 or later) or MICROPYTHON_SRC=FILE.tar.gz")
    top = prepare_source(src, log)
    fix_mpy_tool(top, log)
    profile = load_profile(PROFILE)
    qemu = profile["qemu"]
    port = top / "ports" / "qemu"
    # The native emitter on (the stock MICROBIT build has it off), the profile's heap, and a
    # ROMFS partition in flash where QemuBoard loads kmem's image.
    settings = [f"MICROPY_HEAP_SIZE={profile['heap_size']}",
                f"MICROPY_HW_ROMFS_PART0_START={qemu['romfs_start']}",
                f"MICROPY_HW_ROMFS_PART0_SIZE={qemu['romfs_size']}", *qemu["make_args"]]
    _make(["-C", str(top / "mpy-cross")], log)
    # kmem frozen through boards/manifest.py; the qemu port has no manifest of its own.
    manifest = OUT / "manifest.py"
    manifest.write_text(f"include({str(ROOT / 'boards' / 'manifest.py')!r}, port_manifest=False)\n")
    # The port insists on micropython-lib for any frozen manifest; kmem needs none of it,
    # and a fresh checkout or the tarball has the submodule empty.
    no_lib = OUT / "no-micropython-lib"
    no_lib.mkdir(exist_ok=True)
    (no_lib / "README.md").write_text("kmem's frozen build uses nothing from micropython-lib.\n")
    for frozen, elf in FIRMWARES.items():
        builddir = OUT / ("build-kmem" if frozen else "build-plain")
        # make does not see a change to mpy-tool.py; regenerating this file is cheap.
        (builddir / "frozen_content.c").unlink(missing_ok=True)
        _make(["-C", str(port), f"BOARD={qemu['board']}", f"BUILD={builddir}",
               f"FROZEN_MANIFEST={manifest if frozen else ''}", f"MPY_LIB_DIR={no_lib}",
               *settings], log)
        shutil.copy2(builddir / "firmware.elf", elf)
    bad = misaligned_native_functions(FIRMWARES[True], OUT / "build-kmem" / "frozen_content.c")
    if bad:
        listed = ", ".join(f"{name} at 0x{addr:08x}" for name, addr in bad[:5])
        raise QemuError(f"{FIRMWARES[True]}: {len(bad)} frozen kmem native function(s) are not "
                        f"4-byte aligned ({listed}); armv6m viper code would read wrong "
                        "constants. tools/mpy-tool.py needs MP_NATIVE_ARCH_ARMV6M among the "
                        "arches aligned to 4 bytes")
    for elf in FIRMWARES.values():
        log(f"built {elf.relative_to(ROOT)}")
    return dict(FIRMWARES)


# --- running the board -----------------------------------------------------------------------

def romfs_image(arch="armv6m"):
    """build/qemu/kmem-romfs.img: kmem's .mpy for `arch` under /kmem."""
    data = build.romfs_image(build.package_files(build.build_kmem(arch), "*.mpy"))
    room = int(load_profile(PROFILE)["qemu"]["romfs_size"], 0)
    if len(data) > room:
        raise QemuError(f"kmem's ROMFS image is {len(data)} bytes; the board's partition holds "
                        f"{room} (romfs_size in boards/{PROFILE}.json)")
    image = OUT / "kmem-romfs.img"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(data)
    return image


def _die_with_parent():
    """A preexec_fn so that Linux kills QEMU when the thread that started it ends (even by
    SIGKILL): no emulated board outlives a killed test run. prctl is looked up before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    PR_SET_PDEATHSIG = 1
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class QemuBoard:
    """One qemu-system-arm process with the UART on a pty; stop() kills it by its PID."""

    def __init__(self, frozen=False, romfs=None, log=None, icount=None):
        # icount: QEMU's -icount shift (virtual time = 2**shift ns per instruction), so that
        # timings do not depend on how busy the host is (make bench).
        self.frozen, self.romfs, self.icount = frozen, romfs, icount
        # One log per process: two runs side by side must not read each other's pty.
        self.log = Path(log or OUT / f"qemu-{os.getpid()}.log")
        self.proc = None
        self.pty = None

    def command(self):
        qemu = load_profile(PROFILE)["qemu"]
        firmware = FIRMWARES[self.frozen]
        if not firmware.is_file():
            raise QemuError(f"{firmware.relative_to(ROOT)} not built; run `make qemu-firmware`")
        cmd = ["qemu-system-arm", *qemu["args"], "-nographic", "-monitor", "null",
               "-serial", "pty", "-kernel", str(firmware)]
        if self.icount is not None:
            cmd += ["-icount", f"shift={self.icount}"]
        if self.romfs:
            cmd += ["-device", f"loader,file={self.romfs},addr={qemu['romfs_start']},force-raw=on"]
        return cmd

    def start(self, timeout=START_TIMEOUT):
        """Start QEMU; return the pty device once QEMU has reported it."""
        require_tools("qemu-system-arm")
        cmd = self.command()
        # QEMU's messages go to a file (a pipe nobody drains could fill and stall it); its
        # own session keeps a Ctrl-C meant for pytest from reaching it first.
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent())
        deadline, text = time.monotonic() + timeout, b""
        try:
            while time.monotonic() < deadline:
                text = self.log.read_bytes()
                m = re.search(rb"char device redirected to (\S+)", text)
                if m:
                    self.pty = m.group(1).decode()
                    return self.pty
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        except BaseException:  # Ctrl-C while waiting: QEMU must not outlive us
            self.stop()
            raise
        self.stop()
        raise QemuError(f"QEMU did not report its pty within {timeout}s: "
                        f"{text.decode(errors='replace').strip() or 'no output'} ({' '.join(cmd)})")

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=5)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kmemhost.qemu", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build build/qemu/firmware.elf and firmware-kmem.elf")
    b.add_argument("--src", help="MicroPython checkout or .tar.gz (default $MICROPYTHON_SRC, "
                                 "else ../shared/micropython/*.tar.gz)")
    sub.add_parser("check", help="say why the board cannot be built here, if it cannot")
    r = sub.add_parser("run", help="start the emulated board and print its pty")
    r.add_argument("--frozen", action="store_true", help="the firmware with kmem frozen in")
    r.add_argument("--romfs", action="store_true", help="load kmem as a ROMFS image (/rom/kmem)")
    r.add_argument("--pty-file", help="also write the pty path here (removed on exit)")
    args = ap.parse_args(argv)
    try:
        if args.command == "build":
            build_firmware(args.src)
            return 0
        if args.command == "check":
            why = available()
            print(why or "ok: toolchain and MicroPython source found")
            return 1 if why else 0
        board = QemuBoard(args.frozen, romfs_image() if args.romfs else None)
        if not (args.frozen or args.romfs):
            build.build_kmem("armv6m")  # what the hint below mounts
    except (QemuError, build.BuildError) as e:
        print(f"qemu: {e}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop QEMU when stopped by a signal too
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        pty = board.start()
        if args.pty_file:
            Path(args.pty_file).parent.mkdir(parents=True, exist_ok=True)
            Path(args.pty_file).write_text(pty + "\n")
        print(pty, flush=True)
        kmem = "" if args.frozen or args.romfs else " (for kmem: mount build/armv6m repl)"
        print(f"QEMU pid {board.proc.pid}; in another terminal: .venv/bin/mpremote connect "
              f"{pty} repl{kmem}; Ctrl-C stops it", file=sys.stderr, flush=True)
        board.proc.wait()
    except QemuError as e:
        print(f"qemu: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
        if args.pty_file:
            Path(args.pty_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
