"""Flash MicroPython itself onto a board (make flash), by mpflash (README.md: "Flash MicroPython").

mpflash (pinned in requirements-flash.txt, installed into this venv on first use) downloads,
enters the bootloader and flashes. The one job left here is --firmware FILE: mpflash flashes
only images in its own download folder, so a local image is written by esptool (which comes
with mpflash) or copied onto the UF2 drive given by --mount.
"""
import argparse
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

from . import ROOT
from .profiles import ProfileError, list_profiles, load_profile

REQUIREMENTS = ROOT / "requirements-flash.txt"
BIN = Path(sys.executable).parent
INSTALL_TIMEOUT = 600  # seconds: pip install -r requirements-flash.txt
FLASH_TIMEOUT = 900    # mpflash flash (download + flash), esptool or cp
BOOTSEL = ("hold BOOTSEL while plugging the board in, then give the directory its {label} "
           "drive is mounted at")


class FlashError(Exception):
    pass


def resolve_profile(name):
    """Profile by name (rpi_pico) or, case-insensitively, by name or board_id (RPI_PICO)."""
    if not name:
        raise FlashError(f"no board given: BOARD=NAME (--board); available: "
                         f"{', '.join(list_profiles())}")
    try:
        return load_profile(name)
    except ProfileError as first:
        for other in list_profiles():
            p = load_profile(other)
            if name.lower() in (other.lower(), str(p.get("board_id", "")).lower()):
                return p
        raise FlashError(str(first)) from None


def uf2_drive(profile, mount):
    label = profile["flash"].get("volume_label", "UF2")
    if profile["flash"]["method"] != "uf2":
        raise FlashError(f"MOUNT= (--mount) is for UF2 boards; {profile['name']} is flashed "
                         f"over PORT=")
    if not (Path(mount) / "INFO_UF2.TXT").is_file():
        raise FlashError(f"{mount} is not a {label} drive (no INFO_UF2.TXT); "
                         + BOOTSEL.format(label=label))
    return mount


def local_command(profile, args):
    """--firmware FILE: esptool for an ESP32, a copy onto the --mount drive for UF2."""
    fl = profile["flash"]
    path = Path(args.firmware).expanduser().resolve()
    ext = Path(fl["file"]).suffix
    if not path.is_file():
        raise FlashError(f"firmware file not found: {args.firmware}")
    if path.suffix != ext:
        raise FlashError(f"{profile['name']} takes a {ext} image, not {path.name}")
    if fl["method"] == "esptool":
        if not args.port:
            raise FlashError(f"{profile['name']} is flashed over its serial port: give "
                             f"PORT=/dev/ttyUSB0 (--port)")
        return [sys.executable, "-m", "esptool", "--chip", fl["chip"], "--port", args.port,
                "--baud", str(fl["baud"]), "write-flash", "--erase-all", fl["offset"], str(path)]
    if not args.mount:
        raise FlashError(f"FIRMWARE= on {profile['name']} needs MOUNT=dir (--mount): "
                         + BOOTSEL.format(label=fl.get("volume_label", "UF2")))
    return ["cp", str(path), str(Path(uf2_drive(profile, args.mount), path.name))]


def command(profile, args):
    """The one command that flashes the board, as an argv list."""
    if args.firmware:
        return local_command(profile, args)
    if args.mount:
        where = ["--volume", uf2_drive(profile, args.mount)]
    elif args.port:
        where = ["--serial", args.port]
    else:
        mount = " or MOUNT=dir (--mount)" if profile["flash"]["method"] == "uf2" else ""
        raise FlashError(f"give PORT=/dev/ttyACM0 (--port){mount}: without one mpflash would "
                         f"flash every board connected (`mpflash list` shows them)")
    argv = [str(BIN / "mpflash"), "flash", "--board", profile["board_id"], *where,
            "--version", "stable"]
    if profile["flash"]["method"] == "esptool":
        argv.append("--erase")  # erase_flash first, as MicroPython's ESP32 instructions say
    return argv


def run(argv, timeout, what):
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FlashError(f"{what} did not finish within {timeout}s (stopped): "
                         f"{shlex.join(argv)}") from None
    except OSError as e:
        raise FlashError(f"{what} could not start: {e}") from None
    if res.returncode != 0:
        raise FlashError(f"{what} failed (exit status {res.returncode}): {shlex.join(argv)}")


def have_mpflash():
    return importlib.util.find_spec("mpflash") is not None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kmemhost.flash",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--board", help=f"board profile: {', '.join(list_profiles())}")
    ap.add_argument("--port", help="serial port of the board (/dev/ttyACM0, /dev/ttyUSB0)")
    ap.add_argument("--mount", help="UF2 boards already in BOOTSEL mode: where the drive is "
                                    "mounted (instead of --port)")
    ap.add_argument("--firmware", help="a local image to flash (.uf2 needs --mount; .bin "
                                       "--port); default: mpflash downloads the latest stable")
    ap.add_argument("--dry-run", action="store_true", help="print the command; run nothing")
    args = ap.parse_args(argv)
    try:
        profile = resolve_profile(args.board)
        method = profile["flash"].get("method")
        if method == "none":
            runs = ("QEMU runs build/qemu/firmware.elf; try make qemu-firmware, then make qemu"
                    if "qemu" in profile else "the unix port runs on this host; try make repl "
                    "or make test")
            print(f"{profile['name']}: nothing to flash (flash.method is \"none\": {runs})")
            return 0
        if method not in ("esptool", "uf2"):
            raise FlashError(f"boards/{profile['name']}.json: unknown flash.method {method!r}")
        cmd = command(profile, args)
        if args.dry_run:
            print(shlex.join(cmd))
            if cmd[0] != "cp" and not have_mpflash():
                print("# dry run; a real run first installs mpflash into this venv (pip "
                      f"install -r {REQUIREMENTS.name})", file=sys.stderr)
            return 0
        if cmd[0] != "cp" and not have_mpflash():  # first use: the pinned mpflash and esptool
            pip = [sys.executable, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)]
            print(f"mpflash is not installed; installing it (first use): {shlex.join(pip)}",
                  flush=True)
            run(pip, INSTALL_TIMEOUT, "installing mpflash")
        print(f"+ {shlex.join(cmd)}", flush=True)
        run(cmd, FLASH_TIMEOUT, "esptool" if cmd[0] == sys.executable else Path(cmd[0]).name)
        return 0
    except FlashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
