"""Flash MicroPython itself onto a board (make flash).

python -m kmemhost.flash --board NAME [--port DEV] [--firmware FILE] [--mount DIR]
                         [--flasher native|mpflash] [--dry-run]

By flash.method in boards/NAME.json:
  esptool  (esp32_generic)  python -m esptool erase_flash, then write_flash at flash.offset
                            (chip and baud from the profile; esptool 5 spellings if installed)
  uf2      (rpi_pico)       copy the .uf2 onto the flash.volume_label (RPI-RP2) drive found
                            under /media/$USER, /run/media/$USER, /mnt or --mount; when none
                            is mounted and --port is given, `mpremote connect PORT bootloader`
                            first, then wait for the drive
  none     (unix)           nothing to flash
Firmware: --firmware FILE, else the latest stable release listed at
https://micropython.org/download/<board_id>/ (downloaded to build/firmware/, real runs only).
--dry-run prints every command line, download and file copy, and executes none of them.
--flasher mpflash hands the whole job to `mpflash flash` (pip install mpflash).

esptool is deliberately not in requirements.txt: it pulls in cryptography, rich-click and
more for a step only ESP32 owners run once; a real run without it stops and says how to
install it.
"""
import argparse
import fnmatch
import getpass
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from . import ROOT
from .profiles import ProfileError, list_profiles, load_profile

DOWNLOAD_PAGE = "https://micropython.org/download/{board_id}/"
FIRMWARE_URL = "https://micropython.org/resources/firmware/{name}"
CACHE = ROOT / "build" / "firmware"
METHODS = ("esptool", "uf2", "none")

# Seconds. Every subprocess, download, wait and copy has a limit.
HTTP_TIMEOUT = 30          # per network operation
DOWNLOAD_LIMIT = 300       # a whole firmware download
MAX_FIRMWARE = 16 << 20    # bytes; MicroPython images are 0.6-2 MB
ERASE_TIMEOUT = 120        # esptool erase_flash (a 4 MB flash takes ~10 s)
WRITE_TIMEOUT = 300        # esptool write_flash (~1.7 MB at 460800 baud takes ~30 s)
BOOTLOADER_TIMEOUT = 30    # mpremote connect PORT bootloader
VOLUME_WAIT = 30           # for the RPI-RP2 volume to be mounted after the bootloader call
COPY_TIMEOUT = 120         # writing the .uf2 to the volume
MPFLASH_TIMEOUT = 900      # mpflash flash (download + flash)

UF2_MAGIC = b"UF2\n" + struct.pack("<I", 0x9E5D5157)
ESP_IMAGE_MAGIC = 0xE9
BOOTSEL_HELP = ("hold the BOOTSEL button while plugging the board in (or while pressing RESET), "
                "then wait for the {label} drive to be mounted; or give PORT=/dev/ttyACM0 "
                "(--port) of a board running MicroPython and the tool enters the bootloader "
                "itself; if your system does not mount drives automatically, mount it "
                "(e.g. sudo mount /dev/sdX1 /mnt) and give MOUNT=/mnt (--mount)")


class FlashError(Exception):
    pass


# --- steps: each prints one line in a dry run and does its job in a real run ------------

class Ctx:
    """What earlier steps found out: the firmware file and the UF2 volume."""

    def __init__(self, firmware=None, volume=None):
        self.firmware, self.volume = firmware, volume


class Download:
    """Fetch the board's download page, pick the latest stable image, download it to CACHE."""

    def __init__(self, profile, method):
        self.method = method
        self.board_id = profile["board_id"]
        self.pattern = profile["flash"]["file"]
        self.page = DOWNLOAD_PAGE.format(board_id=self.board_id)

    def describe(self):
        return (f"download the latest stable {self.pattern} listed at {self.page} "
                f"into {CACHE}/")

    def run(self, ctx):
        ctx.firmware = download_latest(self.board_id, self.pattern, self.page)
        check_image(ctx.firmware, self.method)


class Command:
    def __init__(self, argv, timeout, what, display=None, check=True, hint=""):
        self.argv, self.timeout, self.what, self.check = argv, timeout, what, check
        self.display, self.hint = display or argv, hint

    def describe(self):
        return shlex.join(str(a) for a in self.display)

    def run(self, ctx):
        argv = [str(ctx.firmware) if a is FIRMWARE_SLOT else str(a) for a in self.argv]
        print(f"+ {shlex.join(argv)}", flush=True)
        try:
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise FlashError(f"{self.what} gave no answer within {self.timeout}s "
                             f"(stopped): {shlex.join(argv)}{self.hint}") from None
        except OSError as e:
            raise FlashError(f"{self.what} could not start: {e}") from None
        if self.check and res.returncode != 0:
            raise FlashError(f"{self.what} failed (exit status {res.returncode}): "
                             f"{shlex.join(argv)}{self.hint}")


class ByHand:
    """A step for the user (dry runs only: a real run stops with the explanation instead)."""

    def __init__(self, text):
        self.text = text

    def describe(self):
        return f"# by hand: {self.text}"

    def run(self, ctx):
        raise FlashError(self.text)


class WaitForVolume:
    def __init__(self, label, roots, timeout=VOLUME_WAIT):
        self.label, self.roots, self.timeout = label, roots, timeout

    def describe(self):
        return (f"wait up to {self.timeout}s for the {self.label} volume under "
                f"{', '.join(map(str, self.roots))}")

    def run(self, ctx):
        print(f"waiting up to {self.timeout}s for the {self.label} volume ...", flush=True)
        deadline = time.monotonic() + self.timeout
        while True:
            found = find_volumes(self.label, self.roots)
            if len(found) == 1:
                ctx.volume = found[0]
                return
            if len(found) > 1:
                raise FlashError(ambiguous_volumes(self.label, found))
            if time.monotonic() >= deadline:
                raise FlashError(f"the board did not show up as a {self.label} volume within "
                                 f"{self.timeout}s; " + BOOTSEL_HELP.format(label=self.label))
            time.sleep(0.5)


class CopyToVolume:
    def __init__(self, firmware_display, volume, label):
        self.firmware_display, self.volume, self.label = firmware_display, volume, label

    def describe(self):
        name = Path(self.firmware_display).name
        dest = f"{self.volume}/{name}" if self.volume else f"<{self.label} volume>/{name}"
        return shlex.join(["cp", str(self.firmware_display), dest])

    def run(self, ctx):
        volume = self.volume or ctx.volume
        dest = Path(volume) / ctx.firmware.name
        print(f"+ cp {shlex.quote(str(ctx.firmware))} {shlex.quote(str(dest))}", flush=True)
        copy_with_timeout(ctx.firmware, dest, COPY_TIMEOUT)
        print("copied; the board reboots into MicroPython in a few seconds")


FIRMWARE_SLOT = object()  # stands for the firmware path in a Command's argv until it is known


# --- profiles, images, volumes ------------------------------------------------------------

def resolve_profile(name):
    """Profile by name (rpi_pico) or, case-insensitively, by name or board_id (RPI_PICO)."""
    if not name:
        raise FlashError(f"no board given: BOARD=NAME (--board); available: "
                         f"{', '.join(list_profiles())}")
    try:
        return load_profile(name)
    except ProfileError as first:
        for other in list_profiles():
            try:
                p = load_profile(other)
            except ProfileError:
                continue
            if name.lower() in (other.lower(), str(p.get("board_id", "")).lower()):
                return p
        raise FlashError(str(first)) from None


def check_image(path, method):
    """Reject a file that cannot be the image `method` writes (a .bin for a UF2 board...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise FlashError(f"cannot read firmware {path}: {e.strerror}") from None
    if method == "uf2" and head != UF2_MAGIC:
        raise FlashError(f"{path} is not a UF2 file (RP2040 boards take a .uf2 image)")
    if method == "esptool" and (not head or head[0] != ESP_IMAGE_MAGIC):
        raise FlashError(f"{path} is not an ESP32 firmware image (.bin starting with 0xE9)")


def local_firmware(path, method):
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FlashError(f"firmware file not found: {path}")
    check_image(p, method)
    return p


def uf2_search_roots():
    """Where desktops and users mount USB drives: /media/$USER, /run/media/$USER, /mnt."""
    users = []
    for u in (os.environ.get("USER"), os.environ.get("SUDO_USER")):
        if u and u not in users:
            users.append(u)
    if not users:
        try:
            users.append(getpass.getuser())
        except (KeyError, OSError):
            pass
    roots = [Path(base, u) for u in users for base in ("/media", "/run/media")]
    return roots + [Path("/mnt")]


def is_uf2_volume(path, label):
    """A mounted UF2 bootloader drive: has INFO_UF2.TXT, whose Board-ID (if any) is `label`."""
    info = Path(path) / "INFO_UF2.TXT"
    try:
        text = info.read_text(errors="replace")[:4096]
    except OSError:
        return False
    m = re.search(r"^Board-ID:\s*(\S+)", text, re.M)
    return not m or m.group(1) == label


def find_volumes(label, roots):
    """UF2 volumes named like `label` (RPI-RP2, RPI-RP21, ...) under `roots`, or a root itself."""
    found = []
    for root in roots:
        root = Path(root)
        candidates = [root]
        try:
            candidates += sorted(p for p in root.iterdir() if p.name.startswith(label))
        except OSError:
            pass
        for c in candidates:
            if c not in found and is_uf2_volume(c, label):
                found.append(c)
    return found


def ambiguous_volumes(label, found):
    return (f"several {label} volumes are mounted ({', '.join(map(str, found))}); "
            f"unplug the others or name one with MOUNT=DIR (--mount)")


def mount_volume(mount, label):
    """--mount DIR: the volume itself, or a directory holding one named `label`."""
    mount = Path(mount).expanduser().resolve()
    for c in (mount, mount / label):
        if is_uf2_volume(c, label):
            return c
    raise FlashError(f"{mount} is not a {label} volume (no INFO_UF2.TXT with Board-ID {label}); "
                     + BOOTSEL_HELP.format(label=label))


def serial_candidates(profile):
    """Serial ports whose USB VID:PID belongs to the board (for error messages)."""
    ids = {v.lower() for v in profile.get("usb_vid_pid", [])}
    try:
        from serial.tools.list_ports import comports
        ports = comports()
    except Exception:  # pyserial missing or no sysfs: the hint is optional
        return []
    return [p.device for p in ports
            if p.vid is not None and f"{p.vid:04x}:{p.pid:04x}" in ids]


def port_hint(profile):
    found = serial_candidates(profile)
    return f"; connected {profile['name']} ports: {', '.join(found)}" if found else ""


# --- download ----------------------------------------------------------------------------

def stable_releases(page, board_id, pattern):
    """Firmware names of stable releases in a download page, newest first.

    Keeps names matching `pattern` (boards/*.json flash.file) of the exact form
    BOARD_ID-YYYYMMDD-vX.Y[.Z].ext: previews (-preview.N.gHASH) and variants
    (ESP32_GENERIC-SPIRAM-...) are left out.
    """
    ext = os.path.splitext(pattern)[1]
    form = re.compile(rf"{re.escape(board_id)}-(\d{{8}})-v(\d+)\.(\d+)(?:\.(\d+))?{re.escape(ext)}")
    names = set(re.findall(r"/resources/firmware/([A-Za-z0-9_.\-]+)", page))
    releases = []
    for name in names:
        m = form.fullmatch(name)
        if m and fnmatch.fnmatchcase(name, pattern):
            date, *version = m.groups()
            releases.append((tuple(int(v or 0) for v in version), date, name))
    return [name for *_, name in sorted(releases, reverse=True)]


def urlopen(url):
    req = urllib.request.Request(url, headers={"User-Agent": "kmem-flash (python urllib)"})
    return urllib.request.urlopen(req, timeout=HTTP_TIMEOUT)


def download_latest(board_id, pattern, page_url, cache=None):
    cache = Path(cache or CACHE)
    try:
        with urlopen(page_url) as r:
            page = r.read(4 << 20).decode("utf-8", "replace")
    except OSError as e:
        raise FlashError(f"cannot fetch {page_url} ({e}); download the firmware yourself and "
                         f"give FIRMWARE=path (--firmware)") from None
    names = stable_releases(page, board_id, pattern)
    if not names:
        raise FlashError(f"no stable {pattern} listed at {page_url}; give FIRMWARE=path")
    name = names[0]
    dest = cache / name
    if dest.is_file() and dest.stat().st_size > 0:
        print(f"using {dest} (already downloaded)")
        return dest
    url = FIRMWARE_URL.format(name=name)
    print(f"downloading {url}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    deadline = time.monotonic() + DOWNLOAD_LIMIT
    try:
        with urlopen(url) as r, open(part, "wb") as out:
            size = 0
            while chunk := r.read(1 << 16):
                size += len(chunk)
                if size > MAX_FIRMWARE:
                    raise FlashError(f"{url} is over {MAX_FIRMWARE >> 20} MB: not a firmware")
                if time.monotonic() > deadline:
                    raise FlashError(f"downloading {url} took longer than {DOWNLOAD_LIMIT}s")
                out.write(chunk)
        os.replace(part, dest)
    except OSError as e:
        raise FlashError(f"cannot download {url} ({e}); give FIRMWARE=path") from None
    finally:
        part.unlink(missing_ok=True)
    return dest


def copy_with_timeout(src, dest, timeout):
    """Copy and fsync in a thread so a hung USB drive cannot hang the tool."""
    result = {}

    def work():
        try:
            with open(src, "rb") as f, open(dest, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 16)
                out.flush()
                try:
                    os.fsync(out.fileno())
                except OSError:  # the board may reboot as soon as the last block lands
                    pass
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise FlashError(f"copying {src} to {dest} did not finish within {timeout}s")
    if "error" in result:
        raise FlashError(f"cannot copy {src} to {dest}: {result['error']}")


# --- plans -------------------------------------------------------------------------------

def esptool_major():
    """Major version of the esptool installed for this Python, or None."""
    try:
        return int(importlib.metadata.version("esptool").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def have_esptool():
    return importlib.util.find_spec("esptool") is not None


def firmware_steps(profile, firmware, method):
    """(steps, path or placeholder shown in commands) for getting the image."""
    if firmware:
        return [], local_firmware(firmware, method)
    step = Download(profile, method)
    steps: list = [step]  # then Command, ByHand, WaitForVolume, CopyToVolume steps
    return steps, CACHE / step.pattern


def esptool_plan(profile, args):
    fl = profile["flash"]
    if not args.port:
        raise FlashError(f"{profile['name']} is flashed over its serial port: give "
                         f"PORT=/dev/ttyUSB0 (--port){port_hint(profile)}")
    steps, shown = firmware_steps(profile, args.firmware, "esptool")
    # esptool 5 renamed the commands (erase-flash); 4.x knows only erase_flash, which 5.x
    # still accepts with a warning. Unknown (not installed) -> the spelling every version takes.
    major = esptool_major()
    new = major is not None and major >= 5
    erase, write = ("erase-flash", "write-flash") if new else ("erase_flash", "write_flash")
    base = [sys.executable, "-m", "esptool", "--chip", fl["chip"], "--port", args.port,
            "--baud", str(fl["baud"])]
    hint = (f"; check PORT={args.port}, close any serial monitor or mpremote using it, and "
            f"hold BOOT while esptool connects if the board does not reset by itself")
    steps.append(Command(base + [erase], ERASE_TIMEOUT, "esptool erase", hint=hint))
    steps.append(Command(base + [write, fl["offset"], FIRMWARE_SLOT], WRITE_TIMEOUT,
                         "esptool write", display=base + [write, fl["offset"], shown], hint=hint))
    return steps


def uf2_plan(profile, args):
    label = profile["flash"]["volume_label"]
    steps, shown = firmware_steps(profile, args.firmware, "uf2")
    if args.mount:
        volume = mount_volume(args.mount, label)
    else:
        roots = uf2_search_roots()
        found = find_volumes(label, roots)
        if len(found) > 1:
            raise FlashError(ambiguous_volumes(label, found))
        volume = found[0] if found else None
        if volume is None:
            if not args.port and not args.dry_run:
                raise FlashError(f"no {label} volume found under "
                                 f"{', '.join(map(str, roots))}: the board is not in BOOTSEL "
                                 f"mode; " + BOOTSEL_HELP.format(label=label))
            if args.port:
                steps.append(Command([sys.executable, "-m", "mpremote", "connect", args.port,
                                      "bootloader"], BOOTLOADER_TIMEOUT, "mpremote bootloader",
                                     check=False,  # the board drops off USB mid-command
                                     hint=f"; is MicroPython running on {args.port}? else "
                                          + BOOTSEL_HELP.format(label=label)))
            else:  # a dry run needs no hardware: show the plan with the step for the user
                steps.append(ByHand("put the board in BOOTSEL mode: "
                                    + BOOTSEL_HELP.format(label=label)))
            steps.append(WaitForVolume(label, roots))
    steps.append(CopyToVolume(shown, volume, label))
    return steps


def mpflash_plan(profile, args):
    if args.firmware:
        raise FlashError("FLASHER=mpflash picks its own firmware; drop FIRMWARE= or use the "
                         "default flasher")
    if not args.port:
        raise FlashError("FLASHER=mpflash needs PORT=... (--port): without --serial mpflash "
                         f"flashes every connected board{port_hint(profile)}")
    exe = shutil.which("mpflash", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    argv = [exe or "mpflash", "flash", "--board", profile["board_id"], "--serial", args.port]
    return [Command(argv, MPFLASH_TIMEOUT, "mpflash")]


def have_mpflash(steps):
    """mpflash_plan names mpflash by its full path only when it found it installed."""
    return os.path.isabs(steps[0].argv[0])


def plan(profile, args):
    method = profile["flash"].get("method")
    if method not in METHODS:
        raise FlashError(f"boards/{profile['name']}.json: unknown flash.method {method!r}; "
                         f"expected one of {', '.join(METHODS)}")
    if method == "none":
        return []
    if args.flasher == "mpflash":
        return mpflash_plan(profile, args)
    return {"esptool": esptool_plan, "uf2": uf2_plan}[method](profile, args)


def preflight(profile, args, steps):
    """Real runs only: what must be there before anything touches the board."""
    method = profile["flash"]["method"]
    if args.flasher == "mpflash":
        if not have_mpflash(steps):
            raise FlashError("mpflash is not installed: run `.venv/bin/python -m pip install "
                             "mpflash` (or pip install mpflash), then try again")
    elif method == "esptool" and not have_esptool():
        raise FlashError("esptool is not installed (it is not in requirements.txt): run "
                         "`.venv/bin/python -m pip install esptool` (or pip install esptool), "
                         "then try again")
    port = args.port
    needs_port = method == "esptool" or args.flasher == "mpflash" or any(
        isinstance(s, WaitForVolume) for s in steps)
    if needs_port and port.startswith("/dev/") and not os.path.exists(port):
        hint = port_hint(profile)
        if method == "uf2" and args.flasher != "mpflash":
            label = profile["flash"]["volume_label"]
            hint += (f"; a board already in BOOTSEL mode has no serial port: mount its "
                     f"{label} drive and give MOUNT=dir (--mount)")
        raise FlashError(f"serial port {port} does not exist{hint}")


# --- CLI ---------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kmemhost.flash",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--board", help=f"board profile: {', '.join(list_profiles())}")
    ap.add_argument("--port", help="serial port (/dev/ttyUSB0, /dev/ttyACM0)")
    ap.add_argument("--firmware", help="image to flash (.bin for esptool, .uf2 for uf2); "
                                       "default: download the latest stable release")
    ap.add_argument("--mount", help="UF2 boards: the mounted RPI-RP2 volume (default: search "
                                    "/media/$USER, /run/media/$USER, /mnt)")
    ap.add_argument("--flasher", choices=("native", "mpflash"), default="native",
                    help="native (esptool / UF2 copy, default) or mpflash")
    ap.add_argument("--dry-run", action="store_true",
                    help="print every command and copy; execute nothing")
    args = ap.parse_args(argv)
    try:
        profile = resolve_profile(args.board)
        fl = profile["flash"]
        if fl.get("method") == "none":
            runs = ("QEMU runs build/qemu/firmware.elf; try make qemu-firmware, then make qemu"
                    if "qemu" in profile else "the unix port runs on this host; try make repl "
                    "or make test")
            print(f"{profile['name']}: nothing to flash (flash.method is \"none\": {runs})")
            return 0
        steps = plan(profile, args)
        how = "mpflash" if args.flasher == "mpflash" else fl["method"]
        if args.dry_run:
            print(f"# dry run: flash {profile['name']} ({profile['board_id']}) by {how}; "
                  f"nothing is executed")
            for step in steps:
                print(step.describe())
            if fl["method"] == "esptool" and args.flasher != "mpflash" and not have_esptool():
                print("note: esptool is not installed; a real run would stop and ask for "
                      "`pip install esptool`", file=sys.stderr)
            if args.flasher == "mpflash" and not have_mpflash(steps):
                print("note: mpflash is not installed; a real run would stop and ask for "
                      "`.venv/bin/python -m pip install mpflash`", file=sys.stderr)
            return 0
        preflight(profile, args, steps)
        ctx = Ctx(Path(args.firmware).expanduser().resolve() if args.firmware else None)
        print(f"flashing {profile['name']} ({profile['board_id']}) by {how}", flush=True)
        for step in steps:
            step.run(ctx)
        print("done")
        return 0
    except FlashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
