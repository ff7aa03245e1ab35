"""make flash (tools/kmemhost/flash.py: mpflash) and boards/manifest.py, on the host only.

No board, no network, no `target` fixture, nothing installed: subprocess.run is replaced
unless a test runs the real CLI or make, and those only do dry runs.
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmemhost import ROOT, flash

PY = sys.executable
MPFLASH = str(Path(PY).parent / "mpflash")
PICO = [MPFLASH, "flash", "--board", "RPI_PICO", "--serial", "/dev/ttyACM0", "--version", "stable"]
ESP32 = [MPFLASH, "flash", "--board", "ESP32_GENERIC", "--serial", "/dev/ttyUSB0",
         "--version", "stable", "--erase"]


@pytest.fixture(autouse=True)
def calls(monkeypatch):
    """subprocess.run records its argv and succeeds; mpflash counts as installed."""
    done = []

    def fake_run(argv, **kw):
        assert kw.get("timeout"), argv
        done.append(argv)
        return subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(flash, "have_mpflash", lambda: True)
    return done


def run(capsys, *argv):
    """flash.main(argv) -> (exit status, stdout lines, stderr)."""
    code = flash.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.fixture
def drive(tmp_path):
    """A mounted RPI-RP2 drive (a board in BOOTSEL mode)."""
    path = tmp_path / "RPI-RP2"
    path.mkdir()
    (path / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nBoard-ID: RPI-RP2\n")
    return path


# --- the mpflash command --------------------------------------------------------------------

@pytest.mark.parametrize("board, port, expected", [
    ("rpi_pico", "/dev/ttyACM0", PICO),
    ("RPI_PICO", "/dev/ttyACM0", PICO),  # a board_id is accepted as the name
    ("esp32_generic", "/dev/ttyUSB0", ESP32),
])
def test_dry_run_prints_the_exact_mpflash_command(capsys, calls, board, port, expected):
    code, out, err = run(capsys, "--board", board, "--port", port, "--dry-run")
    assert code == 0, err
    assert out == [shlex.join(expected)]
    assert calls == []


def test_dry_run_quotes_and_needs_no_mpflash(capsys, monkeypatch, calls):
    monkeypatch.setattr(flash, "have_mpflash", lambda: False)
    code, out, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/tty ACM0", "--dry-run")
    assert code == 0
    assert shlex.split(out[0])[4:6] == ["--serial", "/dev/tty ACM0"]
    assert "'/dev/tty ACM0'" in out[0]
    assert "a real run first installs mpflash" in err
    assert calls == []


def test_mount_gives_volume_instead_of_serial(capsys, drive):
    code, out, err = run(capsys, "--board", "rpi_pico", "--mount", str(drive), "--dry-run")
    assert code == 0, err
    assert out == [shlex.join([MPFLASH, "flash", "--board", "RPI_PICO", "--volume", str(drive),
                               "--version", "stable"])]


def test_real_run_runs_mpflash(capsys, calls):
    code, out, err = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0")
    assert code == 0, err
    assert calls == [ESP32]
    assert out == ["+ " + shlex.join(ESP32)]


# --- first use: installing mpflash ------------------------------------------------------------

def test_first_use_installs_the_pinned_mpflash_then_flashes(capsys, monkeypatch, calls):
    monkeypatch.setattr(flash, "have_mpflash", lambda: False)
    code, out, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0")
    assert code == 0, err
    install = [PY, "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements-flash.txt")]
    assert calls == [install, PICO]
    assert out[0] == f"mpflash is not installed; installing it (first use): {shlex.join(install)}"
    pins = (ROOT / "requirements-flash.txt").read_text()
    assert "\nmpflash==" in pins and "\nesptool==" in pins


def test_have_mpflash_looks_for_the_module(monkeypatch):
    monkeypatch.undo()
    monkeypatch.setattr(sys, "path", [])  # nothing importable from sys.path
    monkeypatch.delitem(sys.modules, "mpflash", raising=False)
    assert flash.have_mpflash() is False


# --- errors: one line each, nothing run -----------------------------------------------------

def fails(capsys, calls, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == [] and calls == []
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_no_port_would_flash_every_board(capsys, calls):
    err = fails(capsys, calls, "--board", "rpi_pico", "--dry-run")
    assert "PORT=/dev/ttyACM0 (--port) or MOUNT=dir" in err and "every board" in err
    err = fails(capsys, calls, "--board", "esp32_generic")
    assert "PORT=" in err and "MOUNT" not in err


def test_unknown_board_and_no_board(capsys, calls):
    err = fails(capsys, calls, "--board", "teensy41", "--dry-run")
    assert "unknown board profile 'teensy41'" in err
    assert "available: esp32_generic, qemu_microbit, rpi_pico, unix" in err
    err = fails(capsys, calls, "--dry-run")
    assert "BOARD=NAME" in err and "rpi_pico" in err


def test_mount_that_is_not_a_uf2_drive(capsys, calls, tmp_path, drive):
    err = fails(capsys, calls, "--board", "rpi_pico", "--mount", str(tmp_path), "--dry-run")
    assert "is not a RPI-RP2 drive" in err and "BOOTSEL" in err
    err = fails(capsys, calls, "--board", "esp32_generic", "--mount", str(drive), "--dry-run")
    assert "MOUNT= (--mount) is for UF2 boards" in err


@pytest.mark.parametrize("status", [1, 2])
def test_mpflash_failing(capsys, monkeypatch, status):
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw:
                        subprocess.CompletedProcess(argv, status))
    code, _, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0")
    assert code == 1
    assert err == f"error: mpflash failed (exit status {status}): {shlex.join(PICO)}\n"


def test_install_failing_or_hanging(capsys, monkeypatch):
    monkeypatch.setattr(flash, "have_mpflash", lambda: False)
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw:
                        subprocess.CompletedProcess(argv, 1))
    code, _, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0")
    assert code == 1 and err.startswith("error: installing mpflash failed (exit status 1): ")

    def hang(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw["timeout"])
    monkeypatch.setattr(subprocess, "run", hang)
    code, _, err = run(capsys, "--board", "rpi_pico", "--port", "/dev/ttyACM0")
    assert code == 1
    assert err.startswith(f"error: installing mpflash did not finish within "
                          f"{flash.INSTALL_TIMEOUT}s")


@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("board", ["unix", "qemu_microbit"])
def test_nothing_to_flash(capsys, calls, board, dry):
    code, out, _ = run(capsys, "--board", board, *(["--dry-run"] if dry else []))
    assert code == 0 and calls == []
    assert len(out) == 1 and out[0].startswith(f"{board}: nothing to flash")


# --- FIRMWARE=file: what mpflash cannot do --------------------------------------------------

def test_local_esp32_image_is_written_by_esptool(capsys, calls, tmp_path):
    image = tmp_path / "my fw.bin"
    image.write_bytes(b"\xe9" + bytes(15))
    code, out, err = run(capsys, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                         "--firmware", str(image))
    esptool = [PY, "-m", "esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0",
               "--baud", "460800", "write-flash", "--erase-all", "0x1000", str(image)]
    assert code == 0, err
    assert calls == [esptool]
    assert out == ["+ " + shlex.join(esptool)]


def test_local_uf2_is_copied_onto_the_drive(capsys, calls, tmp_path, drive):
    image = tmp_path / "firmware.uf2"
    image.write_bytes(b"UF2\n" + bytes(508))
    code, out, err = run(capsys, "--board", "rpi_pico", "--firmware", str(image),
                         "--mount", str(drive), "--dry-run")
    assert code == 0, err
    assert out == [shlex.join(["cp", str(image), str(drive / "firmware.uf2")])]


def test_local_image_errors(capsys, calls, tmp_path):
    uf2 = tmp_path / "firmware.uf2"
    uf2.write_bytes(b"UF2\n")
    err = fails(capsys, calls, "--board", "rpi_pico", "--firmware", str(uf2), "--port", "/dev/x")
    assert "needs MOUNT=dir" in err and "BOOTSEL" in err
    err = fails(capsys, calls, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                "--firmware", str(uf2))
    assert "esp32_generic takes a .bin image, not firmware.uf2" in err
    err = fails(capsys, calls, "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
                "--firmware", str(tmp_path / "nope.bin"))
    assert "firmware file not found" in err


# --- the CLI and the Makefile rule --------------------------------------------------------------

def test_cli_module_entry_point(monkeypatch):
    monkeypatch.undo()  # the real subprocess.run
    res = subprocess.run(
        [PY, "-m", "kmemhost.flash", "--board", "esp32_generic", "--port", "/dev/ttyUSB0",
         "--dry-run"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "tools")),
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == shlex.join(ESP32) + "\n"


@pytest.mark.skipif(not shutil.which("make"), reason="make not installed")
def test_make_flash_dry_run_prints_the_mpflash_command(monkeypatch):
    monkeypatch.undo()
    # -o: take the venv as it is (never rebuild it from a test).
    res = subprocess.run(
        ["make", "--no-print-directory", "-s", "-o", ".venv/.installed", "flash",
         "BOARD=rpi_pico", "PORT=/dev/ttyACM0", "DRY_RUN=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    mpflash = str(ROOT / ".venv" / "bin" / "mpflash")  # the venv make uses
    assert res.stdout.splitlines()[-1] == shlex.join([mpflash, *PICO[1:]])
    res = subprocess.run(["make", "-s", "-o", ".venv/.installed", "flash", "BOARD=rpi_pico",
                          "DRY_RUN=1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "error: give PORT=" in res.stderr


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
