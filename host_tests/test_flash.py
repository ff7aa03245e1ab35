"""make flash (tools/kmemhost/flash.py) and boards/manifest.py, on the host only.

No board, no network, no `target` fixture: dry runs are checked line by line, real runs
only where they stop before touching a device or act on a fake RPI-RP2 volume in
tmp_path. (make test runs pytest twice; these take well under a second each time.)
"""
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kmemhost import ROOT, flash

PY = sys.executable
UF2_BLOCK = b"UF2\n" + struct.pack("<I", 0x9E5D5157) + bytes(504)
INFO_UF2 = "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real mount points, a fixed esptool version, and no subprocess unless a test allows it."""
    roots = [tmp_path / "media" / "user", tmp_path / "run-media" / "user", tmp_path / "mnt"]
    monkeypatch.setattr(flash, "uf2_search_roots", lambda: roots)
    monkeypatch.setattr(flash, "esptool_major", lambda: None)
    monkeypatch.setattr(flash, "CACHE", tmp_path / "cache")

    def no_subprocess(*a, **k):
        raise AssertionError(f"subprocess.run called: {a}")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    return roots


def run(capsys, *argv):
    """flash.main(argv) -> (exit status, stdout lines, stderr)."""
    code = flash.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.fixture
def esp_bin(tmp_path):
    p = tmp_path / "ESP32_GENERIC-20250415-v1.25.0.bin"
    p.write_bytes(b"\xe9\x03\x02\x20" + bytes(1020))
    return p


@pytest.fixture
def uf2(tmp_path):
    p = tmp_path / "RPI_PICO-20250415-v1.25.0.uf2"
    p.write_bytes(UF2_BLOCK * 4)
    return p


def make_volume(path, info=INFO_UF2):
    path.mkdir(parents=True)
    (path / "INFO_UF2.TXT").write_text(info)
    (path / "INDEX.HTM").write_text("<html></html>")
    return path


# --- esptool (esp32_generic) ---------------------------------------------------------------

def test_esptool_dry_run_prints_erase_then_write_at_0x1000(capsys, esp_bin):
    code, out, err = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                         "--firmware", str(esp_bin), "--dry-run")
    esptool = [PY, "-m", "esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "--baud", "460800"]
    assert code == 0, err
    assert out == [
        "# dry run: flash esp32_generic (ESP32_GENERIC) by esptool; nothing is executed",
        shlex.join(esptool + ["erase_flash"]),
        shlex.join(esptool + ["write_flash", "0x1000", str(esp_bin)]),
    ]


def test_esptool_5_gets_its_own_command_names(capsys, monkeypatch, esp_bin):
    monkeypatch.setattr(flash, "esptool_major", lambda: 5)
    code, out, _ = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                       "--firmware", str(esp_bin), "--dry-run")
    assert code == 0
    assert out[1].endswith(" erase-flash")
    assert out[2].endswith(f" write-flash 0x1000 {shlex.quote(str(esp_bin))}")


def test_esptool_dry_run_without_firmware_prints_the_download(capsys, tmp_path):
    code, out, _ = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0", "--dry-run")
    assert code == 0
    assert out[1] == ("download the latest stable ESP32_GENERIC-*-v*.bin listed at "
                      f"https://micropython.org/download/ESP32_GENERIC/ into {tmp_path / 'cache'}/")
    placeholder = tmp_path / "cache" / "ESP32_GENERIC-*-v*.bin"
    assert out[3].endswith("write_flash 0x1000 " + shlex.quote(str(placeholder)))
    assert not (tmp_path / "cache").exists()  # nothing downloaded


def test_esptool_needs_a_port(capsys, esp_bin):
    code, out, err = run(capsys, "--board", "esp32_generic", "--firmware", str(esp_bin),
                         "--dry-run")
    assert code == 1 and out == []
    assert "PORT=/dev/ttyUSB0 (--port)" in err


def test_missing_firmware_file(capsys, tmp_path):
    code, out, err = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                         "--firmware", str(tmp_path / "nope.bin"), "--dry-run")
    assert code == 1 and out == []
    assert f"firmware file not found: {tmp_path / 'nope.bin'}" in err


def test_wrong_image_kind_is_refused(capsys, uf2, esp_bin):
    code, _, err = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                       "--firmware", str(uf2), "--dry-run")
    assert code == 1 and "not an ESP32 firmware image" in err
    code, _, err = run(capsys, "--board", "rpi_pico", "--firmware", str(esp_bin), "--dry-run")
    assert code == 1 and "not a UF2 file" in err


def test_real_run_without_esptool_says_how_to_install(capsys, monkeypatch, esp_bin):
    monkeypatch.setattr(flash, "have_esptool", lambda: False)
    code, out, err = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                         "--firmware", str(esp_bin))
    assert code == 1 and out == []
    assert "esptool is not installed" in err and "pip install esptool" in err


def test_real_run_runs_erase_then_write_with_timeouts(capsys, monkeypatch, esp_bin, tmp_path):
    port = tmp_path / "ttyFAKE"
    port.touch()
    calls = []
    monkeypatch.setattr(flash, "have_esptool", lambda: True)
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append((argv, kw))
                        or subprocess.CompletedProcess(argv, 0))
    code, _, err = run(capsys, "--board", "esp32_generic", "--port", str(port),
                       "--firmware", str(esp_bin))
    assert code == 0, err
    assert [argv[-1] for argv, _ in calls] == ["erase_flash", str(esp_bin)]
    assert calls[1][0][-3:] == ["write_flash", "0x1000", str(esp_bin)]
    assert all(kw.get("timeout") for _, kw in calls)


def test_subprocess_timeout_is_an_error(capsys, monkeypatch, esp_bin, tmp_path):
    port = tmp_path / "ttyFAKE"
    port.touch()
    monkeypatch.setattr(flash, "have_esptool", lambda: True)

    def hang(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw["timeout"])
    monkeypatch.setattr(subprocess, "run", hang)
    code, _, err = run(capsys, "--board", "esp32_generic", "--port", str(port),
                       "--firmware", str(esp_bin))
    assert code == 1 and f"no answer within {flash.ERASE_TIMEOUT}s" in err


# --- uf2 (rpi_pico) ---------------------------------------------------------------------------

def test_uf2_dry_run_copies_to_the_given_mount(capsys, tmp_path, uf2):
    volume = make_volume(tmp_path / "RPI-RP2")
    code, out, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0",
                         "--firmware", str(uf2), "--mount", str(volume), "--dry-run")
    assert code == 0, err
    assert out == [
        "# dry run: flash rpi_pico (RPI_PICO) by uf2; nothing is executed",
        shlex.join(["cp", str(uf2), f"{volume}/{uf2.name}"]),
    ]
    assert sorted(p.name for p in volume.iterdir()) == ["INDEX.HTM", "INFO_UF2.TXT"]


def test_uf2_mount_may_be_the_parent_of_the_volume(capsys, tmp_path, uf2):
    volume = make_volume(tmp_path / "drives" / "RPI-RP2")
    code, out, _ = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2),
                       "--mount", str(volume.parent), "--dry-run")
    assert code == 0 and out[1] == shlex.join(["cp", str(uf2), f"{volume}/{uf2.name}"])


def test_uf2_finds_the_volume_under_media_user(capsys, isolated, uf2):
    volume = make_volume(isolated[0] / "RPI-RP2")
    code, out, _ = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2), "--dry-run")
    assert code == 0 and out[1] == shlex.join(["cp", str(uf2), f"{volume}/{uf2.name}"])


def test_uf2_ignores_other_uf2_boards_and_refuses_two_picos(capsys, isolated, uf2):
    make_volume(isolated[0] / "RPI-RP2", info="Board-ID: RP2350\n")  # a Pico 2 is not a Pico
    code, out, _ = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2), "--dry-run")
    assert code == 0 and out[-1] == shlex.join(["cp", str(uf2), f"<RPI-RP2 volume>/{uf2.name}"])
    make_volume(isolated[1] / "RPI-RP2")
    make_volume(isolated[1] / "RPI-RP21")
    code, _, err = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2), "--dry-run")
    assert code == 1 and "several RPI-RP2 volumes" in err and "MOUNT=" in err


def test_uf2_without_volume_enters_the_bootloader_over_the_port(capsys, isolated, uf2):
    code, out, _ = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0",
                       "--firmware", str(uf2), "--dry-run")
    assert code == 0
    assert out[1:] == [
        shlex.join([PY, "-m", "mpremote", "connect", "/dev/ttyACM0", "bootloader"]),
        f"wait up to {flash.VOLUME_WAIT}s for the RPI-RP2 volume under "
        + ", ".join(map(str, isolated)),
        shlex.join(["cp", str(uf2), f"<RPI-RP2 volume>/{uf2.name}"]),
    ]


def test_uf2_without_volume_or_port_explains_bootsel(capsys, uf2):
    code, out, err = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2))
    assert code == 1 and out == []
    assert "no RPI-RP2 volume found" in err and "BOOTSEL" in err


def test_uf2_dry_run_needs_no_hardware(capsys, isolated, uf2):
    code, out, _ = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2), "--dry-run")
    assert code == 0
    assert out[1].startswith("# by hand: put the board in BOOTSEL mode: hold the BOOTSEL button")
    assert out[2:] == [
        f"wait up to {flash.VOLUME_WAIT}s for the RPI-RP2 volume under "
        + ", ".join(map(str, isolated)),
        shlex.join(["cp", str(uf2), f"<RPI-RP2 volume>/{uf2.name}"]),
    ]


def test_uf2_mount_that_is_not_a_volume(capsys, tmp_path, uf2):
    code, _, err = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2),
                       "--mount", str(tmp_path), "--dry-run")
    assert code == 1 and "is not a RPI-RP2 volume" in err and "BOOTSEL" in err


def test_uf2_real_run_copies_the_file(capsys, tmp_path, uf2):
    volume = make_volume(tmp_path / "RPI-RP2")
    code, _, err = run(capsys, "--board", "rpi_pico", "--firmware", str(uf2),
                       "--mount", str(volume))
    assert code == 0, err
    assert (volume / uf2.name).read_bytes() == uf2.read_bytes()


def test_uf2_real_run_bootloader_then_copy(capsys, monkeypatch, isolated, tmp_path, uf2):
    port = tmp_path / "ttyACM-fake"  # not under /dev: its existence is not checked
    calls = []

    def fake_mpremote(argv, **kw):  # the board reboots into BOOTSEL and gets mounted
        calls.append(argv)
        make_volume(isolated[1] / "RPI-RP2")
        return subprocess.CompletedProcess(argv, 1)  # mpremote loses the port: not an error
    monkeypatch.setattr(subprocess, "run", fake_mpremote)
    code, _, err = run(capsys, "--board", "rpi_pico", "--port", str(port), "--firmware", str(uf2))
    assert code == 0, err
    assert calls == [[PY, "-m", "mpremote", "connect", str(port), "bootloader"]]
    assert (isolated[1] / "RPI-RP2" / uf2.name).read_bytes() == uf2.read_bytes()


def test_uf2_real_run_with_missing_dev_port(capsys, uf2):
    code, _, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyKMEM-none",
                       "--firmware", str(uf2))
    assert code == 1 and "serial port /dev/ttyKMEM-none does not exist" in err and "MOUNT=" in err


# --- other boards, names, mpflash ------------------------------------------------------------

@pytest.mark.parametrize("dry", [True, False])
def test_unix_has_nothing_to_flash(capsys, dry):
    code, out, _ = run(capsys, "--board", "unix", *(["--dry-run"] if dry else []))
    assert code == 0 and out and out[0].startswith("unix: nothing to flash")


def test_unknown_board_lists_the_profiles(capsys):
    code, out, err = run(capsys, "--board", "teensy41", "--dry-run")
    assert code == 1 and out == []
    assert "unknown board profile 'teensy41'" in err
    assert "available: esp32_generic, qemu_microbit, rpi_pico, unix" in err


def test_no_board(capsys):
    code, _, err = run(capsys, "--dry-run")
    assert code == 1 and "BOARD=NAME" in err and "rpi_pico" in err


def test_board_id_is_accepted_as_a_name(capsys, esp_bin):
    code, out, _ = run(capsys, "--board", "ESP32_GENERIC", "--port", "/dev/ttyUSB0",
                       "--firmware", str(esp_bin), "--dry-run")
    assert code == 0 and out[0].startswith("# dry run: flash esp32_generic ")


def test_mpflash_dry_run(capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    code, out, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0",
                         "--flasher", "mpflash", "--dry-run")
    assert code == 0
    assert out[1:] == ["mpflash flash --board RPI_PICO --serial /dev/ttyACM0"]
    assert "mpflash is not installed" in err


def test_mpflash_needs_port_and_no_firmware_and_says_how_to_install(capsys, monkeypatch, uf2):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    code, _, err = run(capsys, "--board", "rpi_pico", "--flasher", "mpflash", "--dry-run")
    assert code == 1 and "PORT=" in err
    code, _, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0", "--flasher",
                       "mpflash", "--firmware", str(uf2), "--dry-run")
    assert code == 1 and "FIRMWARE" in err
    code, _, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0",
                       "--flasher", "mpflash")
    assert code == 1 and "pip install mpflash" in err


# --- download (parsing a fake page; no network) -------------------------------------------------

PAGE = """
<a href="/resources/firmware/ESP32_GENERIC-20250911-v1.26.1.bin">v1.26.1</a>
<a href="/resources/firmware/ESP32_GENERIC-20251209-v1.27.0.bin">v1.27.0 (latest)</a>
<a href="/resources/firmware/ESP32_GENERIC-20260101-v1.28.0-preview.12.gabcdef.bin">preview</a>
<a href="/resources/firmware/ESP32_GENERIC-SPIRAM-20251209-v1.27.0.bin">spiram</a>
<a href="https://micropython.org/resources/firmware/ESP32_GENERIC-20250415-v1.25.0.bin">v1.25</a>
<a href="/resources/firmware/ESP32_GENERIC-20251209-v1.27.0.app-bin">app</a>
<a href="/resources/firmware/ESP32_GENERIC-20240222-v1.9.4.bin">old, sorts by version</a>
"""


def test_stable_releases_newest_first_without_previews_or_variants():
    assert flash.stable_releases(PAGE, "ESP32_GENERIC", "ESP32_GENERIC-*-v*.bin") == [
        "ESP32_GENERIC-20251209-v1.27.0.bin",
        "ESP32_GENERIC-20250911-v1.26.1.bin",
        "ESP32_GENERIC-20250415-v1.25.0.bin",
        "ESP32_GENERIC-20240222-v1.9.4.bin",
    ]
    assert flash.stable_releases(PAGE, "RPI_PICO", "RPI_PICO-*-v*.uf2") == []


def test_download_latest_fetches_once_into_the_cache(monkeypatch, tmp_path, capsys):
    import io
    image = b"\xe9" + bytes(4095)
    urls = []

    def fake_urlopen(url):
        urls.append(url)
        return io.BytesIO(PAGE.encode() if url.endswith("/ESP32_GENERIC/") else image)
    monkeypatch.setattr(flash, "urlopen", fake_urlopen)
    page = "https://micropython.org/download/ESP32_GENERIC/"
    for _ in range(2):
        path = flash.download_latest("ESP32_GENERIC", "ESP32_GENERIC-*-v*.bin", page, tmp_path)
    assert path == tmp_path / "ESP32_GENERIC-20251209-v1.27.0.bin"
    assert path.read_bytes() == image
    assert urls == [page, flash.FIRMWARE_URL.format(name=path.name), page]
    assert not list(tmp_path.glob("*.part"))


# --- the CLI and the Makefile rule --------------------------------------------------------------

def test_cli_module_entry_point(esp_bin, monkeypatch):
    monkeypatch.undo()  # the real subprocess.run
    res = subprocess.run(
        [PY, "-m", "kmemhost.flash", "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
         "--firmware", str(esp_bin), "--dry-run"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "tools")),
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and lines[2].endswith(f"0x1000 {shlex.quote(str(esp_bin))}")


@pytest.mark.skipif(not shutil.which("make"), reason="make not installed")
def test_make_flash_passes_the_variables(monkeypatch):
    monkeypatch.undo()
    res = subprocess.run(
        ["make", "-n", "flash", "BOARD=rpi_pico", "PORT=/dev/ttyACM0", "FIRMWARE=fw.uf2",
         "MOUNT=/mnt/x", "FLASHER=mpflash", "DRY_RUN=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stdout.splitlines() if "kmemhost.flash" in ln][-1]
    assert line.split("kmemhost.flash", 1)[1].split() == [
        "--board", "rpi_pico", "--port", "/dev/ttyACM0", "--firmware", "fw.uf2",
        "--mount", "/mnt/x", "--flasher", "mpflash", "--dry-run"]
    res = subprocess.run(["make", "-n", "flash", "BOARD=unix", "DRY_RUN=0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = [ln for ln in res.stdout.splitlines() if "kmemhost.flash" in ln][-1]
    assert line.split("kmemhost.flash", 1)[1].split() == ["--board", "unix"]


# --- boards/manifest.py ---------------------------------------------------------------------------

class IncludeOptions:
    """manifestfile.py's `options`: include() keyword arguments, defaults(), None if unset."""

    def __init__(self, **kwargs):
        self._kwargs = kwargs

    def defaults(self, **kwargs):
        for name, value in kwargs.items():
            self._kwargs.setdefault(name, value)

    def __getattr__(self, name):
        return self._kwargs.get(name)


class ManifestRecorder:
    """Evaluates a freeze manifest the way MicroPython's tools/manifestfile.py does:
    exec() with only the manifest API as globals (no __file__), the manifest's directory
    as the current directory, $(VAR) substitution then os.path.abspath for every path,
    and package() collecting base_path/package_path/**/*.py as package_path/**/*.py."""

    def __init__(self, path_vars, **options):
        self.path_vars, self.calls, self.files = path_vars, [], {}
        self.options = options

    def resolve(self, path):
        for name, value in self.path_vars.items():
            path = path.replace(f"$({name})", value)
        return os.path.abspath(path)

    def api(self):
        def record(name):
            return lambda *a, **k: self.calls.append((name, a, k))

        api: dict = {n: record(n) for n in ("metadata", "require", "add_library", "module",
                                      "c_module", "freeze", "freeze_as_str",
                                      "freeze_as_mpy", "freeze_mpy")}
        api.update(include=self.include, package=self.package,
                   options=IncludeOptions(**self.options))
        return api

    def include(self, manifest_path, **kwargs):
        self.calls.append(("include", (self.resolve(manifest_path),), kwargs))

    def package(self, package_path, files=None, base_path=".", opt=None):
        base = self.resolve(base_path)
        self.calls.append(("package", (package_path,), {"base_path": base}))
        assert files is None
        for dirpath, _, names in os.walk(os.path.join(base, package_path)):
            for n in names:
                if n.endswith(".py"):
                    full = os.path.join(dirpath, n)
                    self.files[os.path.relpath(full, base).replace(os.sep, "/")] = full

    def execute(self, manifest, monkeypatch):
        monkeypatch.chdir(os.path.dirname(manifest))
        exec(compile(Path(manifest).read_text(), manifest, "exec"), self.api())
        return self


@pytest.mark.parametrize("port", ["rp2", "esp32"])
def test_manifest_freezes_kmem_on_top_of_the_port_manifest(monkeypatch, tmp_path, port):
    mpy = tmp_path / "micropython"
    port_dir = mpy / "ports" / port
    m = ManifestRecorder({"MPY_DIR": str(mpy), "PORT_DIR": str(port_dir),
                          "BOARD_DIR": str(port_dir / "boards" / "X"),
                          "MPY_LIB_DIR": str(mpy / "lib" / "micropython-lib")})
    m.execute(str(ROOT / "boards" / "manifest.py"), monkeypatch)
    kmem_dir = ROOT / "firmware" / "kmem"
    assert m.calls == [
        ("include", (str(port_dir / "boards" / "manifest.py"),), {}),
        ("package", ("kmem",), {"base_path": str(ROOT / "firmware")}),
    ]
    assert (kmem_dir / "__init__.py").is_file()
    expected = sorted("kmem/" + p.relative_to(kmem_dir).as_posix() for p in kmem_dir.rglob("*.py"))
    assert sorted(m.files) == expected and "kmem/__init__.py" in m.files


def test_manifest_included_without_the_port_manifest(monkeypatch, tmp_path):
    # The emulated board's build: include("boards/manifest.py", port_manifest=False).
    m = ManifestRecorder({"PORT_DIR": str(tmp_path / "ports" / "qemu")}, port_manifest=False)
    m.execute(str(ROOT / "boards" / "manifest.py"), monkeypatch)
    assert m.calls == [("package", ("kmem",), {"base_path": str(ROOT / "firmware")})]
