"""Pictures at the REPL: heap_map() draws the arena one character per slice, with the
key and the figures under it; mm_map() draws an address space as a bar of its areas over
their rights, next to mm_dump's lines."""
import re

import pytest

from helpers import output, run

KEY = ".#SMv="  # free, kmalloc block, kernel stack, mm_struct, vm_area_struct, control area


def test_heap_map_draws_each_kind_where_it_is_and_the_figures(target):
    lines = output(target, """
from kmem import tlsf
# The expected picture: what each byte belongs to, then per 8-byte slice the kind with the
# most bytes (a tie: the block, not the free space). Its buffers are made first, while the
# ESP32-sized heap still has 2 KB in one piece, and its loops are a function's: no new
# global to grow the snippet's globals (which needs their whole table anew) once the heap
# is in pieces.
kinds = bytearray(2048)
picture = bytearray(2048 // 8)
def expected(h):
    for i in range(h.size):
        kinds[i] = ord('=')
    for off, usable, kind, free in tlsf.blocks(h.arena):
        for i in range(off - 4, off + usable):
            kinds[i] = ord('.' if free else '#SMv'[kind])
    for n in range(len(picture)):
        most = -1
        for c in b'.#SMv=':  # >=: a later kind wins a tie
            k = 0
            for i in range(8 * n, 8 * n + 8):
                k += kinds[i] == c
            if k >= most:
                most, picture[n] = k, c
    return picture.decode()
h = Heap(2048)  # small: the ESP32-sized heap has little room beside the prelude's
ps = [h.kmalloc(60) for i in range(8)]
for p in ps[::2]:
    h.kfree(p)                 # 64-byte holes between 64-byte blocks
s = h.allocate_kernel_stack(248)
m = h.mm_create()
h.mmap_region(m, 0x10000, 0x1000, VM_READ)
h.heap_map()
print(expected(h))
print(*[h.stats()[k] for k in ('used', 'free', 'largest_free', 'free_blocks', 'live_blocks')])
""")
    rows, key, figures, expected, truth = lines[:-4], lines[-4], lines[-3], lines[-2], lines[-1]
    assert len(rows) == 4  # 2048 bytes: rows of 64 chars of 8 bytes
    addresses = [int(r.split()[0], 16) for r in rows]
    assert [b - a for a, b in zip(addresses, addresses[1:])] == [512] * 3
    picture = "".join(r.split()[1] for r in rows)
    assert picture == expected
    assert set(picture) == set(KEY) and re.search(r"(\.{6,}#{6,}){3}", picture)  # the holes
    assert key == ("%s free  %s kmalloc block  %s kernel stack  %s mm_struct  %s vm_area_struct"
                   "  %s control area  (1 char = 8 bytes)" % tuple(KEY))
    used, free, largest, nfree, live = map(int, truth.split())
    assert figures == ("used %d  free %d  largest free %d  free blocks %d  live blocks %d  "
                       "fragmentation %.2f" % (used, free, largest, nfree, live,
                                               1 - largest / free))


def test_a_bigger_heap_gets_bigger_slices_and_stays_on_one_screen(target):
    lines = output(target, """
Heap(16384).heap_map(16)
""")
    rows = lines[:-2]
    assert len(rows) == 16 and all(len(r.split()[1]) == 16 for r in rows)
    assert lines[-2].endswith("(1 char = 64 bytes)")
    assert lines[-1].endswith("fragmentation 0.00")


def test_mm_map_draws_each_area_over_its_rights_beside_its_maps_line(target):
    lines = output(target, """
m = mm_create()
mmap_region(m, 0x10000, 0x4000, VM_READ | VM_WRITE)
mmap_region(m, 0x16000, 0x8000, VM_READ | VM_EXEC)
mprotect(m, 0x11000, 0x1000, VM_READ)
mm_map(m)
mm_dump(m)
""")
    assert lines == [
        "00010000 ABCC..DDDDDDDD 0001e000",
        "         wrww  xxxxxxxx",
        "  A 00010000-00011000 rw-p",
        "  B 00011000-00012000 r--p",
        "  C 00012000-00014000 rw-p",
        "  D 00016000-0001e000 r-xp",
        "(1 char = 4 KiB)",
        "00010000-00011000 rw-p",
        "00011000-00012000 r--p",
        "00012000-00014000 rw-p",
        "00016000-0001e000 r-xp",
    ]


def test_mm_map_gives_far_apart_areas_a_column_each(target):
    lines = output(target, """
m = mm_create()
mmap_region(m, 0x08048000, 0x3000, VM_READ | VM_EXEC)
mmap_region(m, 0x0804c000, 0x2000, VM_READ | VM_WRITE)
mmap_region(m, 0xbfff0000, 0x10000, VM_READ | VM_WRITE | VM_GROWSDOWN)
mm_map(m)
mm_map(mm_create())
""")
    bar = lines[0].split()[1]
    assert bar.startswith("AB") and bar.endswith("C") and set(bar[2:-1]) == {"."}
    assert len(bar) <= 64 and lines[-1] == "(no areas)"


@pytest.mark.parametrize("call", ["heap_map(8)", "heap_map(1000)", "heap_map('64')",
                                  "mm_map(mm_create(), 3)"])
def test_a_bad_width_is_a_value_error(target, call):
    assert run(target, "result = raised(lambda: %s)" % call)[0] == "ValueError"


def test_mm_map_of_something_else_is_refused(target):
    got = run(target, "p = kmalloc(32)\nresult = raised(mm_map, p)")
    assert got[0] == "ValueError" and "is a kmalloc block, not an mm_struct" in got[1]


def test_watch_shows_the_heap_after_each_call_that_changes_it_until_unwatch(target):
    got = run(target, """
        import kmem
        shown = []
        init(4096)
        own = kmalloc
        watch(0, lambda: shown.append((stats()['live_blocks'], kmalloc is kmem.kmalloc
                                       and kmalloc is not own)))
        p = kmalloc(100)           # the name `from kmem import *` bound here, rebound
        q = kmem.kzalloc(40)
        ksize(p)                   # reads only: no picture
        kfree(p)
        m = mm_create()
        mmap_region(m, 0x10000, 0x1000, VM_READ)
        during = len(shown)
        unwatch()
        kfree(q)
        result = {'shown': shown, 'during': during, 'after': len(shown),
                  'restored': kmalloc is own and kmem.kmalloc is own}
    """)
    assert got["shown"] == [(1, True), (2, True), (1, True), (2, True), (3, True)]
    assert got["during"] == got["after"] == 5  # nothing after unwatch()
    assert got["restored"] is True


def test_watch_shows_at_most_once_per_interval(target):
    got = run(target, """
        shown = []
        watch(60000, lambda: shown.append(1))
        for i in range(20):
            kfree(kmalloc(16))
        unwatch()
        result = len(shown)
    """)
    assert got == 0  # the first minute has not passed


def test_watch_prints_heap_map_by_default(target):
    lines = output(target, """
        init(2048)
        watch()
        p = kmalloc(64)
        unwatch()
        kfree(p)
    """)
    assert lines[-2].startswith(". free  # kmalloc block")  # heap_map()'s key, figures
    assert re.fullmatch(r"used \d+  free \d+  largest free \d+  free blocks 1  live blocks 1"
                        r"  fragmentation 0\.00", lines[-1]), lines


@pytest.mark.parametrize("call, error", [("watch(-1)", "ValueError"),
                                         ("watch(1.5)", "ValueError"),
                                         ("watch(True)", "ValueError"),
                                         ("watch(0, 42)", "TypeError"),
                                         ("watch(0, 0)", "TypeError")])
def test_a_bad_watch_is_refused_and_changes_nothing(target, call, error):
    got = run(target, """
        import kmem
        before = (layout(), kmem.kmalloc)
        e = raised(lambda: %s)
        kfree(kmalloc(8))
        result = [e[0], e[1], before == (layout(), kmem.kmalloc)]
    """ % call)
    assert got[0] == error and got[1].startswith("watch: ") and got[2] is True
