"""kmemctl: the map of a target's heap (PNG, SVG, terminal) and the command line itself."""
import ast
import os
import subprocess
import sys

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


def kmemctl(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tools"))
    return subprocess.run([sys.executable, "-m", "kmemhost", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


def test_kmemctl_map_writes_a_png_from_the_unix_port(tmp_path):
    out = kmemctl("map", "-o", str(tmp_path / "m.png"), "-c", "p = kmalloc(3000)")
    assert out.returncode == 0, out.stderr
    img = Image.open(tmp_path / "m.png")
    assert img.format == "PNG" and img.size[0] == 2 * heapmap.MARGIN + 64 * heapmap.CELL
    out = kmemctl("map", "-c", "p = kmalloc(3000)")
    assert out.returncode == 0 and out.stdout.splitlines()[-1].startswith("used ")


def test_kmemctl_says_in_one_line_when_there_is_no_board():
    out = kmemctl("map", "--target", "port:/dev/kmem-no-such-port")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "/dev/kmem-no-such-port" in out.stderr


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


def test_kmemctl_map_mm_prints_the_boards_mm_map():
    out = kmemctl("map", "--mm", "m", "-c", "m = mm_create()\n"
                  "mmap_region(m, 0x10000, 0x2000, VM_READ)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["00010000 AA 00012000", "         rr",
                                       "  A 00010000-00012000 r--p", "(1 char = 4 KiB)"]
