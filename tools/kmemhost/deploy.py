"""Put kmem on a MicroPython board (make deploy, kmemctl deploy; the test harness too).

Through mpremote's transport calls; README.md ("Put kmem on it") describes the modes and the
.mpy/.py choice. After copying, `import kmem` on the board checks that it loads from where it
was put (a frozen kmem or a /kmem on the filesystem would shadow <lib>/kmem).
"""
import argparse
import base64
import errno
import hashlib
import os
import sys
from pathlib import PurePosixPath

from . import build
from .profiles import ProfileError
from .targets import (DEFAULT_TIMEOUT, DEPLOY_MODES, MPY_ARCHES, LocalBoard, TargetError,
                      TargetTimeout, TargetUnavailable, UnixTarget, close_all, make_target)

PACKAGE = "kmem"
CHUNK = 768            # bytes per write call (mpremote's fs_writefile: a bytes literal of
                       # up to 3 KiB; ram's romfs image: 1 KiB of base64)
CHUNKS_PER_EXEC = 4    # romfs image writes per raw-REPL exec (~4 KiB of source to compile)
RAM_MOUNT = "/ram"
RAM_BLOCK = 512
RAM_FS = "auto"        # ram mode: "romfs" where the firmware has vfs.VfsRom, else "littlefs"
MOUNT_POINT = "/remote"  # mpremote's fixed mount point
ROMFS_MOUNT = "/rom"     # where firmware mounts ROMFS partition 0
FROZEN = ".frozen"       # sys.path entry of frozen modules


class DeployError(Exception):
    pass


def mpy_header(data):
    """(version, sub-version, arch index) from a .mpy file's first bytes."""
    if len(data) < 4 or data[:1] != b"M":
        raise DeployError("not a .mpy file")
    return data[1], data[2] & 3, data[2] >> 2


def local_files(kind, arch=None):
    """(host dir to mount, {"kmem/name": bytes}) for kind "mpy" (built for arch) or "py"."""
    top = build.build_kmem(arch) if kind == "mpy" else build.FIRMWARE
    if not (files := build.package_files(top, f"*.{kind}", PACKAGE)):
        raise DeployError(f"no *.{kind} files under {top / PACKAGE}")
    return top, files


def choose(info, profile, arch=None, py=False):
    """Decide what to deploy for the probed board: (kind "mpy"|"py", arch, files, host dir, notes)."""
    notes = []
    want = profile.get("mpy_arch")
    if want and info.arch and want != info.arch:
        notes.append(f"profile {profile['name']} says arch {want}, but the board reports "
                     f"{info.arch}; compiling for {info.arch}, since .mpy native code must match "
                     f"the board it runs on")

    def py_sources(why):
        top, files = local_files("py")
        return "py", None, files, top, notes + [f"{why}: deploying the .py sources instead"]

    if py:
        return py_sources("asked for .py (--py)")
    if not info.mpy_version:
        return py_sources("the board reports no .mpy support (no sys.implementation._mpy)")
    if arch and arch != info.arch:
        return py_sources(f".mpy files compiled for {arch} cannot load on a board reporting "
                          f"arch {info.arch or 'none'}")
    if info.arch is None:
        return py_sources("the board has no native code emitter (arch none), and kmem's .mpy "
                          "files hold native code")
    if info.arch not in MPY_ARCHES:
        return py_sources(f"the board reports an arch unknown to this tool ({info.arch})")
    try:
        top, files = local_files("mpy", info.arch)
    except build.BuildError as e:
        return py_sources(f"mpy-cross failed for {info.arch}: {e}")
    for name, data in files.items():
        header = version, sub, _ = mpy_header(data)
        if not mpy_loads(header, info):
            return py_sources(f"the board loads .mpy v{info.mpy} but mpy-cross emits "
                              f"v{version}.{sub} ({name})")
    return "mpy", info.arch, files, top, notes


def mpy_loads(header, info):
    """Would the board load a .mpy with this (version, sub-version, arch index) header?
    As MicroPython's loader checks: the version always; sub-version and arch only for
    files holding native code (bytecode-only files have both 0)."""
    version, sub, arch = header
    native_fits = arch == 0 or (sub == info.mpy_sub and arch == info.arch_index)
    return version == info.mpy_version and native_fits


class Deployment:
    """Where and how kmem was put on a board; after_reset() redoes what a reset undoes."""

    def __init__(self, mode, kind, arch, files, host_dir, package_parent, notes):
        self.mode, self.kind, self.arch = mode, kind, arch
        self.files, self.host_dir = files, host_dir
        self.package_parent = package_parent  # the sys.path entry holding kmem/ on the board
        self.notes = list(notes)
        self.copied, self.removed, self.unchanged = [], [], []
        self.imported_from = None
        self.ram_fs = None          # ram mode: "romfs" or "littlefs"
        self.progress = lambda message: None  # told each file as it is checked or copied

    @property
    def root(self):
        return f"{self.package_parent}/{PACKAGE}"

    @property
    def local(self):
        """The files as named in root: {"tlsf.mpy": bytes}."""
        return {name[len(PACKAGE) + 1:]: data for name, data in self.files.items()}

    def after_reset(self, board):
        """A soft reset unmounts /remote and empties RAM: set them up again."""
        if self.mode == "mount":
            _mount(board, self)
        elif self.mode == "ram":  # into a fresh record: this one keeps what the deploy did
            _ram(board, Deployment(self.mode, self.kind, self.arch, self.files, self.host_dir,
                                   self.package_parent, ()))

    def summary(self):
        what = f".mpy ({self.arch})" if self.kind == "mpy" else ".py sources"
        if self.mode == "frozen":
            return f"kmem frozen into the firmware (imported as {self.imported_from}; nothing copied)"
        if self.mode == "romfs":
            return f"kmem -> {self.root} as {what} in the board's ROMFS image (checked, nothing copied)"
        if self.mode == "mount":
            return f"kmem -> {self.root} as {what}, mounted from {self.host_dir} (nothing copied)"
        names = lambda xs: f" ({', '.join(xs)})" if xs else ""  # noqa: E731
        mode = f"ram, {self.ram_fs}" if self.ram_fs else self.mode
        return (f"kmem -> {self.root} as {what} [{mode}]: copied {len(self.copied)}"
                f"{names(self.copied)}, unchanged {len(self.unchanged)}, "
                f"removed {len(self.removed)}{names(self.removed)}")

    def messages(self):
        return [f"note: {n}" for n in self.notes] + [self.summary()]


def lib_dir(info):
    """The first sys.path entry ending in /lib (not /rom...), as mip picks it."""
    for p in info.path:
        if p.endswith("/lib") and not p.startswith("/rom"):
            return p
    raise DeployError(f"the board's sys.path has no .../lib directory ({info.path}); "
                      "use --deploy ram or --deploy mount")


# --- on-board snippets --------------------------------------------------------------------

_VFS = "try:\n import vfs\nexcept ImportError:\n import os as vfs\n"  # older firmware: os
_HAS_ROMFS = _VFS + "print(hasattr(vfs, 'VfsRom'))\n"
_ON_PATH = "import sys\nif {mount!r} not in sys.path:\n sys.path.insert(0, {mount!r})\n"
# At RAM_MOUNT: what is mounted there unmounted, `make` run, `fs` mounted and put first on sys.path.
_REMOUNT = _VFS + "try:\n vfs.umount({mount!r})\nexcept OSError:\n pass\n{make}" \
    "vfs.mount({fs}, {mount!r})\n" + _ON_PATH
_RAM_DISK = """\
class __KmemRAMDisk:
 def __init__(self, blocks):
  self.n = blocks
  self.m = memoryview(bytearray(blocks * {bs}))
 def readblocks(self, block, buf, offset=0):
  a = block * {bs} + offset
  buf[:] = self.m[a:a + len(buf)]
 def writeblocks(self, block, buf, offset=0):
  a = block * {bs} + offset
  self.m[a:a + len(buf)] = buf
 def ioctl(self, op, arg):
  if op == 4: return self.n
  if op == 5: return {bs}
  if op == 6: return 0
__kmem_disk = __KmemRAMDisk({blocks})
vfs.VfsLfs2.mkfs(__kmem_disk)
"""
_IMPORT_CHECK = """\
import sys
for __kmem_m in [m for m in sys.modules if m == 'kmem' or m.startswith('kmem.')]:
 del sys.modules[__kmem_m]
import kmem
print(kmem.__file__)
"""


def _fs(board, call, path, *args, ok=()):
    """mpremote's transport.fs_<call>(path, *args) within a step's deadline. An OSError the
    board raised for `path` (as mpremote reports them) is a one-line DeployError, or None
    when its errno is in `ok`."""
    with board.step(board.timeout):
        try:
            return getattr(board.transport, "fs_" + call)(path, *args)
        except OSError as e:
            if e.strerror != path:  # not the board's (a serial error): the step reports it
                raise
            if e.errno in ok:
                return None
            raise DeployError(f"{call} {path} on the board failed: "
                              f"{errno.errorcode.get(e.errno or 0, e)}") from None


def _listing(board, d, rel=""):
    """The files under d on the board, relative to d (none when d does not exist)."""
    out = []
    for e in _fs(board, "listdir", d, ok=(errno.ENOENT,)) or ():
        if e.st_mode & 0x4000:
            out += _listing(board, f"{d}/{e.name}", f"{rel}{e.name}/")
        else:
            out.append(rel + e.name)
    return out


def _same(board, path, data):
    """Does the board's file hold `data`? sha256 on the board, as `mpremote fs cp` checks
    (mpremote reads the file back to hash it where the board has no hashlib.sha256)."""
    return _fs(board, "hashfile", path, "sha256") == hashlib.sha256(data).digest()


def _sync(board, d):
    """Make d.root hold exactly d.files, as `mpremote fs cp` copies: a file only when its
    sha256 differs; files there not in d.files are removed."""
    remote, local, made = _listing(board, d.root), d.local, set()
    for i, (n, data) in enumerate(sorted(local.items()), 1):
        path = f"{d.root}/{n}"
        if n in remote and _same(board, path, data):
            d.unchanged.append(n)
            continue
        d.progress(f"  [{i}/{len(local)}] {path} ({len(data)} bytes)")
        for parent in map(str, reversed(PurePosixPath(path).parents[:-1])):  # not "/"
            if parent not in made:
                _fs(board, "mkdir", parent, ok=(errno.EEXIST,))
                made.add(parent)
        _fs(board, "writefile", path, data, CHUNK)
        d.copied.append(n)
    d.removed = sorted(set(remote) - set(local))
    for n in d.removed:
        _fs(board, "rmfile", f"{d.root}/{n}")


def _ram(board, d):
    """kmem on a RAM filesystem at /ram: a read-only romfs image (vfs.VfsRom, ~ the files'
    size; .mpy bytecode runs in place) where the firmware has it, else a littlefs RAM disk
    (each file's blocks and one more, plus littlefs's superblock and directory pairs and
    room to compact them: 8 blocks). RAM_FS forces one ("romfs" / "littlefs")."""
    d.ram_fs = RAM_FS if RAM_FS != "auto" else \
        "romfs" if board.exec(_HAS_ROMFS).strip().endswith("True") else "littlefs"
    if d.ram_fs == "littlefs":
        blocks = sum(-(-len(data) // RAM_BLOCK) + 1 for data in d.files.values())
        disk = _RAM_DISK.format(bs=RAM_BLOCK, blocks=blocks + 8)
        board.exec(_REMOUNT.format(mount=RAM_MOUNT, make=disk, fs="vfs.VfsLfs2(__kmem_disk)"))
        return _sync(board, d)
    image = build.romfs_image(d.files)
    board.exec(f"import binascii\n__kmem_img = bytearray({len(image)})")
    chunks = [(i, base64.b64encode(image[i:i + CHUNK]).decode())
              for i in range(0, len(image), CHUNK)]
    for k in range(0, len(chunks), CHUNKS_PER_EXEC):
        d.progress(f"  [{k * CHUNK}/{len(image)} bytes] {RAM_MOUNT} image")
        board.exec("\n".join(f"__kmem_img[{i}:{i + CHUNK}] = binascii.a2b_base64({c!r})"
                              for i, c in chunks[k:k + CHUNKS_PER_EXEC]))
    board.exec(_REMOUNT.format(mount=RAM_MOUNT, make="", fs="vfs.VfsRom(__kmem_img)"))
    d.copied = sorted(d.local)


def _mount(board, d):
    with board.step(board.timeout):
        board.transport.mount_local(str(d.host_dir))
    board.exec(_ON_PATH.format(mount=MOUNT_POINT))


def _check_romfs(board, d):
    remote, local = _listing(board, d.root), d.local
    if not remote:
        raise DeployError(f"the board has no {d.root}: no ROMFS image with kmem is mounted "
                          f"(on a board: mpremote romfs deploy DIR, DIR holding kmem/)")
    wrong = sorted(set(local).symmetric_difference(remote)
                   | {n for n in local if n in remote and not _same(board, f"{d.root}/{n}", local[n])})
    if wrong:
        raise DeployError(f"the ROMFS image at {d.root} does not hold this build of kmem "
                          f"(differs: {', '.join(wrong)}); rebuild and load it again")
    d.unchanged = sorted(local)


def _check_import(board, d):
    try:
        out = board.exec(_IMPORT_CHECK)
    except TargetError as e:
        where = "the firmware" if d.mode == "frozen" else d.root
        raise DeployError(f"kmem should be in {where} but `import kmem` fails on the board: {e}") from e
    d.imported_from = path = (out.strip().splitlines() or [""])[-1]
    if d.mode == "frozen":
        if path.startswith("/"):  # frozen modules report a relative __file__ (kmem/__init__.py)
            raise DeployError(f"--deploy frozen, but `import kmem` loads {path} from the "
                              "filesystem: this firmware has no kmem frozen in, or a kmem "
                              "on the filesystem shadows it")
    elif not path.startswith(d.root + "/"):
        raise DeployError(
            f"`import kmem` on the board loads {path}, not the deployed {d.root}: a kmem earlier "
            f"on sys.path shadows it (frozen into the firmware, or a kmem/ in the current "
            f"directory); remove it, e.g. `mpremote rm -r :kmem`")
    elif not path.endswith(ext := ".mpy" if d.kind == "mpy" else ".py"):
        raise DeployError(f"`import kmem` on the board loads {path}, expected a {ext} file")


def deploy(board, mode="flash", arch=None, py=False, info=None, log=None):
    """Put kmem on `board` (a SerialBoard in raw REPL); return a Deployment. `info` (a
    targets.BoardInfo) stands in for the board's probe, to simulate another board; log(line)
    is told each file and the summary. Leaves kmem imported: soft-reset the board before use."""
    if mode not in DEPLOY_MODES:
        raise DeployError(f"unknown deploy mode {mode!r}; expected one of {', '.join(DEPLOY_MODES)}")
    info = info or board.info or board.probe()
    if mode == "frozen":
        d = Deployment(mode, "frozen", info.arch, {}, None, FROZEN, [])
    else:
        kind, arch, files, host_dir, notes = choose(info, board.profile, arch, py)
        parent = lib_dir(info) if mode == "flash" else \
            {"romfs": ROMFS_MOUNT, "ram": RAM_MOUNT}.get(mode, MOUNT_POINT)
        d = Deployment(mode, kind, arch, files, host_dir, parent, notes)
        d.progress = log or d.progress
        {"flash": _sync, "ram": _ram, "mount": _mount, "romfs": _check_romfs}[mode](board, d)
    _check_import(board, d)
    if log:
        for message in d.messages():
            log(message)
    return d


# --- command line -----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="kmemctl deploy", description=__doc__.split("\n")[0],
                                 epilog="The modes and the .mpy/.py choice: README.md, "
                                        "'Put kmem on it'.")
    ap.add_argument("--target", "--port", dest="target", default="auto",
                    help="auto (first USB MicroPython board; default), port:DEVICE or DEVICE, "
                         "id:SERIAL; also unix, vboard[:PROFILE] and qemu (which stop "
                         "again when this ends: a check)")
    ap.add_argument("--board", help="board profile (boards/NAME.json); default: from the USB VID:PID")
    ap.add_argument("--deploy", choices=DEPLOY_MODES,
                    help="flash (default; qemu: romfs): changed files into <lib>/kmem; ram: a "
                         "RAM filesystem at /ram, until the next reset; mount: served from this "
                         "checkout (mpremote mount, a REPL); romfs, frozen: check what the "
                         "board's /rom or firmware holds")
    ap.add_argument("--arch", help="mpy-cross -march to compile for (default: the board's; "
                                   "another than the board's deploys .py)")
    ap.add_argument("--py", action="store_true", help="deploy the .py sources")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help=f"seconds per serial step (default {DEFAULT_TIMEOUT})")
    args = ap.parse_args(argv)
    kind = args.target.partition(":")[0]
    spec = args.target if kind in ("unix", "vboard", "qemu", "port", "auto", "id") \
        else "port:" + args.target  # a bare DEVICE
    try:
        if args.deploy == "mount" and not sys.stdin.isatty():
            raise DeployError("--deploy mount serves kmem from this checkout only while "
                              "mpremote's REPL runs, which needs a terminal, and there is none "
                              "here; use --deploy flash or ram (make deploy DEPLOY=ram)")
        target = make_target(spec, deploy=args.deploy, arch=args.arch,
                             board=args.board, timeout=args.timeout)
        if isinstance(target, UnixTarget):
            print(f"{target.name}: kmem compiled for {build.host_arch()} in {target.kmem_path} "
                  "(the unix port imports it from there: MICROPYPATH)")
            return 0
        board = target.board
        local = isinstance(board, LocalBoard)
        mode = target.deploy
        if mode == "mount" and local:
            raise DeployError(f"--deploy mount needs a board that stays up: start one "
                              f"(kmemctl {target.kind}), then --target port:PTY")
        if local:
            print(f"{board.name}: starting it ...", flush=True)
        board.soft_reset()
        info = board.probe()
        print(f"{board.name}: profile {board.profile['name']}; MicroPython "
              f"{'.'.join(map(str, info.version[:3]))} on {info.platform}, .mpy v{info.mpy}, "
              f"arch {info.arch or 'none'}, heap {info.heap} bytes", flush=True)
        if mode == "mount":
            *_, host_dir, notes = choose(info, board.profile, args.arch, args.py)
            for n in notes:
                print(f"note: {n}")
            cmd = [sys.executable, "-m", "mpremote", "connect", board.device, "mount",
                   str(host_dir)]
            board.close()
            print(f"kmem -> {MOUNT_POINT}/{PACKAGE} from {host_dir}, served while this runs "
                  f"(Ctrl-X leaves):\n  {' '.join(cmd)}", flush=True)
            os.execv(sys.executable, cmd)
        deploy(board, mode=mode, arch=args.arch, py=args.py, info=info,
               log=lambda m: print(m, flush=True))
        if mode == "flash":
            board.soft_reset()
        elif mode == "ram" and not local:
            print(f"kmem is in RAM at {RAM_MOUNT} until the next reset; keep it with "
                  f"`mpremote connect {board.device} resume repl`")
        if local:
            print(f"{board.name}: kmem imports; the board stops now (to keep one running: "
                  f"kmemctl {target.kind}, then --target port:PTY)")
    except (TargetUnavailable, TargetTimeout, TargetError, DeployError, ProfileError,
            build.BuildError, ValueError) as e:
        print(f"deploy failed: {e}", file=sys.stderr)
        return 1
    finally:
        close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
