"""A hardened heap (Heap(..., hardened=True), init(..., hardened=True)): red zones after the
bytes asked for, a seal over each live header, poisoned free memory and free-list links
stored XOR a per-heap secret. Each fault raises CorruptionError naming the block, and the
API behaves as on a default heap otherwise."""
from helpers import run, run_and_capture

HARDENED = """
from kmem import tlsf
h = init(32768, hardened=True)
def off(p):
    return p - h.base
def caught(f, *args):
    try:
        f(*args)
    except CorruptionError as e:
        return str(e)
    return None
"""


def test_a_hardened_heap_gives_the_bytes_asked_for_and_no_more(target):
    got = run(target, HARDENED, """
p = kmalloc(10)
result = (h.hardened, heap() is h, ksize(p), len(h.view(p)),
          raised(memset, p, 1, 11)[0], raised(memcpy, p, p, 11)[0], check())
""")
    assert got == (True, True, 10, 10, "ValueError", "ValueError", True)


def test_a_one_byte_overrun_is_reported_by_kfree_and_check_and_nothing_is_freed(target):
    got = run(target, HARDENED, """
p = kmalloc(10)
h.arena[off(p) + 10] ^= 0xFF   # the byte after the ten asked for
live = stats()['live_blocks']
result = (caught(kfree, p), caught(check), stats()['live_blocks'] == live,
          caught(krealloc, p, 100), caught(ksize, p), hex(p))
""")
    *errors, p = got
    assert errors[0] == errors[1] == errors[3] == errors[4] == (
        "block at 0x%08x: red zone overwritten at 0x%08x: an overrun past the bytes "
        "asked for" % (int(p, 16) - 4, int(p, 16) + 10))
    assert errors[2] is True


def test_a_write_after_free_is_reported_when_the_block_is_handed_out_again(target):
    got = run(target, HARDENED, """
p = kmalloc(100)
kfree(p)
h.arena[off(p) + 40] = 0    # through the dangling pointer
on_check = caught(check)
on_reuse = caught(lambda: [kmalloc(100) for i in range(4)])
result = (on_check, on_reuse, caught(check), hex(p + 40))
""")
    on_check, on_reuse, again, at = got
    assert on_check.endswith("freed memory written at %s (use after free)" % at)
    assert on_reuse.endswith("freed memory written at %s (use after free)" % at)
    assert again == on_check  # not repaired: check() still reports it


def test_flipped_kind_or_size_bits_of_a_live_header_are_reported(target):
    got = run(target, HARDENED, """
p = kmalloc(40)
q = kmalloc(40)
m = mm_create()
h.arena[off(p) - 1] |= 0x20       # kind 2: the kmalloc block now claims to be an mm_struct
kind = (caught(mm_dump, p), caught(mmap_region, p, 0, 4096, 1), caught(kfree, p),
        caught(check))
h.arena[off(p) - 1] &= ~0x20
sound = check()
h.arena[off(q) - 4] ^= 0x08       # size bit 3
size = caught(kfree, q) or caught(check)
result = (kind, sound, size, hex(p - 4), hex(q - 4))
""")
    kind, sound, size, p, q = got
    assert kind == ("block at %s: seal overwritten (the header's size or kind changed, or "
                    "the block's last word)" % p,) * 4
    assert sound is True
    assert size is not None and size.startswith("block at ")


def test_links_are_stored_xor_a_secret_and_a_forged_link_is_refused(target):
    got = run(target, HARDENED, """
ps = [kmalloc(64) for i in range(6)]
kfree(ps[1]); kfree(ps[3])
secret = tlsf.load32(h.arena, 32 * 4)
stored = tlsf.load32(h.arena, off(ps[3]))        # ps[3]'s next link, as stored
tlsf.store32(h.arena, off(ps[3]), off(ps[1]) - 4)  # a plain offset, as a forger writes it
result = (secret != 0, stored ^ secret == off(ps[1]) - 4, caught(check),
          caught(lambda: [kmalloc(64) for i in range(3)]),
          hex(ps[3] - 4), hex(h.base + ((off(ps[1]) - 4) ^ secret) & 0xFFFFFFFF))
""")
    nonzero, decodes, on_check, on_alloc, holder, to = got
    assert nonzero and decodes
    # The forged link decodes to no block: named at ps[3], which holds it, on every path.
    assert on_check == on_alloc == "block at 0x%08x: free list link is broken (points to " \
        "0x%08x)" % (int(holder, 16), int(to, 16))


def test_a_default_heap_stores_its_links_plainly(target):
    got = run(target, """
from kmem import tlsf
h = heap()
ps = [kmalloc(64) for i in range(4)]
kfree(ps[0]); kfree(ps[2])
result = (h.hardened, tlsf.load32(h.arena, 32 * 4),
          tlsf.load32(h.arena, ps[2] - h.base) == ps[0] - h.base - 4)
""")
    assert got == (False, 0, True)


def test_the_whole_api_works_on_a_hardened_heap(target):
    got = run(target, HARDENED, """
a = kmalloc(30)
memset(a, 0x5A, 30)
b = krealloc(a, 20)              # fits: stays
c = krealloc(b, 600)             # moves (or grows), the bytes kept
kept = bytes(h.view(c, 20)) == b'\\x5a' * 20
z = kcalloc(3, 7)
sizes = (ksize(c), ksize(z), bytes(h.view(z)))
s = allocate_kernel_stack(100)
top = kernel_stack_top(s) - s
m = mm_create()
mmap_region(m, 0x10000, 0x3000, VM_READ | VM_WRITE)
mprotect(m, 0x11000, 0x1000, VM_READ)
areas = vma_list(m)
sound = check()
mm_destroy(m)
free_kernel_stack(s)
kfree(c); kfree(z)
st = stats()
result = (b == a, kept, sizes, top, areas, sound,
          st['live_blocks'], st['free_blocks'], check())
""")
    assert got == (True, True, (600, 21, bytes(21)), 112,
                   [(0x10000, 0x11000, 3), (0x11000, 0x12000, 1), (0x12000, 0x13000, 3)],
                   True, 0, 1, True)


def test_the_module_functions_of_a_hardened_default_heap_are_hardened(target):
    # `from kmem import *` bound the hot paths before init(): they call the hardened heap's.
    got = run(target, """
h = init(16384, hardened=True)
p = kmalloc(8)
size = ksize(p)
h.arena[p - h.base + 8] = 0
try:
    kfree(p)
    err = None
except CorruptionError as e:
    err = str(e)
result = (size, err, hex(p + 8))
""")
    size, err, at = got
    assert size == 8
    assert err.endswith("red zone overwritten at %s: an overrun past the bytes asked for" % at)


def test_debug_messages_of_a_hardened_heap_name_the_bytes_asked_for(target):
    lines, (p, s) = run_and_capture(target, HARDENED, """
debug(True)
p = kmalloc(12)
s = allocate_kernel_stack(64)
free_kernel_stack(s)
kfree(p)
debug(False)
result = (p, s)
""")
    assert lines == ["Memory allocated: 12 bytes at 0x%08x" % p,
                     "Memory allocated: 64 bytes at 0x%08x" % s,
                     "Memory free requested at 0x%08x" % s,
                     "Memory free requested at 0x%08x" % p]



def test_a_seal_with_any_bits_flipped_is_reported_without_reading_outside_the_block(target):
    # On a 32-bit board a seal with its top bit set reads as a negative number.
    got = run(target, HARDENED, """
p = kmalloc(20)
seal_at = off(p) + tlsf.usable(h.arena, off(p)) - 4
good = tlsf.load32(h.arena, seal_at)
found = []
for bit in (0, 5, 29, 30, 31):
    tlsf.store32(h.arena, seal_at, good ^ (1 << bit))
    found.append(caught(ksize, p))
tlsf.store32(h.arena, seal_at, good)
result = (found, ksize(p), check())
""")
    found, size, sound = got
    assert all(e and e.endswith("seal overwritten (the header's size or kind changed, or the "
                                "block's last word)") for e in found), found
    assert size == 20 and sound is True
