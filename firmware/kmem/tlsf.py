# TLSF (two-level segregated fit) allocator core over one bytearray arena.
#
# The arena is the whole state: control words, free-list heads, bitmaps and
# blocks all live in it; no Python object exists per block. This module lays
# the arena out (format) and checks it (check); the hot paths (kmalloc, kfree,
# ksize, kzalloc, kcalloc, krealloc, memset, memcpy) are in hot.py. Both do their
# integer work in viper functions on a ptr32 view of the arena, so they allocate
# nothing; the block helpers both share come from blocks/tlsf.blocks.
#
# Offsets are bytes from the start of the arena; a kernel address is
# base + offset. G (the granule) is 8 or 16 bytes; the heap base is a multiple
# of G and block headers sit 4 bytes below a multiple of G, so every payload is
# G-aligned.
#
# Arena layout (words):
#   [0] MAGIC  [1] FLMAP  [2] USED  [3] PEAK  [4] LIVE  [5] NFREE  [6] ALLOCS
#   [7] FREES  [8] FAILS  [9] GSHIFT  [10] FIRST  [11] END  [12] FLCOUNT
#   [13] LIVEMAP (word index)  [14] HEADS (word index)  [15] BASE (kernel address of
#   offset 0)  [16] FLAGS (bit 0: debug messages on)  [17..21] BOX, BOXHI, BOXTOP, ZERO,
#   NONE: where hot.py's paths find their box cell (see hot.py)  [22] FREEMASK, [23]
#   LIVEMASK: the header bits checked in a free and in a live block  [24..31] CTZ: the
#   de Bruijn table of the ctz and fls helpers (blocks/tlsf.blocks)  [32] SECRET: the
#   free-list links are stored XOR it (0 unless the heap is hardened: harden.py)
#   [33 .. 33+FLCOUNT)       SLMAP[fl]: second-level bitmap per first level
#   [HEADS .. +FLCOUNT*16)   HEADS[fl*16+sl]: first free block of each class
#   [LIVEMAP ..)             one bit per granule: set at each live payload
#   FIRST ..                 blocks, then a 4-byte epilogue header at END
#
# Block: one header word, then the payload.
#   header = size | kind << 28 | PREV_FREE (2) | FREE (1)
#   size: whole block in bytes (header included), a multiple of G, >= 16.
#   kind: 0 kmalloc block, 1 kernel stack, 2 mm_struct, 3 vm_area_struct.
#   A free block also holds: +4 next free, +8 previous free (offsets, 0 = end;
#   stored XOR SECRET) and its size again in its last word (the boundary tag that lets the block
#   after it find it when coalescing). A live block costs only its header.
#
# Size classes: with SL = 16 lists per first level, sizes below 16*G map
# linearly (fl 0, sl = size/G); above, fl = fls(size) - log2(G) - 3 and sl is
# the 4 bits below the top bit. malloc rounds the request up to the next class
# so the head of any non-empty list it finds fits (good fit, O(1)); only if
# that fails does it look through the request's own class.
#
# Invariants (checked by check()):
#   1. Blocks tile [FIRST, END) exactly; END holds a size-0 used epilogue.
#   2. No two free blocks are adjacent (coalescing is immediate).
#   3. PREV_FREE of each block == FREE of the block before it.
#   4. A free block's last word equals its size; its kind is 0.
#   5. Each free block is in exactly the list of its class; the list links are
#      consistent; SLMAP bit set <=> list non-empty; FLMAP bit <=> SLMAP != 0.
#   6. LIVEMAP has a bit exactly at each live payload.
#   7. USED, LIVE and NFREE match the blocks; kernel stacks keep their canary.
import uctypes
import micropython
from micropython import const
from .hot import (CorruptionError, _corrupt, _first_fit_at as first_fit_at,  # noqa: F401
                  containing_at, bind, box_words, move, owner)

KIND_PLAIN = const(0)
KIND_STACK = const(1)
KIND_MM = const(2)
KIND_VMA = const(3)
KIND_NAMES = ("kmalloc block", "kernel stack", "mm_struct", "vm_area_struct")

#@use layout()
# The arena layout and block format (tlsf.py's opening comment), shared by tlsf.py,
# hot.py and linkfault.py: micropython.const values are folded at compile time only
# within their module.
MIN_BLOCK = const(16)
HEADER = const(4)
STACK_CANARY = const(0x157AC6E9)  # small int on 32-bit ports, fits viper

_MAGIC = const(0x4B4D454D)  # "KMEM"; written from Python, never in viper
_W_MAGIC = const(0)
_W_FLMAP = const(1)
_W_USED = const(2)
_W_PEAK = const(3)
_W_LIVE = const(4)
_W_NFREE = const(5)
_W_ALLOCS = const(6)
_W_FREES = const(7)
_W_FAILS = const(8)
_W_GSHIFT = const(9)
_W_FIRST = const(10)
_W_END = const(11)
_W_FLCOUNT = const(12)
_W_LIVEMAP = const(13)
_W_HEADS = const(14)
_W_BASE = const(15)
_W_FLAGS = const(16)
_W_BOX = const(17)  # the address of hot.py's box cell's object word, low 32 bits
_W_BOXHI = const(18)  # and high 32 bits (0 on a 32-bit port)
_W_BOXTOP = const(19)  # offset from it to a word that is 0 for a small int (64-bit: its top)
_W_ZERO = const(20)  # always 0 (_W_BOXTOP's word on a 32-bit port)
_W_NONE = const(21)  # the object word of None
_W_FREEMASK = const(22)  # header bits that must read 1 (FREE) for a free block: 0xF0000007|gm
_W_LIVEMASK = const(23)  # header bits that must be 0 in a live block: 0xC0000005|gm&~7
_W_CTZ = const(24)  # 8 words: the de Bruijn table of ctz and fls
_W_SECRET = const(32)  # free-list links are stored XOR this (0 but on a hardened heap)
_W_SLMAP = const(33)
FLAG_DEBUG = const(1)
W_FLAGS_OFFSET = const(64)  # _W_FLAGS * 4, for kheap
W_FREES_OFFSET = const(28)  # _W_FREES * 4, for kheap
W_SECRET_OFFSET = const(128)  # _W_SECRET * 4, for kheap

_FREE = const(1)
_PREV_FREE = const(2)
_SIZE_MASK = const(0x0FFFFFF8)
_KIND_SHIFT = const(28)
KIND_SHIFT = const(28)
_SL_SHIFT = const(4)  # 16 second-level lists

MAX_ARENA = const(0x0FFFFFF0)  # block sizes must fit _SIZE_MASK
_BAD_LINK = const(0)
_BAD_FREE = const(1)
_BAD_HEADER = const(2)
_BAD_NEXT = const(3)
_BAD_TAG = const(4)
_BAD_MAP = const(5)
_BAD_POISON = const(6)
_BAD_HEAD = const(7)  # a free-list head (_BAD_LINK: a link of the block reported)
#@end

# ---- bit helpers (set-up and introspection: plain Python) -------------------

def _fls(x):
    # Index of the highest set bit of 0 < x < 2**32.
    n = -1
    while x:
        x >>= 1
        n += 1
    return n


def _class_of(gshift, size):
    # List index fl*16 + sl of the class holding blocks of this size.
    if size < (16 << gshift):
        return size >> gshift
    t = _fls(size)
    return ((t - gshift - 3) << _SL_SHIFT) | ((size >> (t - _SL_SHIFT)) & 15)


@micropython.viper
def live_block(arena, p: int) -> int:
    # Header offset of the live block whose payload starts at p, else -1.
    a = ptr32(arena)
    if p < a[_W_FIRST] + HEADER or p >= a[_W_END]:
        return -1
    gs = a[_W_GSHIFT]
    gm = (1 << gs) - 1
    if p & gm:
        return -1
    bit = p >> gs
    if (a[a[_W_LIVEMAP] + (bit >> 5)] >> (bit & 31)) & 1 == 0:
        return -1
    return p - HEADER


@micropython.viper
def block_containing(arena, p: int) -> int:
    # As containing_at, for the arena object.
    return int(containing_at(int(ptr32(arena)), p))


# ---- the allocator -------------------------------------------------------------

@micropython.viper
def usable(arena, p: int) -> int:
    # Usable bytes of the live block at payload p, or -1; a damaged header raises.
    a = ptr32(arena)
    gs = a[_W_GSHIFT]
    gm = (1 << gs) - 1  # noqa: F841 (in scope for the blocks, tlsf.blocks)
    b = int(live_block(arena, p))
    if b < 0:
        return -1
    #@use live_size(size, b)
    ls_h = a[b >> 2]
    size = ls_h & _SIZE_MASK
    if ls_h & a[_W_LIVEMASK] or size < 16:  # not FREE, no bit 2, 30, 31, granule-aligned
        owner._corrupt(a[_W_BASE] + b, _BAD_HEADER)
    if b + size > a[_W_END]:
        owner._corrupt(a[_W_BASE] + b, _BAD_HEADER)
    #@end
    return size - HEADER


@micropython.viper
def kind_of(arena, p: int) -> int:
    # Kind of the live block at payload p, or -1.
    a = ptr32(arena)
    b = int(live_block(arena, p))
    if b < 0:
        return -1
    return (a[b >> 2] >> _KIND_SHIFT) & 3


# ---- raw access ----------------------------------------------------------------

@micropython.viper
def count_failure(arena):
    a = ptr32(arena)
    a[_W_FAILS] = a[_W_FAILS] + 1


@micropython.viper
def load32(arena, off: int) -> uint:
    a = ptr32(arena)
    return uint(a[off >> 2])


@micropython.viper
def store32(arena, off: int, value: uint):
    a = ptr32(arena)
    a[off >> 2] = int(value)


@micropython.viper
def fill(a: ptr8, off: int, value: int, n: int):
    end = off + n
    while off < end:
        a[off] = value
        off += 1


# ---- set-up and introspection (not hot) ---------------------------------------

def _derived_words(arena, g):
    # The control words that follow from the granule and from this MicroPython: where the
    # hot paths find their box cell (hot.py), and the header bits they check.
    return tuple(zip((_W_BOX, _W_BOXHI, _W_BOXTOP, _W_NONE),
                     box_words(uctypes.addressof(arena)))) + (
        (_W_FREEMASK, 0xF0000007 | (g - 1)),  # FREE, no PREV_FREE or kind, G-aligned size
        (_W_LIVEMASK, 0xC0000005 | ((g - 1) & ~7)),  # PREV_FREE and the kind may be set
    )


def _ctz_table():
    # The de Bruijn table of the ctz and fls block helpers.
    table = bytearray(32)
    for i in range(32):
        table[((0x077CB531 << i) & 0xFFFFFFFF) >> 27] = i
    return table


def _layout(size, gshift):
    # The control words that follow from the arena's size and granule: (FLCOUNT, HEADS,
    # LIVEMAP, FIRST, END), and where the control block ends.
    g = 1 << gshift
    flcount = max(1, _fls(size) - gshift - 2)
    heads = _W_SLMAP + flcount
    livemap = heads + flcount * 16
    control_end = (livemap + (size >> gshift) // 32 + 1) * 4
    first = ((control_end + HEADER + g - 1) & -g) - HEADER
    return (flcount, heads, livemap, first, (size & -g) - HEADER), control_end


def format(arena, gshift, base):
    """Lay out an empty heap in arena: control words, then one live block spanning the
    whole block area, whose payload offset it returns: freeing it with the kfree hot path
    (Heap does) makes the heap empty, every list and bitmap set as kfree sets them."""
    size = len(arena)
    g = 1 << gshift
    (flcount, heads, livemap, first, end), control_end = _layout(size, gshift)
    if end - first < MIN_BLOCK:
        raise ValueError("arena of %d bytes is too small" % size)
    fill(arena, 0, 0, control_end)
    words = (
        (_W_MAGIC, _MAGIC), (_W_GSHIFT, gshift), (_W_FIRST, first),
        (_W_END, end), (_W_FLCOUNT, flcount), (_W_LIVEMAP, livemap),
        (_W_HEADS, heads), (_W_BASE, base),
    )
    for index, value in words:
        store32(arena, index * 4, value)
    for index, value in _derived_words(arena, g):
        store32(arena, index * 4, value)
    arena[_W_CTZ * 4:_W_CTZ * 4 + 32] = _ctz_table()
    store32(arena, end, 0)  # epilogue: size 0, used
    store32(arena, first, end - first)
    bit = (first + HEADER) >> gshift
    store32(arena, (livemap + bit // 32) * 4, 1 << (bit % 32))
    store32(arena, _W_USED * 4, end - first - HEADER)
    store32(arena, _W_LIVE * 4, 1)
    return first + HEADER


def counters(arena):
    """(used, peak, live, nfree, allocs, frees, fails) straight from the arena."""
    return tuple(load32(arena, w * 4) for w in range(_W_USED, _W_FAILS + 1))


def free_bytes(arena):
    used, _, live, nfree = counters(arena)[:4]
    span = load32(arena, _W_END * 4) - load32(arena, _W_FIRST * 4)
    return span - used - HEADER * (live + nfree)


def largest_free(arena):
    """Usable size of the biggest free block: the top non-empty class, scanned."""
    flmap = load32(arena, _W_FLMAP * 4)
    if not flmap:
        return 0
    fl = _fls(flmap)
    sl = _fls(load32(arena, (_W_SLMAP + fl) * 4))
    b = load32(arena, (load32(arena, _W_HEADS * 4) + fl * 16 + sl) * 4)
    best = 0
    secret = load32(arena, _W_SECRET * 4)
    steps = load32(arena, _W_NFREE * 4)  # bounded: a looped list ends the walk
    while b and steps > 0 and b < len(arena) - 4:
        best = max(best, load32(arena, b) & _SIZE_MASK)
        b = load32(arena, b + 4) ^ secret
        steps -= 1
    return best - HEADER


def blocks(arena):
    """Yield (payload offset, usable size, kind, free) in address order."""
    b = load32(arena, _W_FIRST * 4)
    end = load32(arena, _W_END * 4)
    while b < end:
        hdr = load32(arena, b)
        size = hdr & _SIZE_MASK
        if size < MIN_BLOCK:
            raise CorruptionError("block at offset 0x%x has size %d" % (b, size))
        yield b + HEADER, size - HEADER, (hdr >> _KIND_SHIFT) & 3, bool(hdr & _FREE)
        b += size


# ---- reports of a damaged free list (out of line: only a damaged arena gets here) -----

def fault(arena, base, addr, what, loop=True):
    """Raise the CorruptionError for a fault found at kernel address addr (a Heap's
    _corrupt, and check()). A bad free-list link (_BAD_LINK, _BAD_HEAD) is named at its
    holder, with where it points (linkfault.py); with loop False, this returns if the
    links of the block at addr agree."""
    if what == _BAD_LINK or what == _BAD_HEAD:
        try:
            from .linkfault import name_link  # only now: nothing else needs it
        except MemoryError:  # no room to look closer: the place the check found
            _corrupt(addr, what)
        name_link(arena, base, (addr - base) & 0xFFFFFFFF, what == _BAD_HEAD, loop)
    if loop:
        _corrupt(addr, what)


def check(arena, base, secret=0):
    """Walk the arena and verify every invariant above (secret: the links' secret);
    True or CorruptionError."""
    def fail(off, what):
        raise CorruptionError("block at 0x%08x: %s" % (base + off, what))

    def word(w):
        return load32(arena, w * 4)

    if word(_W_MAGIC) != _MAGIC:
        raise CorruptionError("arena control block overwritten (bad magic)")
    gshift, first, end = word(_W_GSHIFT), word(_W_FIRST), word(_W_END)
    flcount, heads, livemap = word(_W_FLCOUNT), word(_W_HEADS), word(_W_LIVEMAP)
    # The hot paths index the lists and the live map from these: exactly as format() wrote.
    if gshift not in (3, 4) or (flcount, heads, livemap, first, end) != _layout(
            len(arena), gshift)[0]:
        raise CorruptionError("arena control block overwritten (bad bounds)")
    if word(_W_BASE) != base & 0xFFFFFFFF or word(_W_ZERO) or word(_W_SECRET) != secret:
        raise CorruptionError("arena control block overwritten (base, zero word or secret)")
    g = 1 << gshift
    for index, value in _derived_words(arena, g):
        if word(index) != value:
            raise CorruptionError("arena control block overwritten (word %d)" % index)
    if arena[_W_CTZ * 4:_W_CTZ * 4 + 32] != _ctz_table():
        raise CorruptionError("arena control block overwritten (ctz table)")

    used = live = nfree = 0
    prev_free = False
    b = first
    while b < end:
        hdr = load32(arena, b)
        size = hdr & _SIZE_MASK
        free = bool(hdr & _FREE)
        kind = (hdr >> _KIND_SHIFT) & 3
        if size < MIN_BLOCK or size % g or b + size > end or hdr & 0xC0000004:
            fail(b, "header overwritten (0x%08x)" % hdr)
        if bool(hdr & _PREV_FREE) != prev_free:
            fail(b, "PREV_FREE bit disagrees with the block before it")
        if free and prev_free:
            fail(b, "two adjacent free blocks (missed coalescing)")
        p = b + HEADER
        is_live = (word(livemap + (p >> gshift) // 32) >> ((p >> gshift) % 32)) & 1
        if is_live == free:
            fail(b, "live map says %s" % ("live" if is_live else "free"))
        if free:
            nfree += 1
            if load32(arena, b + size - 4) != size:
                fail(b, "boundary tag does not match the size")
            if kind:
                fail(b, "free block carries a kind")
        else:
            live += 1
            used += size - HEADER
            if kind == KIND_STACK and not (
                load32(arena, p) == STACK_CANARY == load32(arena, p + 4)
            ):
                fail(b, "kernel stack overflow (canary at 0x%08x damaged)" % (base + p))
        prev_free = free
        b += size
    if b != end or load32(arena, end) & ~_PREV_FREE:
        fail(end, "epilogue overwritten")
    if bool(load32(arena, end) & _PREV_FREE) != prev_free:
        fail(end, "PREV_FREE bit of the epilogue is wrong")

    counted = counters(arena)
    if (used, live, nfree) != (counted[0], counted[2], counted[3]):
        raise CorruptionError(
            "counters say used=%d live=%d free=%d, blocks say %d, %d, %d"
            % (counted[0], counted[2], counted[3], used, live, nfree))
    bits = sum(bin(word(w)).count("1") for w in range(livemap, livemap + (len(arena) >> gshift) // 32 + 1))
    if bits != live:
        raise CorruptionError("live map marks %d blocks, %d are live" % (bits, live))

    listed = 0
    flmap = word(_W_FLMAP)
    for fl in range(flcount):
        slmap = word(_W_SLMAP + fl)
        if bool(flmap >> fl & 1) != bool(slmap):
            raise CorruptionError("first-level bitmap bit %d is wrong" % fl)
        for sl in range(16):
            b = word(heads + fl * 16 + sl)
            if bool(b) != bool(slmap >> sl & 1):
                raise CorruptionError("second-level bitmap bit %d/%d is wrong" % (fl, sl))
            prev = 0
            at, what = (heads + fl * 16 + sl) * 4, _BAD_HEAD  # where link b was read
            while b:
                listed += 1
                hdr = load32(arena, b) if first <= b < end else 0
                if listed > nfree or not hdr & _FREE or (b + 4) % g:
                    # No free block there (the walk above found the blocks sound): the link
                    # is bad, reported at its holder as the hot paths report it.
                    fault(arena, base, base + at, what)
                if _class_of(gshift, hdr & _SIZE_MASK) != fl * 16 + sl:
                    fail(b, "on free list %d/%d, the wrong size class" % (fl, sl))
                if load32(arena, b + 8) ^ secret != prev:
                    fault(arena, base, base + b, _BAD_LINK, False)
                    fail(b, "back link of free list %d/%d is wrong" % (fl, sl))
                prev, b = b, load32(arena, b + 4) ^ secret
                at, what = prev, _BAD_LINK
    if listed != nfree:
        raise CorruptionError("%d free blocks, %d on free lists" % (nfree, listed))
    return True
