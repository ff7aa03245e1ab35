"""kmemctl: the map of a target's heap (PNG, SVG, terminal) and the command line itself."""
import ast
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import tty

import pytest
from PIL import Image

from kmemhost import ROOT, heapmap
from helpers import output

# A known layout in a fresh 4 KiB default heap (small: room beside the prelude's on an
# ESP32-sized heap): a 500-byte block, a 1000-byte kernel stack,
# an mm_struct with one area, and a 200-byte block freed between them.
LAYOUT = """
init(4096)
p = kmalloc(500)
gap = kmalloc(200)
s = allocate_kernel_stack(1000)
m = mm_create()
mmap_region(m, 0x10000, 0x1000, VM_READ)
kfree(gap)
"""


def test_the_png_shows_each_block_in_its_colour_where_it_is(target, tmp_path):
    value, (p, gap, s) = target.eval("(result, (p, gap, s))", setup=LAYOUT + heapmap.SNIPPET)
    pic = heapmap.picture(value)
    path = tmp_path / "map.png"
    heapmap.png(pic, path, width=64)
    img = Image.open(path)
    img.load()
    piece, cells = pic.slices(64)
    assert piece == 8 and len(cells) == 512  # 4 KiB at 8 bytes a cell: 8 rows of 64
    assert img.size == (2 * heapmap.MARGIN + 64 * heapmap.CELL,
                        2 * heapmap.MARGIN + 8 * heapmap.CELL + 4 * heapmap.LINE)

    def colour_at(addr):
        n = (addr - pic.base) // piece
        return img.getpixel((heapmap.MARGIN + (n % 64) * heapmap.CELL + 3,
                             heapmap.MARGIN + (n // 64) * heapmap.CELL + 3))

    blocks = [(a, b, k) for a, b, k in pic.spans if k]  # used blocks and control area
    kinds = {k for _, _, k in pic.spans}
    assert kinds == {0, 1, 2, 3, 4, 5}
    for start, end, kind in pic.spans:  # the middle of each span wide enough for a cell
        if end - start >= 3 * piece:
            assert colour_at(pic.base + (start + end) // 2) == heapmap.COLOURS[kind], (
                heapmap.KINDS[kind], hex(start))
    assert blocks and colour_at(pic.base) == heapmap.COLOURS[heapmap.CONTROL]
    assert colour_at(p + 200) == heapmap.COLOURS[1]      # inside the 500-byte block
    assert colour_at(gap + 100) == heapmap.COLOURS[0]    # the freed block
    assert colour_at(s + 500) == heapmap.COLOURS[2]      # inside the stack


def test_the_terminal_map_is_the_boards_own_heap_map(target):
    lines = output(target, LAYOUT + "heap_map()\n" + heapmap.SNIPPET + "print(repr(result))\n")
    pic = heapmap.picture(ast.literal_eval(lines[-1]))
    assert heapmap.text(pic, 64) == lines[:-1]


def test_the_svg_has_a_cell_for_each_slice(target, tmp_path):
    pic = heapmap.fetch(target, LAYOUT)
    path = tmp_path / "map.svg"
    heapmap.svg(pic, path, width=64)
    text = path.read_text()
    assert text.startswith("<svg") and text.count("<title>") == 512
    assert "fragmentation" in text


# ---- the command line, against the board this session runs on --------------------------

def kmemctl(*args, timeout=180, env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tools"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "kmemhost", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture
def on_target(request, target):
    """kmemctl SUBCOMMAND ARGS with this session's --target, --deploy and --board: each
    command starts its own board (a vboard, a QEMU), as a user's would."""
    config = request.config
    spec = config.getoption("--target")
    opts = ["--target", spec]
    opts += ["--deploy", config.getoption("--deploy")] if config.getoption("--deploy") else []
    opts += ["--board", config.getoption("--board")] if config.getoption("--board") else []

    def run(command, *args, **kwargs):
        if target.kind == "port":  # a real board: the suite lets go of the port first
            target.close()
        return kmemctl(command, *opts, *args, **kwargs)
    run.target, run.opts, run.deploy = target, opts, config.getoption("--deploy")
    return run


def test_kmemctl_map_writes_the_png_of_a_fragmented_heap(on_target, tmp_path):
    out = on_target("map", "-c", LAYOUT, "-o", str(tmp_path / "cli.png"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == f"wrote {tmp_path / 'cli.png'}"
    # The same layout drawn here from the suite's own read: the very picture whose
    # colours test_the_png_shows_each_block_in_its_colour_where_it_is checks.
    heapmap.png(heapmap.fetch(on_target.target, LAYOUT), tmp_path / "here.png")
    cli, here = Image.open(tmp_path / "cli.png"), Image.open(tmp_path / "here.png")
    assert cli.format == "PNG" and cli.size == here.size == (
        2 * heapmap.MARGIN + 64 * heapmap.CELL, 2 * heapmap.MARGIN + 8 * heapmap.CELL + 4 * heapmap.LINE)
    assert cli.tobytes() == here.tobytes()
    assert {c for _, c in cli.getcolors()} >= set(heapmap.COLOURS)  # pyright: ignore


def test_kmemctl_map_prints_the_boards_heap_map(on_target):
    out = on_target("map", "-c", LAYOUT)
    assert out.returncode == 0, out.stderr

    def cells(lines):  # a board's arena address depends on its MicroPython heap's history
        return [re.sub("^[0-9a-f]{8} ", "", line) for line in lines]
    board = output(on_target.target, LAYOUT + "heap_map()\n")
    assert len(board) == 10 and cells(out.stdout.splitlines()) == cells(board)


def test_kmemctl_map_mm_prints_the_boards_mm_map(on_target):
    out = on_target("map", "--mm", "m", "-c", "m = mm_create()\n"
                    "mmap_region(m, 0x10000, 0x2000, VM_READ)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["00010000 AA 00012000", "         rr",
                                       "  A 00010000-00012000 r--p", "(1 char = 4 KiB)"]


PROGRAM = """
init(4096)
ps = [kmalloc(100 * (i + 1)) for i in range(4)]
print("four blocks")
kfree(ps[1])
kfree(ps[3])
print("two freed")
"""


def test_kmemctl_map_watch_redraws_after_each_call_while_the_program_runs(on_target, tmp_path):
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    out = on_target("map", "--watch", "--interval", "0", "--run", str(program))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    shown = [line for line in lines
             if not re.match("-- picture|[0-9a-f]{8} |[.] free", line)]
    figures = [line for line in shown if line.startswith("used ")]
    said = [line for line in shown if not line.startswith("used ")]
    # The start, init, 4 kmallocs, 2 kfrees, the end; the program's own lines in between.
    assert [line for line in lines if line.startswith("-- picture")] == [
        f"-- picture {n}" for n in range(1, 10)]
    assert said == ["four blocks", "two freed"]
    assert lines.index("four blocks") < lines.index("-- picture 7") < lines.index("two freed")
    live = [int(f.split("live blocks ")[1].split()[0]) for f in figures]
    assert live[1:] == [0, 1, 2, 3, 4, 3, 2, 2]


def test_kmemctl_map_watch_rewrites_the_png(on_target, tmp_path):
    out = on_target("map", "--watch", "--interval", "0", "-c", PROGRAM,
                    "-o", str(tmp_path / "w.png"))
    assert out.returncode == 0, out.stderr
    assert [line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("pic")] \
        == [f"picture {n}" for n in range(1, 10)]
    assert Image.open(tmp_path / "w.png").format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.png"]  # no part file left


def test_kmemctl_map_watch_reports_the_programs_exception_in_one_line(on_target):
    out = on_target("map", "--watch", "-c", "kmalloc(16)\nraise ValueError('bad program')")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "kmemctl map: ValueError: bad program"
    out = on_target("map", "--watch", "-c", "import sys\nsys.exit(3)")
    assert out.returncode == 1 and out.stderr.strip() == "kmemctl map: SystemExit: exit status 3"


def test_kmemctl_map_watch_goes_on_after_a_traceback_the_program_prints(on_target):
    out = on_target("map", "--watch", "--interval", "0", "-c", """import sys
try:
    raise KeyError(1)
except KeyError as e:
    sys.print_exception(e)
print("after")
p = kmalloc(100)
""")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert '  File "<string>", line 3, in <module>' in lines  # the program's own line numbers
    assert lines.index("after") < lines.index("-- picture 2") < lines.index("-- picture 3")


def test_kmemctl_deploy_puts_kmem_where_the_target_imports_it(on_target):
    out = on_target("deploy")
    assert out.returncode == 0, out.stderr
    if on_target.target.kind == "unix":
        path = out.stdout.split(" in ")[1].split(" (")[0]
        assert os.path.isfile(os.path.join(path, "kmem", "__init__.mpy"))
    else:
        assert "MicroPython 1." in out.stdout
        assert "kmem -> " in out.stdout or "kmem frozen into the firmware" in out.stdout


def test_kmemctl_test_runs_the_suite_on_the_target(on_target):
    out = on_target("test", "host_tests/test_kmalloc.py::test_blocks_hold_their_own_data",
                    "-p", "no:cacheprovider")
    assert out.returncode == 0, out.stdout
    assert f"kmem target: {on_target.target.name} " in out.stdout
    assert "= 1 passed" in out.stdout.splitlines()[-1]


def test_kmemctl_fuzz_runs_the_long_fuzz_for_as_many_sequences_as_asked(on_target):
    out = on_target("fuzz", "--examples", "2", timeout=300)
    assert out.returncode == 0, out.stdout
    last = out.stdout.splitlines()[-1]
    assert " passed" in last and "failed" not in last and "skipped" not in last, out.stdout


def test_kmemctl_bench_measures_and_writes_its_json(on_target, tmp_path):
    out = on_target("bench", "--quick", "--rounds", "1", "--output", str(tmp_path), timeout=300)
    assert "bench failed" not in out.stderr, out.stderr
    (result,) = tmp_path.iterdir()
    figures = json.loads(result.read_text())
    assert figures["pair_ns"] and all(v["median"] > 0 for v in figures["pair_ns"].values())
    assert out.returncode == (0 if all(v[3] for v in figures["verdicts"]) else 1)


def test_kmemctl_repl_gives_a_repl_with_kmem(on_target):
    master, slave = pty.openpty()
    # Raw from the start: mpremote prints its banner before it makes the terminal raw, and a
    # \r typed in between would reach the board as \n, which its REPL ignores.
    tty.setraw(slave)
    proc = subprocess.Popen([sys.executable, "-m", "kmemhost", "repl",
                             *on_target.opts], stdin=slave, stdout=slave,
                            stderr=slave, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "tools")))
    os.close(slave)
    seen = bytearray()

    def read_until(token, timeout=60):
        deadline = time.monotonic() + timeout
        while token not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:  # the other end closed
                    break
        return token in seen

    try:
        if on_target.target.kind != "unix":  # mpremote's banner, then the board's prompt
            assert read_until(b"Ctrl-x"), bytes(seen)
            os.write(master, b"\r")
        assert read_until(b">>> "), bytes(seen)
        os.write(master, b"import kmem; print(kmem.stats()['free'] > 0, 6 * 7)\r")
        assert read_until(b"True 42"), bytes(seen)
        os.write(master, b"\x04" if on_target.target.kind == "unix" else b"\x1d")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_a_board_kmemctl_starts_serves_the_other_commands(on_target, tmp_path):
    kind = on_target.target.kind
    if kind == "port":
        pytest.skip("starts an emulated or virtual board beside the one under test")
    pty_file = tmp_path / "pty"
    deploy = on_target.deploy or "romfs"
    if kind == "qemu":
        start = ["qemu", "--frozen" if deploy == "frozen" else "--romfs"]
        opts = ["--deploy", deploy]
    else:
        start = ["vboard", "--with-kmem", "--profile", on_target.target.profile["name"],
                 "--flash", str(tmp_path / "flash")]  # not the flash `make vboard` uses
        opts = []
    log = (tmp_path / "board.log").open("w")
    board = subprocess.Popen([sys.executable, "-m", "kmemhost", *start, "--pty-file",
                              str(pty_file)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                             env=dict(os.environ, PYTHONPATH=str(ROOT / "tools")))
    try:
        deadline = time.monotonic() + 60
        while not pty_file.exists() and board.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pty_file.exists():
            board.kill()
            board.wait(timeout=10)
            pytest.fail(f"the board did not start: {(tmp_path / 'board.log').read_text()}")
        device = pty_file.read_text().strip()
        out = kmemctl("map", "--target", f"port:{device}", *opts, "-c", LAYOUT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1].startswith("used ")
        assert board.poll() is None  # still up after the command let go of it
    finally:
        board.terminate()
        try:
            board.wait(timeout=30)
        except subprocess.TimeoutExpired:
            board.kill()
            board.wait()
        log.close()


def test_kmemctl_says_in_one_line_when_there_is_no_board():
    out = kmemctl("map", "--target", "port:/dev/kmem-no-such-port")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "/dev/kmem-no-such-port" in out.stderr


def test_kmemctl_says_in_one_line_when_the_emulated_boards_tools_are_missing(tmp_path):
    os.symlink(sys.executable, tmp_path / "python")  # a PATH with no qemu-system-arm
    out = kmemctl("map", "--target", "qemu", env={"PATH": str(tmp_path)})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "qemu-system-arm not found" in out.stderr


def test_kmemctl_flash_dry_run_prints_the_mpflash_command():
    out = kmemctl("flash", "--board", "rpi_pico", "--port", "/dev/ttyACM0", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].endswith(
        "mpflash flash --board RPI_PICO --serial /dev/ttyACM0 --version stable")


def test_kmemctl_targets_lists_the_profiles():
    out = kmemctl("targets")
    assert out.returncode == 0 and "rpi_pico" in out.stdout and "esp32_generic" in out.stdout


def test_the_address_space_png_colours_each_area_by_its_rights(target, tmp_path):
    areas = heapmap.fetch_areas(target, "m", setup="""
m = mm_create()
mmap_region(m, 0x10000, 0x4000, VM_READ | VM_WRITE)
mmap_region(m, 0x16000, 0x8000, VM_READ | VM_EXEC)
mprotect(m, 0x11000, 0x1000, VM_READ)
""")
    assert areas == [(0x10000, 0x11000, 3), (0x11000, 0x12000, 1), (0x12000, 0x14000, 3),
                     (0x16000, 0x1E000, 5)]
    path = tmp_path / "mm.png"
    heapmap.areas_png(areas, path, width=64)
    img = Image.open(path)
    img.load()
    column = [img.getpixel((heapmap.MARGIN + c * heapmap.CELL + 3, heapmap.MARGIN + 3))
              for c in range(16)]
    w, r, x = (heapmap.RIGHTS_COLOURS[k] for k in "wrx")
    white = (255, 255, 255)
    assert column == [w, r, w, w, white, white] + [x] * 8 + [white, white]


