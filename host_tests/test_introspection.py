"""stats(), walk(), check(), heap()/init() and the Heap constructor."""
import pytest

from helpers import TargetError, run

STATS_KEYS = {"size", "used", "free", "largest_free", "free_blocks", "live_blocks",
              "peak_used", "allocs", "frees", "failures", "overhead"}


def test_stats_of_a_fresh_heap(target):
    s = run(target, "result = Heap(8192).stats()")
    assert set(s) == STATS_KEYS
    assert s["size"] == 8192
    assert (s["used"], s["live_blocks"], s["peak_used"]) == (0, 0, 0)
    assert (s["allocs"], s["frees"], s["failures"]) == (0, 0, 0)
    assert s["free_blocks"] == 1
    assert s["largest_free"] == s["free"]
    assert 8192 // 2 < s["free"] < 8192
    assert s["used"] + s["free"] + s["overhead"] == s["size"]


def test_stats_size_is_the_default_heap_size(target):
    size, attr = run(target, "result = (stats()['size'], heap().size)")
    assert size == attr


def test_counters_and_peak(target):
    r = run(target, '''
        h = Heap(8192)
        a = h.kmalloc(100)
        b = h.kmalloc(200)
        peak = h.stats()['used']
        h.kfree(a)
        c = h.kmalloc(50)
        h.kmalloc(10 ** 6)                    # fails
        h.kfree(b)
        result = dict(peak=peak, s=h.stats())
    ''')
    s = r["s"]
    assert (s["allocs"], s["frees"], s["failures"]) == (3, 2, 1)
    assert s["live_blocks"] == 1
    assert s["peak_used"] == r["peak"]
    assert s["used"] < s["peak_used"]
    assert s["used"] + s["free"] + s["overhead"] == s["size"]


def test_walk_lists_blocks_in_address_order_consistent_with_stats(target):
    r = run(target, '''
        h = heap()
        live = [kmalloc(n) for n in (10, 200, 33, 64, 1000, 8, 128)]
        for p in live[1::3]:
            kfree(p)
        live = [p for i, p in enumerate(live) if i % 3 != 1]
        m = mm_create()
        mmap_region(m, 0x1000, 0x1000, VM_READ)
        s = allocate_kernel_stack(512)
        result = dict(blocks=list(walk()), stats=stats(), base=h.base, size=h.size,
                      live=live, others=(m, find_vma(m, 0), s))
    ''')
    blocks, s, base, size = r["blocks"], r["stats"], r["base"], r["size"]
    addresses = [a for a, _, _ in blocks]
    assert addresses == sorted(addresses) and len(set(addresses)) == len(addresses)
    for (a, n, _), (b, _, _) in zip(blocks, blocks[1:]):
        assert a + n <= b, "blocks overlap"
    assert base <= addresses[0] and blocks[-1][0] + blocks[-1][1] <= base + size
    used = [(a, n) for a, n, busy in blocks if busy]
    free = [n for _, n, busy in blocks if not busy]
    assert sorted(a for a, _ in used) == sorted(r["live"] + list(r["others"]))
    assert len(used) == s["live_blocks"]
    assert len(free) == s["free_blocks"]
    assert sum(free) == s["free"]
    assert max(free) == s["largest_free"]
    assert sum(n for _, n in used) == s["used"]
    assert s["used"] + s["free"] + s["overhead"] == s["size"]


def test_check_passes_on_a_busy_heap(target):
    ok = run(target, '''
        blocks = [kmalloc(8 + (i * 37) % 300) for i in range(40)]
        for p in blocks[::2]:
            kfree(p)
        m = mm_create()
        mmap_region(m, 0x1000, 0x3000, VM_READ)
        mprotect(m, 0x2000, 0x1000, VM_READ | VM_WRITE)
        stack = allocate_kernel_stack(1024)
        result = check()
    ''')
    assert ok is True


def test_check_detects_a_damaged_block_header(target):
    r = run(target, '''
        p = kmalloc(32)
        q = kmalloc(32)
        r = kmalloc(32)
        clean = check()
        header = uctypes.bytearray_at(addressof(q) - 4, 4)
        for i in range(4):
            header[i] ^= 0xFF
        try:
            check()
            caught = None
        except CorruptionError as e:
            caught = (type(e).__name__, str(e), isinstance(e, Exception))
        result = (clean, caught)
    ''')
    clean, caught = r
    assert clean is True
    assert caught is not None
    assert caught[0] == "CorruptionError" and caught[2] is True
    assert caught[1] != ""


def test_uncaught_corruption_error_reaches_the_host(target):
    with pytest.raises(TargetError) as exc:
        run(target, '''
            p = kmalloc(64)
            q = kmalloc(64)
            header = uctypes.bytearray_at(addressof(q) - 4, 4)
            for i in range(4):
                header[i] ^= 0xFF
            result = check()
        ''')
    assert exc.value.type == "CorruptionError"


def test_init_replaces_the_default_heap(target):
    r = run(target, '''
        old = heap()
        p = kmalloc(100)
        new = init(8192)
        result = dict(same=heap() is heap(), replaced=heap() is new and new is not old,
                      size=stats()['size'], live=stats()['live_blocks'],
                      attrs=(new.size, new.align))
    ''')
    assert r["same"] is True
    assert r["replaced"] is True
    assert r["size"] == 8192
    assert r["live"] == 0
    assert r["attrs"] == (8192, 4)


def test_heap_attributes_and_default_base(target):
    r = run(target, '''
        h = Heap(4096)
        real = uctypes.addressof(h.arena)
        result = dict(size=h.size, align=h.align, base=h.base, real=real,
                      arena_len=len(h.arena), default=(heap().base, heap().size))
    ''')
    assert (r["size"], r["align"]) == (4096, 4)
    assert r["arena_len"] >= 4096
    assert r["base"] % 8 == 0
    if r["real"] >= 0x40000000:  # the 64-bit unix port: a range of its own above 0x20000000
        assert 0x20000000 <= r["base"] < 0x40000000 - 4096
    else:
        assert r["base"] == r["real"]
    default_base, default_size = r["default"]
    assert (r["base"] >= default_base + default_size
            or r["base"] + r["size"] <= default_base)  # heaps never share an address


def test_a_pointer_from_another_heap_frees_nothing_here(target):
    r = run(target, '''
        a = kmalloc(64)
        other = Heap(4096)
        b = other.kmalloc(64)
        try:
            kfree(b)
            err = None
        except ValueError as e:
            err = str(e)
        result = dict(err=err, a_live=ksize(a), b_live=other.ksize(b), ok=check())
    ''')
    assert r["err"] is not None and "is not the start of a live kmalloc block" in r["err"]
    assert r["a_live"] >= 64 and r["b_live"] >= 64 and r["ok"] is True


def test_heap_constructor_validates_its_arguments(target):
    r = run(target, '''
        cases = {
            'size str': ('4096',), 'size float': (4096.0,), 'base str': (4096, '0'),
            'align str': (4096, None, '4'),
            'size too small': (511,), 'size too big': (0x0FFFFFF1,),
            'align 3': (4096, None, 3), 'align 32': (4096, None, 32), 'align 0': (4096, None, 0),
            'base 0': (4096, 0), 'base negative': (4096, -8), 'base unaligned': (4096, 0x10000004),
            'base unaligned for 16': (4096, 0x10000008, 16), 'base past 4 GiB': (8192, 0xFFFFF000),
        }
        result = dict((k, (raised(Heap, *a) or ('no error',))[0]) for k, a in cases.items())
        result['smallest'] = Heap(512).kmalloc(8) is not None
        result['aligned base'] = Heap(4096, 0x10000010, 16).base
    ''')
    assert r.pop("smallest") is True
    assert r.pop("aligned base") == 0x10000010
    assert r == {
        "size str": "TypeError", "size float": "TypeError", "base str": "TypeError",
        "align str": "TypeError",
        "size too small": "ValueError", "size too big": "ValueError",
        "align 3": "ValueError", "align 32": "ValueError", "align 0": "ValueError",
        "base 0": "ValueError", "base negative": "ValueError", "base unaligned": "ValueError",
        "base unaligned for 16": "ValueError", "base past 4 GiB": "ValueError",
    }


def test_init_with_bad_arguments_keeps_the_old_default_heap(target):
    errors, same_heap, p_still_live = run(target, '''
        h = heap()
        p = kmalloc(64)
        errors = [raised(init, 100), raised(init, 4096, None, 3), raised(init, "big")]
        result = (errors, heap() is h, ksize(p) >= 64)
    ''')
    assert [e[0] for e in errors] == ["ValueError", "ValueError", "TypeError"]
    assert same_heap and p_still_live
