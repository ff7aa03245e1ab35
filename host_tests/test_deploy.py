"""kmemhost.deploy (make deploy) and package.json (mip), on virtual boards: the same
mpremote code path a real board takes. Host-only: each test starts its own vboard, with its
own flash directory, so these run once per `make test`, not once per target."""
import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from kmemhost import ROOT, build, deploy
from kmemhost.profiles import load_profile
from kmemhost import targets
from kmemhost.targets import VirtualBoardSerial, make_target
from kmemhost.vboard import VirtualBoard

SOURCES = sorted(p.name for p in (build.FIRMWARE / "kmem").glob("*.py"))
MPYS = sorted(n[:-3] + ".mpy" for n in SOURCES)
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "tools"))


@pytest.fixture(scope="module")
def vboard():
    b = VirtualBoardSerial(load_profile("rpi_pico"), timeout=30)
    try:
        b.soft_reset()
        b.probe()
        yield b
    finally:
        b.close()
        b.remove_flash()


@pytest.fixture
def board(vboard):
    """The virtual RP2040 with an empty flash, just soft-reset, in the raw REPL."""
    for entry in os.listdir(vboard.flash_dir):
        path = os.path.join(vboard.flash_dir, entry)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    vboard.deployment = None
    vboard.soft_reset()
    yield vboard
    vboard.deployment = None


def flash_files(board):
    d = os.path.join(board.flash_dir, "lib", "kmem")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def imported(board, module="kmem"):
    board.soft_reset()
    return board.exec(f"import {module}\nprint({module}.__file__)").strip()


# --- flash: .mpy, copied only when changed ------------------------------------------

def test_deploy_copies_mpy_then_nothing(board):
    messages = []
    d = deploy.deploy(board, log=messages.append)
    assert (d.kind, d.arch, d.root) == ("mpy", build.host_arch(), "/lib/kmem")
    assert d.copied == MPYS and d.removed == [] and d.unchanged == []
    assert flash_files(board) == MPYS
    for name in MPYS:  # byte for byte what mpy-cross built
        on_flash = open(os.path.join(board.flash_dir, "lib", "kmem", name), "rb").read()
        assert on_flash == (build.BUILD / build.host_arch() / "kmem" / name).read_bytes()
    assert imported(board) == "/lib/kmem/__init__.mpy"
    # the vboard runs the host's arch: the profile's armv6m is reported, not used
    assert ("note: profile rpi_pico says arch armv6m, but the board reports x64; compiling for "
            "x64, since .mpy native code must match the board it runs on") in messages
    assert messages[-1].startswith(f"kmem -> /lib/kmem as .mpy (x64) [flash]: copied {len(SOURCES)}")

    again = deploy.deploy(board)
    assert (again.copied, again.removed, again.unchanged) == ([], [], MPYS)
    assert f"copied 0, unchanged {len(SOURCES)}, removed 0" in again.summary()
    with open(os.path.join(board.flash_dir, "lib", "kmem", "tlsf.mpy"), "r+b") as f:
        f.write(b"X")  # same name and size, other bytes: the board's sha256 differs
    assert deploy.deploy(board).copied == ["tlsf.mpy"]


def test_changed_source_redeploys_only_that_file(board, tmp_path, monkeypatch):
    # A private copy of firmware/ and build/: the real sources are never touched.
    shutil.copytree(build.FIRMWARE / "kmem", tmp_path / "firmware" / "kmem")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "FIRMWARE", tmp_path / "firmware")
    monkeypatch.setattr(build, "BUILD", tmp_path / "build")
    assert deploy.deploy(board).copied == MPYS
    with open(tmp_path / "firmware" / "kmem" / "structs.py", "a") as f:
        f.write("\nDEPLOY_TEST_MARK = 42\n")
    d = deploy.deploy(board)
    assert (d.copied, d.removed) == (["structs.mpy"], [])
    assert d.unchanged == [n for n in MPYS if n != "structs.mpy"]
    board.soft_reset()
    assert board.exec("import kmem.structs\nprint(kmem.structs.DEPLOY_TEST_MARK)") == "42\n"


def test_switching_between_py_and_mpy_removes_the_other_kind(board):
    deploy.deploy(board)
    d = deploy.deploy(board, py=True)
    assert (d.kind, d.copied, d.removed) == ("py", SOURCES, MPYS)
    assert any("asked for .py" in n for n in d.notes)
    assert flash_files(board) == SOURCES
    assert imported(board) == "/lib/kmem/__init__.py"
    d = deploy.deploy(board)
    assert (d.kind, d.copied, d.removed) == ("mpy", MPYS, SOURCES)
    assert imported(board) == "/lib/kmem/__init__.mpy"


def test_a_board_side_error_is_one_line(board):
    os.makedirs(os.path.join(board.flash_dir, "lib"))
    open(os.path.join(board.flash_dir, "lib", "kmem"), "w").close()  # a file, not a directory
    with pytest.raises(deploy.DeployError) as e:
        deploy.deploy(board)
    assert str(e.value) == "listdir /lib/kmem on the board failed: ENOTDIR"


# --- falling back to .py ----------------------------------------------------------------

@pytest.mark.parametrize("change, reason", [
    ({"mpy_sub": 2}, "the board loads .mpy v6.2 but mpy-cross emits v6.3"),
    ({"mpy_version": 5}, "the board loads .mpy v5.3 but mpy-cross emits v6"),
    ({"mpy_version": 0}, "the board reports no .mpy support"),
    ({"arch": None, "arch_index": 0}, "the board has no native code emitter"),
])
def test_mpy_mismatch_falls_back_to_py_and_says_so(board, change, reason):
    fake = copy.copy(board.info)  # what another firmware would report
    for k, v in change.items():
        setattr(fake, k, v)
    messages = []
    d = deploy.deploy(board, info=fake, log=messages.append)
    assert d.kind == "py" and d.copied == SOURCES
    assert any(m.startswith("note: " + reason) and m.endswith("deploying the .py sources instead")
               for m in messages), messages
    assert imported(board) == "/lib/kmem/__init__.py"


def test_asking_for_another_arch_falls_back_to_py(board):
    d = deploy.deploy(board, arch="armv6m")
    assert d.kind == "py"
    assert any(".mpy files compiled for armv6m cannot load on a board reporting arch x64" in n
               for n in d.notes)


def test_mpy_loads_follows_micropythons_rules():
    info = SimpleNamespace(mpy_version=6, mpy_sub=3, arch_index=2)
    assert deploy.mpy_loads((6, 3, 2), info)
    assert deploy.mpy_loads((6, 0, 0), info)       # bytecode only: any 6.x
    assert not deploy.mpy_loads((6, 3, 4), info)   # armv6m native code on x64
    assert not deploy.mpy_loads((6, 2, 2), info)   # native code needs the same sub-version
    assert not deploy.mpy_loads((5, 0, 0), info)


def test_shadowing_kmem_is_reported(board):
    board.exec("import os\nos.mkdir('/kmem')\nf = open('/kmem/__init__.py', 'w')\n"
               "f.write('SHADOW = 1\\n')\nf.close()")
    with pytest.raises(deploy.DeployError, match=r"loads kmem/__init__.py, not the deployed "
                                                 r"/lib/kmem: a kmem earlier on sys.path shadows it"):
        deploy.deploy(board)


# --- ram and mount: flash untouched ------------------------------------------------------

@pytest.mark.parametrize("fs", ["romfs", "littlefs"])
def test_ram_deploy_leaves_flash_alone_and_survives_soft_resets(board, monkeypatch, fs):
    monkeypatch.setattr(deploy, "RAM_FS", fs)
    d = deploy.deploy(board, mode="ram")
    assert (d.ram_fs, d.root, d.copied, d.imported_from) == (fs, "/ram/kmem", MPYS,
                                                            "/ram/kmem/__init__.mpy")
    assert os.listdir(board.flash_dir) == []
    board.deployment = d       # as the harness does: a soft reset rebuilds the RAM disk
    board.soft_reset()
    assert board.exec("import kmem\nkmem.init(4096)\nprint(kmem.__file__, "
                      "kmem.kmalloc(12) is not None)") == "/ram/kmem/__init__.mpy True\n"
    assert os.listdir(board.flash_dir) == []


def test_romfs_check_compares_the_image_with_the_build(board, monkeypatch):
    # --deploy romfs checks a ROMFS image the board already has (/rom on qemu): here the
    # image ram mode mounts at /ram stands in for it.
    monkeypatch.setattr(deploy, "RAM_FS", "romfs")
    monkeypatch.setattr(deploy, "ROMFS_MOUNT", "/ram")
    deploy.deploy(board, mode="ram")
    d = deploy.deploy(board, mode="romfs")
    assert (d.unchanged, d.copied, d.imported_from) == (MPYS, [], "/ram/kmem/__init__.mpy")
    with pytest.raises(deploy.DeployError, match=r"the ROMFS image at /ram/kmem does not hold "
                                                 r"this build of kmem \(differs: __init__.mpy, "):
        deploy.deploy(board, mode="romfs", py=True)
    files = dict(d.files, **{"kmem/tlsf.mpy": d.files["kmem/tlsf.mpy"] + b"\0"})  # sha256 differs
    with pytest.raises(deploy.DeployError, match=r"\(differs: tlsf.mpy\)"):
        deploy._check_romfs(board, deploy.Deployment("romfs", "mpy", d.arch, files, None, "/ram", []))
    board.soft_reset()  # RAM emptied: no image
    with pytest.raises(deploy.DeployError, match="the board has no /ram/kmem: no ROMFS image"):
        deploy.deploy(board, mode="romfs")


class FakeBoard:
    """Records what deploy does over the wire (the vboard does not emulate mpremote mount)."""

    timeout = 5

    def __init__(self, info):
        self.info, self.profile, self.scripts, self.mounted = info, load_profile("rpi_pico"), [], []
        self.transport = SimpleNamespace(mount_local=self.mounted.append)

    def step(self, timeout):
        return contextlib.nullcontext()

    def exec(self, code, timeout=None):
        self.scripts.append(code)
        if "kmem.__file__" in code:
            return f"/remote/kmem/__init__.{'py' if self.mounted[-1].endswith('firmware') else 'mpy'}\n"
        return ""


def test_mount_serves_the_build_from_the_host(board):
    fake = FakeBoard(board.info)
    d = deploy.deploy(fake, mode="mount")
    assert fake.mounted == [str(build.BUILD / build.host_arch())]
    assert any("sys.path.insert(0, '/remote')" in s for s in fake.scripts)
    assert (d.root, d.imported_from, d.copied) == ("/remote/kmem", "/remote/kmem/__init__.mpy", [])
    d.after_reset(fake)  # a soft reset unmounts: mounted again
    assert len(fake.mounted) == 2
    fake = FakeBoard(board.info)
    assert deploy.deploy(fake, mode="mount", py=True).kind == "py"
    assert fake.mounted == [str(build.FIRMWARE)]


# --- command line (make deploy) ------------------------------------------------------------

def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "kmemhost.deploy", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_deploys_then_copies_nothing(tmp_path):
    with VirtualBoard("esp32_generic", tmp_path / "flash") as vb:
        res = run_cli("--port", vb.pty, "--board", "esp32_generic")
        assert res.returncode == 0, res.stdout + res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].startswith(f"port:{vb.pty}: profile esp32_generic; MicroPython 1.")
        assert "heap 1" in lines[0]
        assert "note: profile esp32_generic says arch xtensawin, but the board reports x64" in res.stdout
        assert f"kmem -> /lib/kmem as .mpy (x64) [flash]: copied {len(SOURCES)}" in res.stdout
        assert sorted(os.listdir(tmp_path / "flash" / "lib" / "kmem")) == MPYS
        res = run_cli("--port", f"port:{vb.pty}", "--board", "esp32_generic")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"copied 0, unchanged {len(SOURCES)}, removed 0" in res.stdout


def test_cli_missing_port_fails_fast():
    start = time.monotonic()
    res = run_cli("--port", "/dev/ttyKMEM404")
    assert res.returncode == 1
    assert res.stderr.startswith("deploy failed: port /dev/ttyKMEM404 not found")
    assert time.monotonic() - start < 20


def test_make_deploy_passes_its_variables():
    res = subprocess.run(["make", "-n", "deploy", "PORT=id:E660", "BOARD=rpi_pico", "DEPLOY=ram"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "-m kmemhost.deploy --port id:E660 --board rpi_pico --deploy ram" in res.stdout


# --- package.json: mpremote mip install --------------------------------------------------

def test_package_json_lists_every_module():
    package = json.loads((ROOT / "package.json").read_text())
    assert sorted(package["urls"]) == [[f"kmem/{n}", f"firmware/kmem/{n}"] for n in SOURCES]
    assert package["version"]


def test_mip_install_from_the_checkout(tmp_path):
    with VirtualBoard("rpi_pico", tmp_path / "flash") as vb:
        res = subprocess.run([sys.executable, "-m", "mpremote", "connect", vb.pty,  # pyright: ignore
                              "mip", "install", "./package.json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Installing: /lib/kmem/tlsf.py" in res.stdout
        for name in SOURCES:
            assert ((tmp_path / "flash" / "lib" / "kmem" / name).read_bytes()
                    == (build.FIRMWARE / "kmem" / name).read_bytes())
        res = subprocess.run([sys.executable, "-m", "mpremote", "connect", vb.pty, "exec",  # pyright: ignore
                              "import kmem\nkmem.init(4096)\np = kmem.kmalloc(12)\n"
                              "print(kmem.__file__, kmem.ksize(p) >= 12, kmem.check())"],
                             capture_output=True, text=True, timeout=60)
        assert res.stdout == "/lib/kmem/__init__.py True True\n", res.stdout + res.stderr


def test_mount_without_a_terminal_says_so(capsys, monkeypatch):
    # CI and editors' task runners have no terminal for mpremote's REPL: a clear error,
    # before any port is opened (the port given does not exist).
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert deploy.main(["--deploy", "mount", "--port", "/dev/ttyKMEM-none"]) == 1
    err = capsys.readouterr().err
    assert "needs a terminal" in err and "--deploy flash or ram" in err


def test_py_beside_mpy_is_reported_at_import(tmp_path, kmem_mpy_dir):
    # What `mpremote mip install ./package.json` leaves on a board after `make deploy`:
    # .py and .mpy side by side in one kmem/, where MicroPython imports the .py.
    both = tmp_path / "kmem"
    shutil.copytree(kmem_mpy_dir / "kmem", both)
    for py in (build.FIRMWARE / "kmem").glob("*.py"):
        shutil.copy(py, both / py.name)
    out = make_target("unix", prelude=False, mpy_dir=tmp_path).exec("import kmem")
    assert out.startswith("kmem: warning: importing the .py sources, though ")
    assert "kmem/__init__.mpy is there too" in out
    # The usual case says nothing.
    assert make_target("unix", prelude=False, mpy_dir=kmem_mpy_dir).exec("import kmem") == ""


def test_kmem_over_a_real_mpremote_mount():
    # mpremote's mount intercepts the serial reads of every snippet: kmem imported from the
    # host through it, and snippets after a soft reset (remounted) still work.
    t = make_target("vboard:unix", deploy="mount")
    try:
        assert t.eval("kmem.__file__") == "/remote/kmem/__init__.mpy"
        assert t.eval("ksize(kmalloc(12)) >= 12")
        targets.begin_test()  # the next snippet starts from a soft reset
        assert t.eval("kmem.__file__.startswith('/remote/')")
    finally:
        t.close()
