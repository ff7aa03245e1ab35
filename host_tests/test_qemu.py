"""The emulated board's tooling (kmemhost.qemu): building from a user's tree without touching
it, the mpy-tool alignment fix, the symbol-table check, clear errors without a toolchain or
a source; and, on --target qemu, a QEMU that stops answering fails like a dead board."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from kmemhost import ROOT, qemu
from kmemhost.targets import TargetTimeout

# The shape of upstream tools/mpy-tool.py (v1.28, v1.29) where it picks the code alignment.
MPY_TOOL_ALIGNMENT = """\
        if config.native_arch in (
            MP_NATIVE_ARCH_ARMV6,
            MP_NATIVE_ARCH_XTENSA,
            MP_NATIVE_ARCH_XTENSAWIN,
        ):
            # ARMV6 or Xtensa -- four byte align.
            self.fun_data_attributes += " __attribute__ ((aligned (4)))"
        elif (
            MP_NATIVE_ARCH_ARMV6M <= config.native_arch <= MP_NATIVE_ARCH_ARMV7EMDP
        ):
            self.fun_data_attributes += " __attribute__ ((aligned (2)))"
"""


def four_byte_arches(text):
    return text.split("if config.native_arch in (", 1)[1].split(")", 1)[0].split()


def test_mpy_tool_fix_is_applied_once_and_said(tmp_path):
    tool = tmp_path / "tools" / "mpy-tool.py"
    tool.parent.mkdir()
    tool.write_text(MPY_TOOL_ALIGNMENT)
    said = []
    assert qemu.fix_mpy_tool(tmp_path, said.append) == "applied"
    assert four_byte_arches(tool.read_text()) == [
        "MP_NATIVE_ARCH_ARMV6,", "MP_NATIVE_ARCH_ARMV6M,", "MP_NATIVE_ARCH_XTENSA,",
        "MP_NATIVE_ARCH_XTENSAWIN,"]
    assert "aligns frozen armv6m native code to 2 bytes" in said[0]
    assert qemu.fix_mpy_tool(tmp_path, said.append) == "present"
    assert len(said) == 1


def test_mpy_tool_of_another_shape_is_left_alone_and_said(tmp_path):
    tool = tmp_path / "tools" / "mpy-tool.py"
    tool.parent.mkdir()
    tool.write_text("ALIGN = {}\n")
    said = []
    assert qemu.fix_mpy_tool(tmp_path, said.append) == "not found"
    assert tool.read_text() == "ALIGN = {}\n" and "symbol check" in said[0]


@pytest.mark.skipif(bool(qemu.missing_tools("arm-none-eabi-as", "arm-none-eabi-nm")),
                    reason="needs the ARM toolchain (gcc-arm-none-eabi)")
def test_symbol_check_finds_native_code_at_2_mod_4(tmp_path):
    # Two native functions (a section attribute in mpy-tool's output) and one bytecode
    # function; the second native one lands at 2 mod 4, as mpy-tool's 2-byte alignment allows.
    (tmp_path / "fun.s").write_text(
        ".thumb\n.text\n.balign 4\n"
        ".global fun_data_kmem_tlsf_a\nfun_data_kmem_tlsf_a: .hword 0\n"
        ".global fun_data_kmem_tlsf_b\nfun_data_kmem_tlsf_b: .hword 0\n"
        ".global fun_data_kmem_kheap_bytecode\nfun_data_kmem_kheap_bytecode: .byte 0\n")
    subprocess.run(["arm-none-eabi-as", "-o", str(tmp_path / "fun.o"), str(tmp_path / "fun.s")],
                   check=True, timeout=60)
    native = '__attribute__((section(".text,\\"ax\\",%progbits @ "))) __attribute__ ((aligned (2)))'
    frozen_c = tmp_path / "frozen_content.c"
    frozen_c.write_text(f"static const byte fun_data_kmem_tlsf_a[2] {native} = {{\n"
                        f"static const byte fun_data_kmem_tlsf_b[2] {native} = {{\n"
                        "static const byte fun_data_kmem_kheap_bytecode[1] = {\n")
    assert qemu.misaligned_native_functions(tmp_path / "fun.o", frozen_c) == [
        ("fun_data_kmem_tlsf_b", 2)]


def test_build_without_a_source_says_what_to_do(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(qemu, "require_tools", lambda *tools: None)
    monkeypatch.setattr(qemu, "default_source", lambda: None)
    with pytest.raises(qemu.QemuError, match=r"no MicroPython source: make qemu-firmware "
                                             r"MICROPYTHON_SRC=DIR"):
        qemu.build_firmware()
    monkeypatch.setattr(qemu, "OUT", tmp_path)
    assert qemu.main(["build", "--src", str(tmp_path / "micropython")]) == 1
    assert "expected a MicroPython checkout or a .tar.gz" in capsys.readouterr().err
    # A wrong source keeps what was built from the right one.
    (tmp_path / "build-kmem").mkdir()
    (tmp_path / "micropython").mkdir()
    assert qemu.main(["build", "--src", str(tmp_path / "micropython")]) == 1
    assert (tmp_path / "build-kmem").is_dir()


def test_build_without_a_toolchain_prints_the_apt_get_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(qemu.QemuError) as e:
        qemu.build_firmware("/anywhere")
    assert "arm-none-eabi-gcc" in str(e.value)
    assert "apt-get install -y --no-install-recommends gcc-arm-none-eabi " \
           "libnewlib-arm-none-eabi qemu-system-arm" in str(e.value)
    assert "qemu-system-arm not found" in (qemu.available() or "")


def test_a_users_checkout_is_copied_not_touched(monkeypatch, tmp_path):
    user = tmp_path / "micropython"
    for path in ("ports/qemu/Makefile", "py/obj.c", ".git/HEAD", "lib/pico-sdk/.git",
                 "lib/pico-sdk/big.c", "lib/libm/math.c", "ports/qemu/build-MICROBIT/x.o"):
        (user / path).parent.mkdir(parents=True, exist_ok=True)
        (user / path).write_text(path)
    before = sorted(str(p.relative_to(user)) for p in user.rglob("*"))
    monkeypatch.setattr(qemu, "OUT", tmp_path / "build" / "qemu")
    top = qemu.prepare_source(user, log=lambda m: None)
    copied = sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_file())
    # No git metadata, no submodules, no build outputs; what the port builds from is there.
    assert copied == ["lib/libm/math.c", "ports/qemu/Makefile", "py/obj.c"]
    assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == before


def test_a_qemu_that_stops_answering_fails_like_a_dead_board(bare):
    if bare.kind != "qemu":
        pytest.skip("needs the emulated board (--target qemu)")
    assert bare.exec("print('alive')") == "alive\n"
    pid = bare.board.process.proc.pid
    os.kill(pid, signal.SIGSTOP)  # the board freezes: no byte ever comes back
    try:
        start = time.monotonic()
        with pytest.raises(TargetTimeout, match=r"^no answer from qemu within 2s$"):
            bare.exec("print('frozen')", timeout=2)
        assert time.monotonic() - start < 5
        # The harness restarts the board (a new QEMU), as a hung board is reset by hand.
        assert bare.exec("print('back')") == "back\n"
        assert bare.board.process.proc.pid != pid
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # killed and reaped by the restart
            pass


@pytest.mark.parametrize("required", [False, True])
def test_make_test_qemu_skips_plainly_unless_required(required, monkeypatch):
    # A user's fresh machine without a MicroPython source (or toolchain): said, not failed;
    # in CI (KMEM_REQUIRE_QEMU=1) the same is an error.
    monkeypatch.setenv("MICROPYTHON_SRC", "/nonexistent/micropython")
    why = qemu.available()  # the toolchain, if missing here, is named first
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["KMEM_REQUIRE_QEMU"] = "1" if required else ""
    res = subprocess.run(["make", "--no-print-directory", "test-qemu"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    if required:
        assert res.returncode != 0
        assert f"test-qemu: required, but {why}" in res.stderr
    else:
        assert res.returncode == 0, res.stderr
        assert f"*** SKIPPED the qemu targets: {why}\n" in res.stdout
