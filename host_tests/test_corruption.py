"""A damaged arena is reported, never followed outside it: the hot paths check every size
and link they read (tlsf.blocks) and raise CorruptionError naming the block, before they
write anything. The damage is done as a buggy program would: through a raw pointer."""
import pytest

from helpers import hex32, run

POKE = """
import uctypes
def overrun(p, value):
    uctypes.bytearray_at(addressof(p) + ksize(p), 1)[0] = value
def poke32(p, off, value):
    # A word at p + off, p a live block (addressof accepts only those).
    import struct
    struct.pack_into('<I', uctypes.bytearray_at(addressof(p) + off, 4), 0, value)
"""


def corruption(target, code):
    """The CorruptionError message the snippet's last statement raised, or None."""
    return target.eval("err", setup=POKE + f"""
err = None
try:
{chr(10).join('    ' + line for line in code.strip().splitlines())}
except CorruptionError as e:
    err = str(e)
""")


def test_one_byte_overrun_into_a_live_block_is_reported_by_kfree(target):
    err = corruption(target, """
p = kmalloc(24); q = kmalloc(24); r = kmalloc(24)
overrun(p, 0xFF)              # q's header now claims FREE | PREV_FREE
kfree(p)
""")
    assert err is not None and err.endswith("header of the next block overwritten")


def test_one_byte_overrun_into_a_free_block_is_reported_by_kfree_and_kmalloc(target):
    err_free, err_malloc, intact = target.eval("(err_free, err_malloc, check_ok)", setup=POKE + """
p = kmalloc(24)                    # the rest of the arena is one free block after p
overrun(p, 0x31)                   # its header's low byte: 48 bytes, still FREE
err_free = err_malloc = None
try:
    kfree(p)                       # would merge with the free block of a bogus size
except CorruptionError as e:
    err_free = str(e)
try:
    kmalloc(64)                    # would split the free block at a bogus size
except CorruptionError as e:
    err_malloc = str(e)
check_ok = True
try:
    check()
except CorruptionError:
    check_ok = False
""")
    assert err_free.endswith("free block header or boundary tag overwritten")
    assert err_malloc.endswith("free block header or boundary tag overwritten")
    assert intact is False  # nothing was repaired behind the user's back


def test_a_free_list_link_out_of_the_arena_is_not_followed(target):
    err, live, size, q, to = target.eval(
        "(err, stats()['live_blocks'], ksize(p), q, heap().base + 0x7FFFFFF0)", setup=POKE + """
p = kmalloc(24); q = kmalloc(24); r = kmalloc(24)
kfree(q)                           # q's block is now free; its next link is at q
poke32(p, q - p, 0x7FFFFFF0)       # ...pointing far outside the arena
err = None
try:
    kfree(p)                       # merging with q unlinks it: must check the link first
except CorruptionError as e:
    err = str(e)
""")
    # Named at the block that holds the link (where the damage is), with where it points.
    assert err == "block at %s: free list link is broken (points to %s)" % (
        hex32(q - 4), hex32(to & 0xFFFFFFFF))
    assert (live, size) == (2, 28)  # checked before the first write: p is still live


# Three free blocks of one class (256 and 264 bytes: list 2/0 with 8-byte granules), live
# blocks between them and the rest of the arena taken, so that the list is first -> mid ->
# last and a request of 264 bytes finds it by first fit only. junk: a link that would lead
# out of the arena, into a bytearray of the program's, and aligned as a block is (so only
# the bounds tell it from a real link).
THREE_FREE = """
import struct, uctypes
from kmem import tlsf
h = init(8192, hardened=HARDENED)
T = 5 if HARDENED else 0  # a hardened block takes 5 bytes more than asked for
M = 0xFFFFFFFF
secret = tlsf.load32(h.arena, 32 * 4)  # links are stored XOR it (0 unless hardened)
first = kmalloc(252 - T); l1 = kmalloc(8)
mid = kmalloc(252 - T); l2 = kmalloc(8)
last = kmalloc(260 - T); l3 = kmalloc(8)
rest = kmalloc(stats()['largest_free'] - T)
kfree(last); kfree(mid); kfree(first)  # each becomes the head of the list
def next_of(p):
    return tlsf.load32(h.arena, p - h.base) ^ secret
shape = (stats()['free_blocks'], next_of(first) + h.base == mid - 4,
         next_of(mid) + h.base == last - 4)
outside = bytearray(64)
junk = ((uctypes.addressof(outside) - h._addr + 15) & ~7) - 4 & M
def attempt(f, *args):
    try:
        f(*args)
        return 'no error'
    except CorruptionError as e:
        return str(e)
"""


@pytest.mark.parametrize("to", ["outside", "live block"])
@pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
def test_a_bad_link_in_the_middle_of_a_free_list_is_named_at_the_block_that_holds_it(
        target, hardened, to):
    # Whichever path meets it (a walk that reads it, an unlink of its holder or of the block
    # it should point to, check()), the same message: the holder, and where the link points
    # (out of the arena, or in it but to a live block).
    r = run(target, "HARDENED = %r\nTO = %r" % (hardened, to), THREE_FREE, """
if TO == 'live block':
    junk = l2 - 4 - h.base
struct.pack_into('<I', h.arena, mid - h.base, junk ^ secret)  # mid's next link
before = bytes(h.arena)
errs = dict(
    kmalloc=attempt(kmalloc, 260 - T),  # first fit: first and mid are too small, then junk
    kfree_next=attempt(kfree, l1),      # merges with mid: unlinks it
    kfree_prev=attempt(kfree, l3),      # merges with last, whose prev is mid
    krealloc=attempt(krealloc, l2, 100),  # grows into last
    check=attempt(check))
result = dict(shape=shape, errs=errs, same=h.arena == before, outside=outside == bytearray(64),
              mid=mid - 4, to=(h.base + junk) & M)
""")
    assert r["shape"] == (3, True, True)
    assert r["errs"] == dict.fromkeys(r["errs"], "block at %s: free list link is broken "
                                      "(points to %s)" % (hex32(r["mid"]), hex32(r["to"])))
    assert r["same"] is True and r["outside"] is True  # nothing written, in or out of the arena


@pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
def test_a_bad_free_list_head_is_named_at_the_head(target, hardened):
    r = run(target, "HARDENED = %r" % hardened, THREE_FREE, """
head = (tlsf.load32(h.arena, 14 * 4) + 2 * 16) * 4  # list 2/0's head word (stored plainly)
struct.pack_into('<I', h.arena, head, junk)
before = bytes(h.arena)
errs = dict(
    kmalloc=attempt(kmalloc, 252 - T),     # good fit: the list's head
    first_fit=attempt(kmalloc, 260 - T),   # first fit: the list from its head
    kfree=attempt(kfree, l1),              # unlinks first, which heads the list by its links
    check=attempt(check))
result = dict(errs=errs, same=h.arena == before, outside=outside == bytearray(64),
              head=h.base + head, to=(h.base + junk) & M)
""")
    assert r["errs"] == dict.fromkeys(r["errs"], "free list 2/0 is broken: its head at %s "
                                      "points to %s" % (hex32(r["head"]), hex32(r["to"])))
    assert r["same"] is True and r["outside"] is True


def test_a_damaged_header_of_a_live_block_is_reported_by_kfree(target):
    err = corruption(target, """
p = kmalloc(24); q = kmalloc(24)
poke32(q, -4, 0)                   # q's header: size 0
kfree(q)
""")
    assert err is not None and err.endswith("header overwritten")


def test_krealloc_checks_the_free_neighbour_it_would_grow_into(target):
    err, size, live = target.eval("(err, ksize(p), stats()['live_blocks'])", setup=POKE + """
p = kmalloc(24); q = kmalloc(24); r = kmalloc(24)
kfree(q)                           # p's next block is free...
poke32(p, q - p - 4, 0x00000F01)   # ...but its header now claims 0xF00 bytes
err = None
try:
    krealloc(p, 40)                # would grow into it
except CorruptionError as e:
    err = str(e)
""")
    assert err is not None and err.endswith("free block header or boundary tag overwritten")
    assert (size, live) == (28, 2)  # p untouched


def test_a_damaged_control_word_is_reported_by_check(target):
    # The hot paths trust the control words (check() verifies them): the box cell's
    # address, the header masks, the de Bruijn table, the list and live-map layout, the
    # links' secret.
    errors = target.eval("errs", setup="""
import uctypes
h = heap()
errs = []
for off in (17 * 4, 22 * 4, 24 * 4 + 5, 14 * 4, 20 * 4, 15 * 4 + 1, 32 * 4 + 2):
    cell = uctypes.bytearray_at(h._addr + off, 1)
    keep = cell[0]
    cell[0] ^= 0x10
    try:
        errs.append(check())
    except CorruptionError as e:
        errs.append(str(e))
    cell[0] = keep
errs.append(check())
""")
    assert errors == ["arena control block overwritten (word 17)",
                      "arena control block overwritten (word 22)",
                      "arena control block overwritten (ctz table)",
                      "arena control block overwritten (bad bounds)",      # HEADS
                      "arena control block overwritten (base, zero word or secret)",  # ZERO
                      "arena control block overwritten (base, zero word or secret)",  # BASE
                      "arena control block overwritten (base, zero word or secret)",  # SECRET
                      True]


LOOPED_VMAS = POKE + """
m = mm_create()
mmap_region(m, 0x1000, 0x1000, VM_READ)
mmap_region(m, 0x3000, 0x1000, VM_READ | VM_WRITE)   # a hole between: two areas
first = mm(m).mmap
second = vma(first).next
results = []
def attempt(name, f):
    try:
        f()
        results.append((name, 'no error'))
    except CorruptionError as e:
        results.append((name, str(e)))
"""


def test_a_looped_vma_list_is_reported_not_walked_forever(target):
    results = target.eval("results", setup=LOOPED_VMAS + """
vma(second).next = first                             # the list now loops
attempt('find_vma', lambda: find_vma(m, 0x10000))
attempt('mm_dump', lambda: mm_dump(m))
attempt('mmap_region', lambda: mmap_region(m, 0x8000, 0x1000, VM_READ))
attempt('mm_destroy', lambda: mm_destroy(m))
""", timeout=60)
    assert [name for name, _ in results] == ["find_vma", "mm_dump", "mmap_region", "mm_destroy"]
    for name, err in results:  # a loop comes back to a lower area: out of order
        assert "overlaps the one before it, is out of order" in err, (name, err)


def test_overlapping_vmas_are_reported_by_check_and_by_the_vm_calls(target):
    results = target.eval("results", setup=LOOPED_VMAS + """
results.append(('clean', check()))
vma(first).end = 0x4000                              # first now overlaps second
attempt('check', check)
attempt('access_ok', lambda: access_ok(m, 0x3800, 0x1000, VM_READ))  # walks into second
attempt('find_vma', lambda: find_vma(m, 0x5000))        # walks past both
attempt('munmap', lambda: munmap(m, 0x3000, 0x1000))
vma(first).end = 0x2000
results.append(('repaired', check()))
""")
    assert results[0] == ("clean", True) and results[-1] == ("repaired", True)
    for name, err in results[1:-1]:
        assert "overlaps the one before it" in err and "0x00003000-0x00004000" in err, (name, err)


def test_check_finds_a_vm_area_struct_in_no_list_and_one_in_two(target):
    results = target.eval("results", setup=LOOPED_VMAS + """
vma(first).next = 0                                  # second is now in no list
attempt('orphan', check)
vma(first).next = second
other = mm_create()
mm(other).mmap = second                              # second is in two lists
attempt('shared', check)
mm(other).mmap = 0
mm_destroy(other)
results.append(('repaired', check()))
""")
    assert results[0] == ("orphan", "1 vm_area_structs are in no mm_struct's list")
    assert results[1][0] == "shared" and "is in two lists" in results[1][1]
    assert results[2] == ("repaired", True)


def test_a_vma_link_out_of_the_arena_is_not_followed(target):
    results = target.eval("results", setup=LOOPED_VMAS + """
vma(second).next = 0x7FFFFFF0                        # far outside the arena
attempt('find_vma', lambda: find_vma(m, 0x10000))
attempt('mm_destroy', lambda: mm_destroy(m))
""")
    for name, err in results:
        assert "not a live vm_area_struct" in err, (name, err)
