"""kmalloc: placement, alignment, zero-size and out-of-memory behaviour."""
import copy

import pytest

from helpers import run

SIZES = "(1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 32, 33, 100, 255, 256, 1000)"


def test_blocks_are_distinct_aligned_and_inside_the_arena(target):
    blocks, base, size = run(target, '''
        h = heap()
        blocks = [(n, kmalloc(n)) for n in %s]
        result = ([(n, p, ksize(p)) for n, p in blocks], h.base, h.size)
    ''' % SIZES)
    for n, p, usable in blocks:
        assert p is not None, n
        assert p % 8 == 0, (n, hex(p))
        assert usable >= n
        assert base <= p and p + usable <= base + size
    spans = sorted((p, p + usable) for _, p, usable in blocks)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, "blocks overlap"


def test_blocks_hold_their_own_data(target):
    intact = run(target, '''
        blocks = [kmalloc(n) for n in %s]
        written = [scribble(p, n, seed=i) for i, (n, p) in enumerate(zip(%s, blocks))]
        result = [contents(p, len(w)) == w for p, w in zip(blocks, written)]
    ''' % (SIZES, SIZES))
    assert all(intact)


@pytest.mark.parametrize("align, expected", [(4, 8), (8, 8), (16, 16)])
def test_payload_alignment_is_max_of_8_and_heap_align(target, align, expected):
    base, addresses = run(target, '''
        h = Heap(8192, align=%d)
        result = (h.base, [h.kmalloc(n) for n in %s])
    ''' % (align, SIZES))
    assert base % expected == 0
    assert None not in addresses
    assert [p for p in addresses if p % expected] == []


def test_kmalloc_zero_returns_none_without_counting_a_failure(target):
    p, before, after = run(target, '''
        before = stats()
        p = kmalloc(0)
        result = (p, before, stats())
    ''')
    assert p is None
    assert after == before


def test_allocation_counts_and_uses_memory(target):
    before, after = run(target, '''
        before = stats()
        blocks = [kmalloc(100) for i in range(5)]
        result = (before, stats())
    ''')
    assert after["allocs"] == before["allocs"] + 5
    assert after["live_blocks"] == before["live_blocks"] + 5
    assert after["used"] >= before["used"] + 500
    assert after["free"] < before["free"]
    assert after["failures"] == before["failures"]


def test_out_of_memory_returns_none_and_counts_failures_only(target):
    got, before, after, ok = run(target, '''
        before = stats()
        got = [kmalloc(stats()['size']),     # bigger than what is left
               kmalloc(0xFFFFFFFF),          # largest 32-bit size
               kmalloc(2**32 + 16)]          # must not wrap around to 16 bytes
        result = (got, before, stats(), check())
    ''')
    assert got == [None, None, None]
    assert after["failures"] == before["failures"] + 3
    del before["failures"], after["failures"]
    assert after == before
    assert ok is True


def test_out_of_memory_after_filling_the_heap(target):
    count, late, before, after, ok = run(target, '''
        blocks = fill(32)
        before = stats()
        late = kmalloc(32)
        result = (len(blocks), late, before, stats(), check())
    ''')
    assert count > 0
    assert late is None
    assert after["failures"] == before["failures"] + 1
    del before["failures"], after["failures"]
    assert after == before
    assert ok is True


def test_heap_with_explicit_base_hands_out_addresses_from_that_base(target):
    base, size, blocks = run(target, '''
        h = Heap(4096, base=0x10000000)
        result = (h.base, h.size, [h.kmalloc(n) for n in (1, 64, 500)])
    ''')
    assert (base, size) == (0x10000000, 4096)
    for p in blocks:
        assert 0x10000000 <= p < 0x10000000 + 4096



def test_addresses_above_2_to_the_30_work_though_they_are_big_ints_on_a_32_bit_board(target):
    # The hot paths unbox small ints themselves; a big int takes the slow path both ways.
    r = run(target, '''
        h = Heap(4096, base=0xF0000000)
        p = h.kmalloc(40)
        z = h.kzalloc(24)
        sizes = (h.ksize(p), h.ksize(z))
        zeroed = bytes(h.view(z, 24)) == bytes(24)
        h.kfree(p)
        h.kfree(z)
        try:
            h.kfree(0xF0000000 + 0x100000000)  # truncated to 32 bits it would be in the arena
            alias = 'accepted'
        except ValueError as e:
            alias = str(e)
        result = dict(p=p, z=z, sizes=sizes, zeroed=zeroed, alias=alias,
                      live=h.stats()['live_blocks'], ok=h.check())
    ''')
    assert 0xF0000000 < r["p"] < 0xF0000000 + 4096 and 0xF0000000 < r["z"] < 0xF0000000 + 4096
    assert r["sizes"][0] >= 40 and r["sizes"][1] >= 24 and r["zeroed"]
    assert "is not the start of a live kmalloc block" in r["alias"]
    assert r["live"] == 0 and r["ok"] is True

def test_addressof_is_the_real_machine_address_of_a_block(target):
    through_machine_address, through_view = run(target, '''
        p = kmalloc(16)
        memset(p, 0, 16)
        uctypes.bytearray_at(addressof(p), 16)[:] = b'0123456789abcdef'
        v = view(p, 16)
        v[0] = ord('X')
        result = (contents(p, 16), bytes(uctypes.bytearray_at(addressof(p), 16)))
    ''')
    assert through_machine_address == b"X123456789abcdef"
    assert through_view == b"X123456789abcdef"


def test_default_heap_functions_and_heap_methods_share_the_default_heap(target):
    same, allocs, live = run(target, '''
        h = heap()
        before = stats()
        h.kmalloc(10)
        kmalloc(10)
        after = h.stats()
        result = (h is heap(), after['allocs'] - before['allocs'],
                  after['live_blocks'] - before['live_blocks'])
    ''')
    assert same is True
    assert (allocs, live) == (2, 2)


def test_separate_heaps_do_not_affect_each_other(target):
    default_before, default_after, other = run(target, '''
        default_before = layout()
        h = Heap(4096)
        blocks = fill(16, h)
        result = (default_before, layout(), h.stats())
    ''')
    assert default_after == default_before
    assert other["live_blocks"] > 0
    assert other["size"] == 4096


@pytest.mark.parametrize("call, expect", [
    ("kmalloc(10)", "a block"), ("kzalloc(10)", "a block"), ("kcalloc(2, 5)", "a block"),
    ("krealloc(None, 10)", "a block"), ("ksize(None)", 0), ("kfree(None)", None)])
def test_the_first_call_of_any_hot_path_makes_the_default_heap(target, call, expect):
    # Before init() the module's hot paths have no arena: each calls the heap that heap()
    # makes, a default 32 KiB one.
    board = copy.copy(target)
    board.prelude = "import kmem\nfrom kmem import *\n"
    got = board.eval("(r if type(r) is not int or r < 4096 else 'a block', repr(heap()), "
                     "check())", setup="r = " + call)
    assert got[0] == expect and got[1].startswith("<Heap 32768 bytes at ") and got[2] is True
