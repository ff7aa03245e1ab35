"""Process address space rules: mmap_region, munmap, mprotect, find_vma, brk.

Areas are kept sorted by start, never overlap, are page aligned, and adjacent
areas with equal flags are merged.
"""
from helpers import VM_EXEC, VM_GROWSUP, VM_READ, VM_SHARED, VM_WRITE, run

R, RW, RX = VM_READ, VM_READ | VM_WRITE, VM_READ | VM_EXEC
HEAP = VM_READ | VM_WRITE | VM_GROWSUP


def test_mmap_region_returns_start_and_keeps_areas_sorted(target):
    starts, areas = run(target, '''
        m = mm_create()
        starts = [mmap_region(m, 0x5000, 0x1000, VM_READ),
                  mmap_region(m, 0x1000, 0x1000, VM_READ | VM_WRITE),
                  mmap_region(m, 0x3000, 0x1000, VM_READ | VM_EXEC)]
        result = (starts, vma_list(m))
    ''')
    assert starts == [0x5000, 0x1000, 0x3000]
    assert areas == [(0x1000, 0x2000, RW), (0x3000, 0x4000, RX), (0x5000, 0x6000, R)]


def test_mmap_region_rounds_length_up_to_whole_pages(target):
    areas = run(target, '''
        m = mm_create()
        mmap_region(m, 0x1000, 1, VM_READ)
        mmap_region(m, 0x10000, 0x1001, VM_READ | VM_WRITE)
        mmap_region(m, 0x20000, 0x1000, VM_READ | VM_EXEC)
        result = vma_list(m)
    ''')
    assert areas == [(0x1000, 0x2000, R), (0x10000, 0x12000, RW), (0x20000, 0x21000, RX)]


def test_overlapping_mmap_region_raises_eexist_and_changes_nothing(target):
    r = run(target, '''
        m = mm_create()
        mmap_region(m, 0x4000, 0x2000, VM_READ)            # [0x4000, 0x6000)
        before = (vma_list(m), layout())
        attempts = ((0x3000, 0x2000),   # runs into the start
                    (0x4000, 0x1000),   # same start
                    (0x5000, 0x1000),   # inside
                    (0x5000, 0x2000),   # runs past the end
                    (0x2000, 0x8000))   # covers it
        result = dict(eexist=[errno_of(mmap_region, m, s, n, flags) == errno.EEXIST
                              for s, n in attempts for flags in (VM_READ, VM_READ | VM_WRITE)],
                      unchanged=(vma_list(m), layout()) == before, ok=check())
    ''')
    assert r["eexist"] == [True] * 10
    assert r["unchanged"] is True
    assert r["ok"] is True


def test_mmap_region_rejects_bad_arguments_with_value_error(target):
    r = run(target, '''
        m = mm_create()
        mmap_region(m, 0x8000, 0x1000, VM_READ)
        before = (vma_list(m), layout())
        bad = {
            'unaligned start': (m, 0x1001, 0x1000, VM_READ),
            'zero length': (m, 0x1000, 0, VM_READ),
            'negative length': (m, 0x1000, -0x1000, VM_READ),
            'unknown flag 0x40': (m, 0x1000, 0x1000, 0x40),
            'unknown flag 0x100': (m, 0x1000, 0x1000, VM_READ | 0x100),
            'past 4 GiB': (m, 0xFFFFF000, 0x2000, VM_READ),
            'negative start': (m, -0x1000, 0x1000, VM_READ),
        }
        result = dict(types=dict((k, (raised(mmap_region, *a) or ('no error',))[0]) for k, a in bad.items()),
                      unchanged=(vma_list(m), layout()) == before)
    ''')
    assert r["types"] == dict.fromkeys(r["types"], "ValueError")
    assert len(r["types"]) == 7
    assert r["unchanged"] is True


def test_munmap_and_mprotect_reject_bad_arguments_with_value_error(target):
    r = run(target, '''
        m = mm_create()
        mmap_region(m, 0x1000, 0x4000, VM_READ)
        before = (vma_list(m), layout())
        ranges = {
            'unaligned start': (0x1800, 0x1000),
            'zero length': (0x1000, 0),
            'negative length': (0x1000, -1),
            'past 4 GiB': (0xFFFFF000, 0x2000),
            'negative start': (-0x1000, 0x2000),
        }
        types = {}
        for k, (s, n) in ranges.items():
            types['munmap ' + k] = (raised(munmap, m, s, n) or ('no error',))[0]
            if k != 'zero length':  # mprotect of nothing does nothing, as in Linux
                types['mprotect ' + k] = (raised(mprotect, m, s, n, VM_READ) or ('no error',))[0]
        types['mprotect unknown flag'] = (raised(mprotect, m, 0x1000, 0x1000, 0x40) or ('no error',))[0]
        types['mprotect VM_SHARED'] = (raised(mprotect, m, 0x1000, 0x1000, VM_SHARED) or ('no error',))[0]
        result = dict(types=types, unchanged=(vma_list(m), layout()) == before)
    ''')
    assert r["types"] == dict.fromkeys(r["types"], "ValueError")
    assert len(r["types"]) == 11
    assert r["unchanged"] is True


def test_mprotect_changes_only_the_access_rights_as_linux_does(target):
    r = run(target, '''
        m = mm_create()
        mmap_region(m, 0x10000, 0x2000, VM_READ | VM_WRITE | VM_SHARED)
        mmap_region(m, 0x12000, 0x2000, VM_READ | VM_GROWSDOWN)
        before = vma_list(m)
        nothing = (mprotect(m, 0x10000, 0, VM_EXEC), mprotect(m, 0x50000, 0, VM_READ),
                   mprotect(m, 0xfffff000, 0, VM_READ))  # Linux checks only the alignment
        unchanged = vma_list(m) == before
        mprotect(m, 0x11000, 0x2000, VM_READ)        # across both areas
        result = dict(nothing=nothing, unchanged=unchanged, areas=vma_list(m), ok=check())
    ''')
    SH, GD = 0x08, 0x20  # VM_SHARED, VM_GROWSDOWN
    assert r["nothing"] == (None, None, None) and r["unchanged"] is True  # length 0: a no-op
    assert r["areas"] == [(0x10000, 0x11000, RW | SH), (0x11000, 0x12000, R | SH),
                          (0x12000, 0x14000, R | GD)]
    assert r["ok"] is True


def test_adjacent_areas_with_equal_flags_merge(target):
    r = run(target, '''
        m = mm_create()
        live = stats()['live_blocks']
        steps = []
        for start in (0x3000, 0x1000, 0x2000, 0x4000, 0x0000):
            mmap_region(m, start, 0x1000, VM_READ | VM_WRITE)
            steps.append(vma_list(m))
        result = dict(steps=steps, vma_blocks=stats()['live_blocks'] - live, ok=check())
    ''')
    assert r["steps"] == [
        [(0x3000, 0x4000, RW)],
        [(0x1000, 0x2000, RW), (0x3000, 0x4000, RW)],
        [(0x1000, 0x4000, RW)],                 # the gap filled: all three merged
        [(0x1000, 0x5000, RW)],                 # appended at the end
        [(0x0000, 0x5000, RW)],                 # prepended at the front
    ]
    assert r["vma_blocks"] == 1                 # merging released the extra descriptors
    assert r["ok"] is True


def test_adjacent_areas_with_different_flags_stay_separate(target):
    areas = run(target, '''
        m = mm_create()
        mmap_region(m, 0x1000, 0x1000, VM_READ)
        mmap_region(m, 0x2000, 0x1000, VM_READ | VM_WRITE)
        mmap_region(m, 0x3000, 0x1000, VM_READ)
        mmap_region(m, 0x4000, 0x1000, VM_READ | VM_SHARED)
        result = vma_list(m)
    ''')
    assert areas == [(0x1000, 0x2000, R), (0x2000, 0x3000, RW), (0x3000, 0x4000, R),
                     (0x4000, 0x5000, R | VM_SHARED)]


def test_munmap_splits_trims_and_removes_areas(target):
    r = run(target, '''
        m = mm_create()
        live = stats()['live_blocks']
        mmap_region(m, 0x10000, 0x8000, VM_READ | VM_WRITE)     # [0x10000, 0x18000)
        steps = []
        for s, n in ((0x12000, 0x1000),     # hole in the middle: split
                     (0x20000, 0x4000),     # nothing mapped there
                     (0x10000, 0x1000),     # head
                     (0x17000, 0x3000),     # tail and beyond
                     (0x11000, 0x3000),     # across the hole, into the next area
                     (0x14000, 1)):         # rounded up to one page
            steps.append((munmap(m, s, n), vma_list(m)))
        munmap(m, 0, 0x100000)              # everything
        result = dict(steps=steps, last=vma_list(m), head=mm(m).mmap,
                      vma_blocks=stats()['live_blocks'] - live, ok=check())
    ''')
    assert r["steps"] == [
        (None, [(0x10000, 0x12000, RW), (0x13000, 0x18000, RW)]),
        (None, [(0x10000, 0x12000, RW), (0x13000, 0x18000, RW)]),
        (None, [(0x11000, 0x12000, RW), (0x13000, 0x18000, RW)]),
        (None, [(0x11000, 0x12000, RW), (0x13000, 0x17000, RW)]),
        (None, [(0x14000, 0x17000, RW)]),
        (None, [(0x15000, 0x17000, RW)]),
    ]
    assert r["last"] == []
    assert r["head"] == 0
    assert r["vma_blocks"] == 0
    assert r["ok"] is True


def test_mprotect_splits_and_merges_back(target):
    r = run(target, '''
        m = mm_create()
        live = stats()['live_blocks']
        mmap_region(m, 0x10000, 0x4000, VM_READ | VM_WRITE)     # [0x10000, 0x14000)
        steps = []
        for s, n, flags in ((0x11000, 0x1000, VM_READ),                 # middle: three areas
                            (0x11000, 0x1000, VM_READ | VM_WRITE),      # back: one area
                            (0x10000, 0x4000, VM_READ | VM_EXEC),       # whole area
                            (0x10000, 0x1000, VM_READ),                 # head
                            (0x13000, 0x1000, VM_READ),                 # tail
                            (0x10000, 0x4000, VM_READ | VM_WRITE)):     # across all three
            steps.append((mprotect(m, s, n, flags), vma_list(m), stats()['live_blocks'] - live))
        result = dict(steps=steps, ok=check())
    ''')
    assert r["steps"] == [
        (None, [(0x10000, 0x11000, RW), (0x11000, 0x12000, R), (0x12000, 0x14000, RW)], 3),
        (None, [(0x10000, 0x14000, RW)], 1),
        (None, [(0x10000, 0x14000, RX)], 1),
        (None, [(0x10000, 0x11000, R), (0x11000, 0x14000, RX)], 2),
        (None, [(0x10000, 0x11000, R), (0x11000, 0x13000, RX), (0x13000, 0x14000, R)], 3),
        (None, [(0x10000, 0x14000, RW)], 1),
    ]
    assert r["ok"] is True


def test_mprotect_merges_with_a_neighbouring_area(target):
    areas = run(target, '''
        m = mm_create()
        mmap_region(m, 0x20000, 0x1000, VM_READ)
        mmap_region(m, 0x21000, 0x1000, VM_READ | VM_WRITE)
        mmap_region(m, 0x22000, 0x1000, VM_READ)
        mprotect(m, 0x21000, 0x1000, VM_READ)
        result = vma_list(m)
    ''')
    assert areas == [(0x20000, 0x23000, R)]


def test_mprotect_of_an_unmapped_range_raises_enomem_and_changes_nothing(target):
    r = run(target, '''
        m = mm_create()
        mmap_region(m, 0x10000, 0x1000, VM_READ | VM_WRITE)
        mmap_region(m, 0x12000, 0x1000, VM_READ | VM_WRITE)
        before = (vma_list(m), layout())
        result = dict(
            across_hole=errno_of(mprotect, m, 0x10000, 0x3000, VM_READ) == errno.ENOMEM,
            nothing_there=errno_of(mprotect, m, 0x30000, 0x1000, VM_READ) == errno.ENOMEM,
            past_the_end=errno_of(mprotect, m, 0x12000, 0x2000, VM_READ) == errno.ENOMEM,
            before_the_start=errno_of(mprotect, m, 0xF000, 0x2000, VM_READ) == errno.ENOMEM,
            unchanged=(vma_list(m), layout()) == before, ok=check())
    ''')
    assert r == dict(across_hole=True, nothing_there=True, past_the_end=True,
                     before_the_start=True, unchanged=True, ok=True)


def test_find_vma_returns_the_first_area_ending_above_the_address(target):
    r = run(target, '''
        m = mm_create()
        empty = find_vma(m, 0x1000)
        mmap_region(m, 0x10000, 0x1000, VM_READ)            # A = [0x10000, 0x11000)
        mmap_region(m, 0x14000, 0x2000, VM_READ | VM_WRITE) # B = [0x14000, 0x16000)

        def area(p):
            return None if p is None else (vma(p).start, vma(p).end)

        probes = (0, 0xFFFF, 0x10000, 0x10FFF, 0x11000, 0x13FFF, 0x14000, 0x15FFF,
                  0x16000, 0xFFFFFFFF)
        result = dict(empty=empty, found=[(a, area(find_vma(m, a))) for a in probes],
                      head_is_a=find_vma(m, 0x10000) == mm(m).mmap)
    ''')
    A, B = (0x10000, 0x11000), (0x14000, 0x16000)
    assert r["empty"] is None
    assert r["found"] == [(0, A), (0xFFFF, A), (0x10000, A), (0x10FFF, A),
                          (0x11000, B),            # in the gap: the next area up
                          (0x13FFF, B), (0x14000, B), (0x15FFF, B),
                          (0x16000, None), (0xFFFFFFFF, None)]
    assert r["head_is_a"] is True


def test_brk_grows_shrinks_and_fails_by_returning_the_old_end(target):
    r = run(target, '''
        m = mm_create()
        mm(m).start_heap = 0x20000
        mm(m).end_heap = 0x20000
        steps = []

        def step(new_end):
            steps.append((brk(m, new_end), mm(m).end_heap, vma_list(m)))

        step(0x20800)        # grow: the heap area covers whole pages
        step(0x23000)        # grow more
        step(0x21004)        # shrink
        step(0x21800)        # within the same page: only the break moves
        step(0x1F000)        # below start_heap: refused
        mmap_region(m, 0x24000, 0x1000, VM_READ)
        step(0x24001)        # would overlap the area at 0x24000: refused
        step(0x24000)        # right up to it is fine (different flags, no merge)
        step(0x20000)        # shrink to nothing: the heap area goes away
        result = dict(steps=steps, ok=check())
    ''')
    other = (0x24000, 0x25000, R)
    assert r["steps"] == [
        (0x20800, 0x20800, [(0x20000, 0x21000, HEAP)]),
        (0x23000, 0x23000, [(0x20000, 0x23000, HEAP)]),
        (0x21004, 0x21004, [(0x20000, 0x22000, HEAP)]),
        (0x21800, 0x21800, [(0x20000, 0x22000, HEAP)]),
        (0x21800, 0x21800, [(0x20000, 0x22000, HEAP)]),
        (0x21800, 0x21800, [(0x20000, 0x22000, HEAP), other]),
        (0x24000, 0x24000, [(0x20000, 0x24000, HEAP), other]),
        (0x20000, 0x20000, [other]),
    ]
    assert r["ok"] is True


def test_brk_fails_by_returning_the_old_end_when_the_arena_is_full(target):
    r = run(target, '''
        h = Heap(2048)
        m = h.mm_create()
        h.mm(m).start_heap = 0x20000
        h.mm(m).end_heap = 0x20000
        hog = fill(8, h)
        got = h.brk(m, 0x21000)
        result = dict(got=got, end=h.mm(m).end_heap, areas=h.vma_list(m), ok=h.check())
    ''')
    assert r == dict(got=0x20000, end=0x20000, areas=[], ok=True)


def test_mmap_region_raises_enomem_when_the_arena_is_full(target):
    r = run(target, '''
        h = Heap(2048)
        m = h.mm_create()
        h.mmap_region(m, 0x1000, 0x1000, VM_READ)
        h.mmap_region(m, 0x5000, 0x1000, VM_READ)
        hog = fill(8, h)
        before = (h.vma_list(m), layout(h))
        enomem = errno_of(h.mmap_region, m, 0x3000, 0x1000, VM_READ | VM_WRITE) == errno.ENOMEM
        result = dict(hog=len(hog) > 0, enomem=enomem,
                      unchanged=(h.vma_list(m), layout(h)) == before, ok=h.check())
    ''')
    assert r == dict(hog=True, enomem=True, unchanged=True, ok=True)


FULL_SMALL_HEAP = '''
h = Heap(1024)  # small: its block lists fit an ESP32-sized Python heap
m = h.mm_create()
h.mmap_region(m, 0x10000, 0x4000, VM_READ | VM_WRITE)     # [0x10000, 0x14000)
hog = fill(8, h)
# Give back two neighbouring 8-byte blocks: room for exactly one more
# vm_area_struct, while a split in the middle needs two.
blocks = list(h.walk())
i = len(blocks) - 1
while not (blocks[i][0] in hog and blocks[i - 1][0] in hog):
    i -= 1
h.kfree(blocks[i][0])
h.kfree(blocks[i - 1][0])
before = (h.vma_list(m), layout(h))
'''


def test_mprotect_split_without_room_raises_enomem_and_changes_nothing(target):
    r = run(target, FULL_SMALL_HEAP, '''
        enomem = errno_of(h.mprotect, m, 0x11000, 0x1000, VM_READ) == errno.ENOMEM
        result = dict(enomem=enomem, unchanged=(h.vma_list(m), layout(h)) == before,
                      ok=h.check())
    ''')
    assert r == dict(enomem=True, unchanged=True, ok=True)


def test_munmap_split_without_room_raises_enomem_and_changes_nothing(target):
    r = run(target, FULL_SMALL_HEAP, '''
        h.mmap_region(m, 0x20000, 0x1000, VM_READ)          # takes the last free struct
        before = (h.vma_list(m), layout(h))
        enomem = errno_of(h.munmap, m, 0x11000, 0x1000) == errno.ENOMEM
        result = dict(enomem=enomem, unchanged=(h.vma_list(m), layout(h)) == before,
                      ok=h.check())
    ''')
    assert r == dict(enomem=True, unchanged=True, ok=True)


def test_address_space_in_a_heap_at_the_top_of_the_32_bit_space(target):
    r = run(target, '''
        h = Heap(8192, base=0x100000000 - 8192)
        baseline = layout(h)
        m = h.mm_create()
        h.mmap_region(m, 0x08048000, 0x1000, VM_READ | VM_EXEC)
        h.mmap_region(m, 0xbfff0000, 0x10000, VM_READ | VM_WRITE)
        h.mmap_region(m, 0x40000000, 0x1000, VM_READ)
        walked = []
        p = h.mm(m).mmap
        while p:
            walked.append((p >= h.base, h.vma(p).start, h.vma(p).end))
            p = h.vma(p).next
        listed = h.vma_list(m)
        h.mm_destroy(m)
        result = dict(m=m, walked=walked, listed=listed, baseline=baseline, after=layout(h),
                      ok=h.check())
    ''')
    assert r["m"] >= 0x100000000 - 8192
    assert r["walked"] == [(True, 0x08048000, 0x08049000), (True, 0x40000000, 0x40001000),
                           (True, 0xbfff0000, 0xc0000000)]
    assert r["listed"] == [(0x08048000, 0x08049000, RX), (0x40000000, 0x40001000, R),
                           (0xbfff0000, 0xc0000000, RW)]
    assert r["after"] == r["baseline"]
    assert r["ok"] is True


def test_operations_on_something_that_is_not_an_mm_struct_raise_value_error(target):
    r = run(target, '''
        p = kmalloc(32)
        before = stats()
        calls = {'mmap_region': (mmap_region, p, 0x1000, 0x1000, VM_READ),
                 'munmap': (munmap, p, 0x1000, 0x1000),
                 'mprotect': (mprotect, p, 0x1000, 0x1000, VM_READ),
                 'find_vma': (find_vma, p, 0),
                 'brk': (brk, p, 0x1000),
                 'access_ok': (access_ok, p, 0x1000, 1, VM_READ),
                 'vma_list': (vma_list, p),
                 'mm_dump': (mm_dump, p)}
        result = dict(types=dict((k, (raised(*c) or ('no error',))[0]) for k, c in calls.items()),
                      unchanged=stats() == before)
    ''')
    assert r["types"] == dict.fromkeys(r["types"], "ValueError")
    assert len(r["types"]) == 8
    assert r["unchanged"] is True
