"""mm_struct lifecycle, uctypes views, mm_dump and the VM constants."""
from helpers import (PAGE_SIZE, VM_EXEC, VM_GROWSDOWN, VM_GROWSUP, VM_READ, VM_SHARED,
                     VM_WRITE, hex32, output, run, run_and_capture)


def test_constants_match_the_seed_document(target):
    got = run(target, '''
        result = (VM_READ, VM_WRITE, VM_EXEC, VM_SHARED, VM_GROWSUP, VM_GROWSDOWN, PAGE_SIZE)
    ''')
    assert got == (VM_READ, VM_WRITE, VM_EXEC, VM_SHARED, VM_GROWSUP, VM_GROWSDOWN, PAGE_SIZE)
    assert got == (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 4096)


def test_struct_sizes(target):
    sizes = run(target, '''
        result = (uctypes.sizeof(kmem.VM_AREA_STRUCT, uctypes.LITTLE_ENDIAN),
                  uctypes.sizeof(kmem.MM_STRUCT, uctypes.LITTLE_ENDIAN))
    ''')
    assert sizes == (16, 32)


def test_mm_create_returns_a_zeroed_mm_struct_even_over_dirty_memory(target):
    r = run(target, '''
        for p in fill(32):                   # leave 0xA5 everywhere
            memset(p, 0xA5, ksize(p))
            kfree(p)
        live = stats()['live_blocks']
        m = mm_create()
        s = mm(m)
        result = dict(m=m, raw=contents(m, 32), live=stats()['live_blocks'] - live,
                      fields=(s.mmap, s.start_code, s.end_code, s.start_data, s.end_data,
                              s.start_heap, s.end_heap, s.start_stack))
    ''')
    assert r["m"] % 8 == 0
    assert r["raw"] == bytes(32)
    assert r["fields"] == (0,) * 8
    assert r["live"] == 1


def test_mm_views_sit_on_the_struct_memory(target):
    r = run(target, '''
        m = mm_create()
        mm(m).start_code = 0x08048000
        mm(m).end_heap = 0xDEADBEEF
        by_hand = uctypes.struct(addressof(m), kmem.MM_STRUCT, uctypes.LITTLE_ENDIAN)
        result = dict(same_address=uctypes.addressof(mm(m)) == addressof(m),
                      by_hand=(by_hand.start_code, by_hand.end_heap),
                      raw=contents(m, 32))
    ''')
    assert r["same_address"] is True
    assert r["by_hand"] == (0x08048000, 0xDEADBEEF)
    assert r["raw"][4:8] == (0x08048000).to_bytes(4, "little")
    assert r["raw"][24:28] == (0xDEADBEEF).to_bytes(4, "little")


def test_mm_and_vma_views_agree_with_vma_list(target):
    r = run(target, '''
        m = mm_create()
        mmap_region(m, 0x40000000, 0x2000, VM_READ | VM_WRITE | VM_SHARED)
        mmap_region(m, 0x08048000, 0x1000, VM_READ | VM_EXEC)
        mmap_region(m, 0x08050000, 0x3000, VM_READ | VM_WRITE)
        walked = []
        p = mm(m).mmap
        while p:
            v = vma(p)
            walked.append((v.start, v.end, v.flags))
            p = v.next
        first = find_vma(m, 0)
        result = dict(walked=walked, listed=vma_list(m), first=first, head=mm(m).mmap,
                      head_view=uctypes.addressof(vma(first)) == addressof(first),
                      raw_first=contents(first, 16))
    ''')
    expected = [(0x08048000, 0x08049000, VM_READ | VM_EXEC),
                (0x08050000, 0x08053000, VM_READ | VM_WRITE),
                (0x40000000, 0x40002000, VM_READ | VM_WRITE | VM_SHARED)]
    assert r["walked"] == expected
    assert r["listed"] == expected
    assert r["head"] == r["first"]
    assert r["head_view"] is True
    raw = r["raw_first"]
    assert [int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8)] == list(expected[0])


def test_empty_mm_has_no_areas(target):
    printed, r = run_and_capture(target, '''
        m = mm_create()
        mm_dump(m)
        result = (vma_list(m), mm(m).mmap, find_vma(m, 0))
    ''')
    assert printed == []
    assert r == ([], 0, None)


def test_mm_dump_prints_one_line_per_area(target):
    lines = output(target, '''
        m = mm_create()
        mmap_region(m, 0x08048000, 0x1000, VM_READ | VM_EXEC)
        mmap_region(m, 0x08049000, 0x1000, VM_READ | VM_WRITE)
        mmap_region(m, 0x40000000, 0x2000, VM_READ | VM_WRITE | VM_SHARED)
        mmap_region(m, 0xbffdf000, 0x21000, VM_READ | VM_WRITE | VM_GROWSDOWN)
        mmap_region(m, 0xd0000000, 0x1000, 0)
        mmap_region(m, 0xe0000000, 0x1000, VM_READ | VM_WRITE | VM_EXEC | VM_SHARED)
        mm_dump(m)
    ''')
    assert lines == [
        "08048000-08049000 r-xp",
        "08049000-0804a000 rw-p",
        "40000000-40002000 rw-s",
        "bffdf000-c0000000 rw-p",
        "d0000000-d0001000 ---p",
        "e0000000-e0001000 rwxs",
    ]


def test_mm_destroy_frees_the_struct_and_all_its_areas(target):
    r = run(target, '''
        baseline = layout()
        m = mm_create()
        for i in range(6):
            mmap_region(m, 0x10000 * (i + 1), 0x1000 * (i + 1), VM_READ)
        during = layout()
        mm_destroy(m)
        result = dict(baseline=baseline, during=during, after=layout(), ok=check())
    ''')
    assert r["during"]["live_blocks"] == r["baseline"]["live_blocks"] + 7
    assert r["after"] == r["baseline"]
    assert r["ok"] is True


def test_mm_destroy_of_null_is_a_no_op(target):
    before, after = run(target, '''
        m = mm_create()
        before = stats()
        mm_destroy(None)
        mm_destroy(0)
        result = (before, stats())
    ''')
    assert after == before


def test_mm_create_returns_none_when_the_heap_is_full(target):
    m, before, after, ok = run(target, '''
        hog = fill(1024) + fill(8)  # big blocks first: a short list, for a small board's heap
        before = layout()
        m = mm_create()
        result = (m, before, layout(), check())
    ''')
    assert m is None
    assert after == before
    assert ok is True


def test_ten_thousand_mm_create_destroy_cycles_do_not_leak(target):
    r = run(target, '''
        baseline = layout()
        start = stats()
        missing = 0
        for i in range(10000):
            m = mm_create()
            if m is None:
                missing += 1
                continue
            if i % 10 == 0:
                mmap_region(m, 0x08048000, 0x3000, VM_READ | VM_EXEC)
                mmap_region(m, 0x0804c000, 0x1000, VM_READ | VM_WRITE)
            if i % 20 == 0:
                mprotect(m, 0x08049000, 0x1000, VM_READ)   # split into three areas
            mm_destroy(m)
        end = stats()
        result = dict(missing=missing, baseline=baseline, after=layout(),
                      allocs=end['allocs'] - start['allocs'], frees=end['frees'] - start['frees'],
                      ok=check())
    ''', timeout=600)
    assert r["missing"] == 0
    assert r["after"] == r["baseline"]
    assert r["allocs"] == r["frees"]
    assert r["ok"] is True


def test_mm_structs_and_areas_cannot_be_released_with_the_wrong_function(target):
    r = run(target, '''
        m = mm_create()
        mmap_region(m, 0x1000, 0x1000, VM_READ)
        area = find_vma(m, 0)
        p = kmalloc(32)
        s = allocate_kernel_stack(256)
        before = stats()
        result = dict(kfree_mm=raised(kfree, m), kfree_vma=raised(kfree, area),
                      destroy_vma=raised(mm_destroy, area), destroy_plain=raised(mm_destroy, p),
                      destroy_stack=raised(mm_destroy, s), destroy_interior=raised(mm_destroy, m + 8),
                      free_mm_as_stack=raised(free_kernel_stack, m),
                      unchanged=stats() == before, still_usable=vma_list(m), ok=check())
        mm_destroy(m)
        before = stats()
        result['double'] = raised(mm_destroy, m)
        result['double_unchanged'] = stats() == before
        result['addresses'] = dict(kfree_mm=m, kfree_vma=area, destroy_vma=area, destroy_plain=p,
                                   destroy_stack=s, destroy_interior=m + 8, free_mm_as_stack=m,
                                   double=m)
    ''')
    for case, addr in r["addresses"].items():
        assert r[case] is not None and r[case][0] == "ValueError", case
        assert hex32(addr) in r[case][1], case
    assert r["unchanged"] is True
    assert r["double_unchanged"] is True
    assert r["still_usable"] == [(0x1000, 0x2000, VM_READ)]
    assert r["ok"] is True
