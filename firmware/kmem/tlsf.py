# TLSF (two-level segregated fit) allocator core over one bytearray arena.
#
# The arena is the whole state: control words, free-list heads, bitmaps and
# blocks all live in it; no Python object exists per block. The hot paths
# (malloc, free, realloc, usable) are viper functions doing integer work on a
# ptr32 view of the arena, so they allocate nothing and cost O(1).
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
#   offset 0)  [16] FLAGS (bit 0: debug messages on)
#   [17 .. 17+FLCOUNT)       SLMAP[fl]: second-level bitmap per first level
#   [HEADS .. +FLCOUNT*16)   HEADS[fl*16+sl]: first free block of each class
#   [LIVEMAP ..)             one bit per granule: set at each live payload
#   FIRST ..                 blocks, then a 4-byte epilogue header at END
#
# Block: one header word, then the payload.
#   header = size | kind << 28 | PREV_FREE (2) | FREE (1)
#   size: whole block in bytes (header included), a multiple of G, >= 16.
#   kind: 0 kmalloc block, 1 kernel stack, 2 mm_struct, 3 vm_area_struct.
#   A free block also holds: +4 next free, +8 previous free (offsets, 0 = end)
#   and its size again in its last word (the boundary tag that lets the block
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
import micropython
from micropython import const

KIND_PLAIN = const(0)
KIND_STACK = const(1)
KIND_MM = const(2)
KIND_VMA = const(3)
KIND_NAMES = ("kmalloc block", "kernel stack", "mm_struct", "vm_area_struct")

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
_W_SLMAP = const(17)
FLAG_DEBUG = const(1)
W_FLAGS_OFFSET = const(64)  # _W_FLAGS * 4, for kheap

_FREE = const(1)
_PREV_FREE = const(2)
_SIZE_MASK = const(0x0FFFFFF8)
_KIND_SHIFT = const(28)
KIND_SHIFT = const(28)
_SL_SHIFT = const(4)  # 16 second-level lists

MAX_ARENA = const(0x0FFFFFF0)  # block sizes must fit _SIZE_MASK

# What a hot path found wrong, for CorruptionError (see _corrupt).
_BAD_LINK = const(0)
_BAD_FREE = const(1)
_BAD_HEADER = const(2)
_BAD_NEXT = const(3)
_BAD_TAG = const(4)
_CORRUPT = ("free list link is broken", "free block header or boundary tag overwritten",
            "header overwritten", "header of the next block overwritten",
            "boundary tag before the block overwritten")


def _corrupt(addr, what):
    # Out of line: only reached when the arena is damaged.
    raise CorruptionError("block at 0x%08x: %s" % (addr & 0xFFFFFFFF, _CORRUPT[what]))


# ---- bit helpers -----------------------------------------------------------

@micropython.viper
def _fls(x: int) -> int:
    # Index of the highest set bit of 0 < x < 2**32.
    n = 0
    if x >= 0x10000:
        x >>= 16
        n += 16
    if x >= 0x100:
        x >>= 8
        n += 8
    if x >= 0x10:
        x >>= 4
        n += 4
    if x >= 0x4:
        x >>= 2
        n += 2
    if x >= 0x2:
        n += 1
    return n


# ---- size classes and free lists ---------------------------------------------

@micropython.viper
def _class_of(arena, size: int) -> int:
    # List index fl*16 + sl of the class holding blocks of this size.
    a = ptr32(arena)
    gs = a[_W_GSHIFT]
    if size < (16 << gs):
        return size >> gs
    t = int(_fls(size))
    return ((t - gs - 3) << _SL_SHIFT) | ((size >> (t - _SL_SHIFT)) & 15)


@micropython.viper
def _insert_free(arena, b: int, size: int):
    a = ptr32(arena)
    gs = a[_W_GSHIFT]
    #@use link(b, size)
    if size < (16 << gs):
        ln_li = size >> gs
    else:
        fl_x = size
        co_t = 0
        if fl_x >= 0x10000:
            fl_x >>= 16
            co_t += 16
        if fl_x >= 0x100:
            fl_x >>= 8
            co_t += 8
        if fl_x >= 0x10:
            fl_x >>= 4
            co_t += 4
        if fl_x >= 0x4:
            fl_x >>= 2
            co_t += 2
        if fl_x >= 0x2:
            co_t += 1
        ln_li = ((co_t - gs - 3) << 4) | ((size >> (co_t - 4)) & 15)
    ln_head = a[_W_HEADS] + ln_li
    ln_nxt = a[ln_head]
    if ln_nxt:
        if ln_nxt < a[_W_FIRST] or ln_nxt >= a[_W_END] or (ln_nxt + 4) & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + b, _BAD_LINK)
    a[(b >> 2) + 1] = ln_nxt
    a[(b >> 2) + 2] = 0
    if ln_nxt:
        a[(ln_nxt >> 2) + 2] = b
    a[ln_head] = b
    ln_fl = ln_li >> 4
    a[_W_SLMAP + ln_fl] = a[_W_SLMAP + ln_fl] | (1 << (ln_li & 15))
    a[_W_FLMAP] = a[_W_FLMAP] | (1 << ln_fl)
    a[_W_NFREE] = a[_W_NFREE] + 1
    #@end


@micropython.viper
def _remove_free(arena, b: int, size: int):
    a = ptr32(arena)
    gs = a[_W_GSHIFT]
    #@use unlink(b, size)
    ul_nxt = a[(b >> 2) + 1]
    ul_prv = a[(b >> 2) + 2]
    if ul_nxt:
        if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + b, _BAD_LINK)
    if ul_prv:
        if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + b, _BAD_LINK)
    if ul_nxt and a[(ul_nxt >> 2) + 2] != b:
        _corrupt(a[_W_BASE] + b, _BAD_LINK)
    if size < (16 << gs):
        ul_li = size >> gs
    else:
        fl_x = size
        co_t = 0
        if fl_x >= 0x10000:
            fl_x >>= 16
            co_t += 16
        if fl_x >= 0x100:
            fl_x >>= 8
            co_t += 8
        if fl_x >= 0x10:
            fl_x >>= 4
            co_t += 4
        if fl_x >= 0x4:
            fl_x >>= 2
            co_t += 2
        if fl_x >= 0x2:
            co_t += 1
        ul_li = ((co_t - gs - 3) << 4) | ((size >> (co_t - 4)) & 15)
    ul_head = a[_W_HEADS] + ul_li
    if ul_prv:
        if a[(ul_prv >> 2) + 1] != b:
            _corrupt(a[_W_BASE] + b, _BAD_LINK)
    elif a[ul_head] != b:
        _corrupt(a[_W_BASE] + b, _BAD_LINK)
    if ul_nxt:
        a[(ul_nxt >> 2) + 2] = ul_prv
    if ul_prv:
        a[(ul_prv >> 2) + 1] = ul_nxt
    else:
        a[ul_head] = ul_nxt
        if ul_nxt == 0:
            ul_fl = ul_li >> 4
            ul_map = a[_W_SLMAP + ul_fl] & ~(1 << (ul_li & 15))
            a[_W_SLMAP + ul_fl] = ul_map
            if ul_map == 0:
                a[_W_FLMAP] = a[_W_FLMAP] & ~(1 << ul_fl)
    a[_W_NFREE] = a[_W_NFREE] - 1
    #@end


@micropython.viper
def _first_fit_at(addr: int, size: int) -> int:
    # Fallback when good fit fails: the request's own class may still hold a block that is
    # big enough (the good-fit search skips it by rounding up). The walk is bounded by the
    # number of free blocks and checks each link before following it.
    a = ptr32(addr)
    gs = a[_W_GSHIFT]
    #@use class_of(li, size)
    if size < (16 << gs):
        li = size >> gs
    else:
        fl_x = size
        co_t = 0
        if fl_x >= 0x10000:
            fl_x >>= 16
            co_t += 16
        if fl_x >= 0x100:
            fl_x >>= 8
            co_t += 8
        if fl_x >= 0x10:
            fl_x >>= 4
            co_t += 4
        if fl_x >= 0x4:
            fl_x >>= 2
            co_t += 2
        if fl_x >= 0x2:
            co_t += 1
        li = ((co_t - gs - 3) << 4) | ((size >> (co_t - 4)) & 15)
    #@end
    if (li >> 4) >= a[_W_FLCOUNT]:
        return 0
    b = a[a[_W_HEADS] + li]
    left = a[_W_NFREE]
    while b:
        #@use check_link(b, b)
        if b:
            if b < a[_W_FIRST] or b >= a[_W_END] or (b + 4) & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
        #@end
        if left <= 0:
            _corrupt(a[_W_BASE] + b, _BAD_LINK)
        left -= 1
        if (a[b >> 2] & _SIZE_MASK) >= size:
            return b
        b = a[(b >> 2) + 1]
    return 0


# ---- the live map: one bit per granule, set at each live payload ------------

@micropython.viper
def live_block(arena, p: int) -> int:
    # Header offset of the live block whose payload starts at p, else -1.
    a = ptr32(arena)
    if p < a[_W_FIRST] + HEADER or p >= a[_W_END]:
        return -1
    gs = a[_W_GSHIFT]
    if p & ((1 << gs) - 1):
        return -1
    bit = p >> gs
    if (a[a[_W_LIVEMAP] + (bit >> 5)] >> (bit & 31)) & 1 == 0:
        return -1
    return p - HEADER


@micropython.viper
def containing_at(addr: int, p: int) -> int:
    # Payload offset of the live block that contains byte p of the arena at addr, else -1.
    # Out of line: memset and memcpy call it (their byte loop outweighs the call).
    a = ptr32(addr)
    gs = a[_W_GSHIFT]
    #@use containing(start, p)
    start = -1
    if p >= a[_W_FIRST] + HEADER and p < a[_W_END]:
        ct_lm = a[_W_LIVEMAP]
        ct_bit = p >> gs
        ct_w = ct_lm + (ct_bit >> 5)
        ct_word = a[ct_w] & ((2 << (ct_bit & 31)) - 1)
        while ct_word == 0 and ct_w > ct_lm:
            ct_w -= 1
            ct_word = a[ct_w]
        if ct_word:
            if ct_word < 0:
                ct_top = 31
            else:
                fl_x = ct_word
                ct_top = 0
                if fl_x >= 0x10000:
                    fl_x >>= 16
                    ct_top += 16
                if fl_x >= 0x100:
                    fl_x >>= 8
                    ct_top += 8
                if fl_x >= 0x10:
                    fl_x >>= 4
                    ct_top += 4
                if fl_x >= 0x4:
                    fl_x >>= 2
                    ct_top += 2
                if fl_x >= 0x2:
                    ct_top += 1
            start = (((ct_w - ct_lm) << 5) + ct_top) << gs
            ls_h = a[(start - HEADER) >> 2]
            ct_size = ls_h & _SIZE_MASK
            if ls_h & 5 or (ls_h >> 30) & 3 or ct_size < 16 or ct_size & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + (start - HEADER), _BAD_HEADER)
            if (start - HEADER) + ct_size > a[_W_END]:
                _corrupt(a[_W_BASE] + (start - HEADER), _BAD_HEADER)
            if p >= start - HEADER + ct_size:
                start = -1
    #@end
    return start


@micropython.viper
def block_containing(arena, p: int) -> int:
    # As containing_at, for the arena object.
    return int(containing_at(int(ptr32(arena)), p))


# ---- the allocator -------------------------------------------------------------

@micropython.viper
def _block_size_for(arena, n: int) -> int:
    a = ptr32(arena)
    g = 1 << a[_W_GSHIFT]
    size = (n + HEADER + g - 1) & -g
    if size < MIN_BLOCK:
        return MIN_BLOCK
    return size


@micropython.viper
def _release(arena, b: int, size: int):
    # Turn [b, b+size) into a free block, merging with free neighbours (each checked
    # before it is trusted, as in kfree).
    a = ptr32(arena)
    gs = a[_W_GSHIFT]
    nb = b + size
    nh = a[nb >> 2]
    if nh & _FREE:
        #@use free_size(nsize, nb)
        fs_h = a[nb >> 2]
        nsize = fs_h & _SIZE_MASK
        if (fs_h & 7) != 1 or (fs_h >> 28) & 15 or nsize < 16 or nsize & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + nb, _BAD_FREE)
        if nb + nsize > a[_W_END] or a[((nb + nsize) >> 2) - 1] != nsize:
            _corrupt(a[_W_BASE] + nb, _BAD_FREE)
        #@end
        _remove_free(arena, nb, nsize)
        size += nsize
    if a[b >> 2] & _PREV_FREE:
        psize = a[(b >> 2) - 1]
        if psize < MIN_BLOCK or psize & ((1 << gs) - 1) or b - psize < a[_W_FIRST]:
            _corrupt(a[_W_BASE] + b, _BAD_TAG)
        #@use free_size(pchk, b - psize)
        fs_h = a[(b - psize) >> 2]
        pchk = fs_h & _SIZE_MASK
        if (fs_h & 7) != 1 or (fs_h >> 28) & 15 or pchk < 16 or pchk & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + (b - psize), _BAD_FREE)
        if (b - psize) + pchk > a[_W_END] or a[(((b - psize) + pchk) >> 2) - 1] != pchk:
            _corrupt(a[_W_BASE] + (b - psize), _BAD_FREE)
        #@end
        if pchk != psize:
            _corrupt(a[_W_BASE] + b, _BAD_TAG)
        b -= psize
        _remove_free(arena, b, psize)
        size += psize
    a[b >> 2] = size | _FREE
    a[((b + size) >> 2) - 1] = size
    nb = b + size
    a[nb >> 2] = a[nb >> 2] | _PREV_FREE
    _insert_free(arena, b, size)


@micropython.viper
def _note_used(arena, delta: int):
    a = ptr32(arena)
    used = a[_W_USED] + delta
    a[_W_USED] = used
    if used > a[_W_PEAK]:
        a[_W_PEAK] = used


# ---- the hot paths: one viper body per operation ----------------------------------
#
# bind() makes kmalloc, kfree and ksize for one arena as closures over its raw buffer
# address (a captured int: cheaper than ptr32 of the bytearray) and its Heap (for the
# out-of-line paths: errors, debug messages, first use). A Heap keeps them as instance
# attributes and the kmem module exports the default heap's, retargeted by init(): no
# layer sits between the caller and the body. The block helpers are inlined from
# firmware/blocks/tlsf.blocks. Results are boxed through the module global _ret (viper
# cannot box an int for an `object` return, and storing an existing global allocates
# nothing), so every path, NULL and out of memory included, runs under heap_lock. A
# closure call passes its cells with its arguments, and allocates when they are more than
# five: each body keeps to that.

_ret = 0


def _cells_hold_raw_words():
    # Does this viper store a native int into a closure cell unboxed? Then a hot path can
    # box a small int by hand, (x << 1) | 1, for free; else it boxes through _ret.
    box = 0

    @micropython.viper
    def probe(x: int) -> object:
        nonlocal box
        box = (x << 1) | 1
        return box

    try:
        return probe(5) == 5
    except Exception:
        return False


_RAW_CELLS = _cells_hold_raw_words()


def bind(heap, addr):
    """(kmalloc, kfree, ksize, kzalloc, memset, memcpy, retarget) over the arena at raw
    address addr, owned by heap.
    retarget(heap, addr) points them at another arena (addr 0: none yet; the first call
    then asks heap() for one)."""

    @micropython.viper
    def kmalloc(nbytes) -> object:
        global _ret
        nonlocal tag
        ad = int(addr)
        if ad == 0:  # the default heap, before its first use
            owner()
            ad = int(addr)
        # int() truncates a big int to a machine word. `tag` gets the object word of the
        # small int n by hand ((n << 1) | 1; viper stores a native int into a closure cell
        # as it is), so `tag is nbytes` holds only for the small int it was: a bool or a big
        # int takes the slow path, which decides. (Were the cell ever boxed, the test would
        # just always fail: slower, never wrong.)
        bad = 0
        try:
            n = int(nbytes)
        except Exception:
            bad = 1
            n = 0
        if raw:
            tag = (n << 1) | 1
            if tag is not nbytes:
                bad = 1
        else:
            _ret = n
            if _ret is not nbytes:
                bad = 1
        if bad or (n >> 28):  # negative or beyond any arena, too
            return owner._kmalloc_slow(nbytes)
        if n == 0:
            return None
        a = ptr32(ad)
        gs = a[_W_GSHIFT]
        need = (n + HEADER + (1 << gs) - 1) & (-1 << gs)
        if need < MIN_BLOCK:
            need = MIN_BLOCK
        # Good fit: the first non-empty class whose every block is >= need.
        want = need
        if need >= (16 << gs):
            #@use fls(ca_t, need)
            fl_x = need
            ca_t = 0
            if fl_x >= 0x10000:
                fl_x >>= 16
                ca_t += 16
            if fl_x >= 0x100:
                fl_x >>= 8
                ca_t += 8
            if fl_x >= 0x10:
                fl_x >>= 4
                ca_t += 4
            if fl_x >= 0x4:
                fl_x >>= 2
                ca_t += 2
            if fl_x >= 0x2:
                ca_t += 1
            #@end
            want = need + (1 << (ca_t - 4)) - 1
        #@use class_of(li, want)
        if want < (16 << gs):
            li = want >> gs
        else:
            fl_x = want
            co_t = 0
            if fl_x >= 0x10000:
                fl_x >>= 16
                co_t += 16
            if fl_x >= 0x100:
                fl_x >>= 8
                co_t += 8
            if fl_x >= 0x10:
                fl_x >>= 4
                co_t += 4
            if fl_x >= 0x4:
                fl_x >>= 2
                co_t += 2
            if fl_x >= 0x2:
                co_t += 1
            li = ((co_t - gs - 3) << 4) | ((want >> (co_t - 4)) & 15)
        #@end
        fl = li >> 4
        b = 0
        if fl < a[_W_FLCOUNT]:
            slmap = a[_W_SLMAP + fl] & (-1 << (li & 15))
            if slmap == 0:
                flmap = a[_W_FLMAP] & (-1 << (fl + 1))
                if flmap:
                    #@use fls(fl, flmap & -flmap)
                    fl_x = (flmap & -flmap)
                    fl = 0
                    if fl_x >= 0x10000:
                        fl_x >>= 16
                        fl += 16
                    if fl_x >= 0x100:
                        fl_x >>= 8
                        fl += 8
                    if fl_x >= 0x10:
                        fl_x >>= 4
                        fl += 4
                    if fl_x >= 0x4:
                        fl_x >>= 2
                        fl += 2
                    if fl_x >= 0x2:
                        fl += 1
                    #@end
                    slmap = a[_W_SLMAP + fl]
            if slmap:
                #@use fls(sl, slmap & -slmap)
                fl_x = (slmap & -slmap)
                sl = 0
                if fl_x >= 0x10000:
                    fl_x >>= 16
                    sl += 16
                if fl_x >= 0x100:
                    fl_x >>= 8
                    sl += 8
                if fl_x >= 0x10:
                    fl_x >>= 4
                    sl += 4
                if fl_x >= 0x4:
                    fl_x >>= 2
                    sl += 2
                if fl_x >= 0x2:
                    sl += 1
                #@end
                b = a[a[_W_HEADS] + (fl << 4) + sl]
        if b == 0:
            b = int(_first_fit_at(ad, need))
            if b == 0:
                a[_W_FAILS] = a[_W_FAILS] + 1
                return owner._oom()
        #@use check_link(b, b)
        if b:
            if b < a[_W_FIRST] or b >= a[_W_END] or (b + 4) & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
        #@end
        #@use free_size(size, b)
        fs_h = a[b >> 2]
        size = fs_h & _SIZE_MASK
        if (fs_h & 7) != 1 or (fs_h >> 28) & 15 or size < 16 or size & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + b, _BAD_FREE)
        if b + size > a[_W_END] or a[((b + size) >> 2) - 1] != size:
            _corrupt(a[_W_BASE] + b, _BAD_FREE)
        #@end
        if size < need:
            _corrupt(a[_W_BASE] + b, _BAD_FREE)
        #@use unlink(b, size)
        ul_nxt = a[(b >> 2) + 1]
        ul_prv = a[(b >> 2) + 2]
        if ul_nxt:
            if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
        if ul_prv:
            if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
        if ul_nxt and a[(ul_nxt >> 2) + 2] != b:
            _corrupt(a[_W_BASE] + b, _BAD_LINK)
        if size < (16 << gs):
            ul_li = size >> gs
        else:
            fl_x = size
            co_t = 0
            if fl_x >= 0x10000:
                fl_x >>= 16
                co_t += 16
            if fl_x >= 0x100:
                fl_x >>= 8
                co_t += 8
            if fl_x >= 0x10:
                fl_x >>= 4
                co_t += 4
            if fl_x >= 0x4:
                fl_x >>= 2
                co_t += 2
            if fl_x >= 0x2:
                co_t += 1
            ul_li = ((co_t - gs - 3) << 4) | ((size >> (co_t - 4)) & 15)
        ul_head = a[_W_HEADS] + ul_li
        if ul_prv:
            if a[(ul_prv >> 2) + 1] != b:
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
        elif a[ul_head] != b:
            _corrupt(a[_W_BASE] + b, _BAD_LINK)
        if ul_nxt:
            a[(ul_nxt >> 2) + 2] = ul_prv
        if ul_prv:
            a[(ul_prv >> 2) + 1] = ul_nxt
        else:
            a[ul_head] = ul_nxt
            if ul_nxt == 0:
                ul_fl = ul_li >> 4
                ul_map = a[_W_SLMAP + ul_fl] & ~(1 << (ul_li & 15))
                a[_W_SLMAP + ul_fl] = ul_map
                if ul_map == 0:
                    a[_W_FLMAP] = a[_W_FLMAP] & ~(1 << ul_fl)
        a[_W_NFREE] = a[_W_NFREE] - 1
        #@end
        rest = size - need
        if rest >= MIN_BLOCK:
            r = b + need
            a[r >> 2] = rest | _FREE
            a[((r + rest) >> 2) - 1] = rest
            #@use link(r, rest)
            if rest < (16 << gs):
                ln_li = rest >> gs
            else:
                fl_x = rest
                co_t = 0
                if fl_x >= 0x10000:
                    fl_x >>= 16
                    co_t += 16
                if fl_x >= 0x100:
                    fl_x >>= 8
                    co_t += 8
                if fl_x >= 0x10:
                    fl_x >>= 4
                    co_t += 4
                if fl_x >= 0x4:
                    fl_x >>= 2
                    co_t += 2
                if fl_x >= 0x2:
                    co_t += 1
                ln_li = ((co_t - gs - 3) << 4) | ((rest >> (co_t - 4)) & 15)
            ln_head = a[_W_HEADS] + ln_li
            ln_nxt = a[ln_head]
            if ln_nxt:
                if ln_nxt < a[_W_FIRST] or ln_nxt >= a[_W_END] or (ln_nxt + 4) & ((1 << gs) - 1):
                    _corrupt(a[_W_BASE] + r, _BAD_LINK)
            a[(r >> 2) + 1] = ln_nxt
            a[(r >> 2) + 2] = 0
            if ln_nxt:
                a[(ln_nxt >> 2) + 2] = r
            a[ln_head] = r
            ln_fl = ln_li >> 4
            a[_W_SLMAP + ln_fl] = a[_W_SLMAP + ln_fl] | (1 << (ln_li & 15))
            a[_W_FLMAP] = a[_W_FLMAP] | (1 << ln_fl)
            a[_W_NFREE] = a[_W_NFREE] + 1
            #@end
            size = need
        else:
            nb = b + size
            a[nb >> 2] = a[nb >> 2] & ~_PREV_FREE
        a[b >> 2] = size  # a kmalloc block (kind 0); its predecessor is never free
        p = b + HEADER
        bit = p >> gs
        w = a[_W_LIVEMAP] + (bit >> 5)
        a[w] = a[w] | (1 << (bit & 31))
        used = a[_W_USED] + size - HEADER
        a[_W_USED] = used
        if used > a[_W_PEAK]:
            a[_W_PEAK] = used
        a[_W_LIVE] = a[_W_LIVE] + 1
        a[_W_ALLOCS] = a[_W_ALLOCS] + 1
        q = a[_W_BASE] + p
        if a[_W_FLAGS] & FLAG_DEBUG:
            _ret = uint(q)
            owner._debug_alloc(n, _ret)
        if raw and (q >> 29) == 0:  # a small int everywhere: box it by hand (see tag)
            tag = (q << 1) | 1
            return tag
        _ret = uint(q)
        return _ret

    @micropython.viper
    def kfree(ptr):
        global _ret
        nonlocal tag
        ad = int(addr)
        if ad == 0:  # the default heap, before its first use
            owner()
            ad = int(addr)
        if ptr is null:  # NULL, before int() would raise (an exception costs microseconds)
            return
        bad = 0
        try:
            q = int(ptr)
        except Exception:
            bad = 1
            q = 0
        tag = (q << 1) | 1
        if bad or tag is not ptr:  # as in kmalloc
            _ret = uint(q)
            if bad or not ptr == _ret:  # a big int that is a 32-bit address goes on
                owner._kfree_slow(ptr)  # TypeError / ValueError
                return
        elif q < 0:  # a negative small int is no address (with a base >= 2**31 on a
            owner._kfree_slow(ptr)  # 32-bit board, q - base would alias a block)
            return
        if q == 0:
            return
        a = ptr32(ad)
        if a[_W_FLAGS] & FLAG_DEBUG:
            owner._debug_free(ptr)
        gs = a[_W_GSHIFT]
        p = q - a[_W_BASE]
        if p < a[_W_FIRST] + HEADER or p >= a[_W_END] or p & ((1 << gs) - 1):
            owner._bad_free(ptr, -1)
        bit = p >> gs
        w = a[_W_LIVEMAP] + (bit >> 5)
        if (a[w] >> (bit & 31)) & 1 == 0:
            owner._bad_free(ptr, -1)
        b = p - HEADER
        #@use live_size(size, b)
        ls_h = a[b >> 2]
        size = ls_h & _SIZE_MASK
        if ls_h & 5 or (ls_h >> 30) & 3 or size < 16 or size & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + b, _BAD_HEADER)
        if b + size > a[_W_END]:
            _corrupt(a[_W_BASE] + b, _BAD_HEADER)
        #@end
        if (a[b >> 2] >> _KIND_SHIFT) & 3:
            owner._bad_free(ptr, -2)
        # Both neighbours are checked before anything changes.
        nb = b + size
        nh = a[nb >> 2]
        if nh & _PREV_FREE:
            _corrupt(a[_W_BASE] + nb, _BAD_NEXT)
        nsize = 0
        if nh & _FREE:
            #@use free_size(nsize, nb)
            fs_h = a[nb >> 2]
            nsize = fs_h & _SIZE_MASK
            if (fs_h & 7) != 1 or (fs_h >> 28) & 15 or nsize < 16 or nsize & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + nb, _BAD_FREE)
            if nb + nsize > a[_W_END] or a[((nb + nsize) >> 2) - 1] != nsize:
                _corrupt(a[_W_BASE] + nb, _BAD_FREE)
            #@end
        psize = 0
        if a[b >> 2] & _PREV_FREE:
            psize = a[(b >> 2) - 1]
            if psize < MIN_BLOCK or psize & ((1 << gs) - 1) or b - psize < a[_W_FIRST]:
                _corrupt(a[_W_BASE] + b, _BAD_TAG)
            #@use free_size(pchk, b - psize)
            fs_h = a[(b - psize) >> 2]
            pchk = fs_h & _SIZE_MASK
            if (fs_h & 7) != 1 or (fs_h >> 28) & 15 or pchk < 16 or pchk & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + (b - psize), _BAD_FREE)
            if (b - psize) + pchk > a[_W_END] or a[(((b - psize) + pchk) >> 2) - 1] != pchk:
                _corrupt(a[_W_BASE] + (b - psize), _BAD_FREE)
            #@end
            if pchk != psize:
                _corrupt(a[_W_BASE] + b, _BAD_TAG)
        a[w] = a[w] & ~(1 << (bit & 31))
        a[_W_USED] = a[_W_USED] - (size - HEADER)
        a[_W_LIVE] = a[_W_LIVE] - 1
        a[_W_FREES] = a[_W_FREES] + 1
        if nsize:
            #@use unlink(nb, nsize)
            ul_nxt = a[(nb >> 2) + 1]
            ul_prv = a[(nb >> 2) + 2]
            if ul_nxt:
                if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & ((1 << gs) - 1):
                    _corrupt(a[_W_BASE] + nb, _BAD_LINK)
            if ul_prv:
                if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & ((1 << gs) - 1):
                    _corrupt(a[_W_BASE] + nb, _BAD_LINK)
            if ul_nxt and a[(ul_nxt >> 2) + 2] != nb:
                _corrupt(a[_W_BASE] + nb, _BAD_LINK)
            if nsize < (16 << gs):
                ul_li = nsize >> gs
            else:
                fl_x = nsize
                co_t = 0
                if fl_x >= 0x10000:
                    fl_x >>= 16
                    co_t += 16
                if fl_x >= 0x100:
                    fl_x >>= 8
                    co_t += 8
                if fl_x >= 0x10:
                    fl_x >>= 4
                    co_t += 4
                if fl_x >= 0x4:
                    fl_x >>= 2
                    co_t += 2
                if fl_x >= 0x2:
                    co_t += 1
                ul_li = ((co_t - gs - 3) << 4) | ((nsize >> (co_t - 4)) & 15)
            ul_head = a[_W_HEADS] + ul_li
            if ul_prv:
                if a[(ul_prv >> 2) + 1] != nb:
                    _corrupt(a[_W_BASE] + nb, _BAD_LINK)
            elif a[ul_head] != nb:
                _corrupt(a[_W_BASE] + nb, _BAD_LINK)
            if ul_nxt:
                a[(ul_nxt >> 2) + 2] = ul_prv
            if ul_prv:
                a[(ul_prv >> 2) + 1] = ul_nxt
            else:
                a[ul_head] = ul_nxt
                if ul_nxt == 0:
                    ul_fl = ul_li >> 4
                    ul_map = a[_W_SLMAP + ul_fl] & ~(1 << (ul_li & 15))
                    a[_W_SLMAP + ul_fl] = ul_map
                    if ul_map == 0:
                        a[_W_FLMAP] = a[_W_FLMAP] & ~(1 << ul_fl)
            a[_W_NFREE] = a[_W_NFREE] - 1
            #@end
            size += nsize
        if psize:
            b -= psize
            #@use unlink(b, psize)
            ul_nxt = a[(b >> 2) + 1]
            ul_prv = a[(b >> 2) + 2]
            if ul_nxt:
                if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & ((1 << gs) - 1):
                    _corrupt(a[_W_BASE] + b, _BAD_LINK)
            if ul_prv:
                if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & ((1 << gs) - 1):
                    _corrupt(a[_W_BASE] + b, _BAD_LINK)
            if ul_nxt and a[(ul_nxt >> 2) + 2] != b:
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
            if psize < (16 << gs):
                ul_li = psize >> gs
            else:
                fl_x = psize
                co_t = 0
                if fl_x >= 0x10000:
                    fl_x >>= 16
                    co_t += 16
                if fl_x >= 0x100:
                    fl_x >>= 8
                    co_t += 8
                if fl_x >= 0x10:
                    fl_x >>= 4
                    co_t += 4
                if fl_x >= 0x4:
                    fl_x >>= 2
                    co_t += 2
                if fl_x >= 0x2:
                    co_t += 1
                ul_li = ((co_t - gs - 3) << 4) | ((psize >> (co_t - 4)) & 15)
            ul_head = a[_W_HEADS] + ul_li
            if ul_prv:
                if a[(ul_prv >> 2) + 1] != b:
                    _corrupt(a[_W_BASE] + b, _BAD_LINK)
            elif a[ul_head] != b:
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
            if ul_nxt:
                a[(ul_nxt >> 2) + 2] = ul_prv
            if ul_prv:
                a[(ul_prv >> 2) + 1] = ul_nxt
            else:
                a[ul_head] = ul_nxt
                if ul_nxt == 0:
                    ul_fl = ul_li >> 4
                    ul_map = a[_W_SLMAP + ul_fl] & ~(1 << (ul_li & 15))
                    a[_W_SLMAP + ul_fl] = ul_map
                    if ul_map == 0:
                        a[_W_FLMAP] = a[_W_FLMAP] & ~(1 << ul_fl)
            a[_W_NFREE] = a[_W_NFREE] - 1
            #@end
            size += psize
        a[b >> 2] = size | _FREE
        a[((b + size) >> 2) - 1] = size
        nb = b + size
        a[nb >> 2] = a[nb >> 2] | _PREV_FREE
        #@use link(b, size)
        if size < (16 << gs):
            ln_li = size >> gs
        else:
            fl_x = size
            co_t = 0
            if fl_x >= 0x10000:
                fl_x >>= 16
                co_t += 16
            if fl_x >= 0x100:
                fl_x >>= 8
                co_t += 8
            if fl_x >= 0x10:
                fl_x >>= 4
                co_t += 4
            if fl_x >= 0x4:
                fl_x >>= 2
                co_t += 2
            if fl_x >= 0x2:
                co_t += 1
            ln_li = ((co_t - gs - 3) << 4) | ((size >> (co_t - 4)) & 15)
        ln_head = a[_W_HEADS] + ln_li
        ln_nxt = a[ln_head]
        if ln_nxt:
            if ln_nxt < a[_W_FIRST] or ln_nxt >= a[_W_END] or (ln_nxt + 4) & ((1 << gs) - 1):
                _corrupt(a[_W_BASE] + b, _BAD_LINK)
        a[(b >> 2) + 1] = ln_nxt
        a[(b >> 2) + 2] = 0
        if ln_nxt:
            a[(ln_nxt >> 2) + 2] = b
        a[ln_head] = b
        ln_fl = ln_li >> 4
        a[_W_SLMAP + ln_fl] = a[_W_SLMAP + ln_fl] | (1 << (ln_li & 15))
        a[_W_FLMAP] = a[_W_FLMAP] | (1 << ln_fl)
        a[_W_NFREE] = a[_W_NFREE] + 1
        #@end

    @micropython.viper
    def ksize(ptr) -> int:
        global _ret
        nonlocal tag
        ad = int(addr)
        if ad == 0:  # the default heap, before its first use
            owner()
            ad = int(addr)
        if ptr is null:
            return 0
        bad = 0
        try:
            q = int(ptr)
        except Exception:
            bad = 1
            q = 0
        tag = (q << 1) | 1
        if bad or tag is not ptr:  # as in kfree
            _ret = uint(q)
            if bad or not ptr == _ret:
                return int(owner._ksize_slow(ptr))
        elif q < 0:
            return int(owner._ksize_slow(ptr))
        if q == 0:
            return 0
        a = ptr32(ad)
        gs = a[_W_GSHIFT]
        p = q - a[_W_BASE]
        if p < a[_W_FIRST] + HEADER or p >= a[_W_END] or p & ((1 << gs) - 1):
            return int(owner._ksize_slow(ptr))
        bit = p >> gs
        if (a[a[_W_LIVEMAP] + (bit >> 5)] >> (bit & 31)) & 1 == 0:
            return int(owner._ksize_slow(ptr))
        #@use live_size(size, p - HEADER)
        ls_h = a[(p - HEADER) >> 2]
        size = ls_h & _SIZE_MASK
        if ls_h & 5 or (ls_h >> 30) & 3 or size < 16 or size & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + (p - HEADER), _BAD_HEADER)
        if (p - HEADER) + size > a[_W_END]:
            _corrupt(a[_W_BASE] + (p - HEADER), _BAD_HEADER)
        #@end
        return size - HEADER

    @micropython.viper
    def kzalloc(nbytes) -> object:
        p = kmalloc(nbytes)  # one call: zeroing the block costs more than it
        if p is null:
            return p
        a = ptr32(int(addr))
        off = int(p) - a[_W_BASE]
        w = off >> 2
        end = (off + int(nbytes) + 3) >> 2  # kmalloc has checked nbytes; the block is
        while w < end:                      # granule-aligned, so whole words stay in it
            a[w] = 0
            w += 1
        return p

    @micropython.viper
    def memset(ptr, value, nbytes) -> object:
        global _ret  # not the tag cell: over 5 cells and arguments, a closure call allocates
        ad = int(addr)
        if ad == 0:
            owner()
            ad = int(addr)
        bad = 0
        try:
            q = int(ptr)
            v = int(value)
            n = int(nbytes)
        except Exception:
            bad = 1
            q = v = n = 0
        if not bad:  # each a small int it was (as in kmalloc)
            _ret = q
            if _ret is not ptr:
                bad = 1
            _ret = v
            if _ret is not value:
                bad = 1
            _ret = n
            if _ret is not nbytes:
                bad = 1
        if bad or (v & -256) or n < 0 or q < 0:
            return owner._memset_checked(ptr, value, nbytes)  # raises, saying why
        a = ptr32(ad)
        gs = a[_W_GSHIFT]
        p = q - a[_W_BASE]
        start = int(containing_at(ad, p))
        if start < 0 or p + n > start + (a[(start >> 2) - 1] & _SIZE_MASK) - HEADER:
            return owner._memset_checked(ptr, value, nbytes)
        b = ptr8(ad)
        end = p + n
        while p < end:
            b[p] = v
            p += 1
        return ptr

    @micropython.viper
    def memcpy(dst, src, nbytes) -> object:
        global _ret  # not the tag cell: over 5 cells and arguments, a closure call allocates
        ad = int(addr)
        if ad == 0:
            owner()
            ad = int(addr)
        bad = 0
        try:
            qd = int(dst)
            qs = int(src)
            n = int(nbytes)
        except Exception:
            bad = 1
            qd = qs = n = 0
        if not bad:
            _ret = qd
            if _ret is not dst:
                bad = 1
            _ret = qs
            if _ret is not src:
                bad = 1
            _ret = n
            if _ret is not nbytes:
                bad = 1
        if bad or n < 0 or qd < 0 or qs < 0:
            return owner._memcpy_checked(dst, src, nbytes)
        a = ptr32(ad)
        gs = a[_W_GSHIFT]
        s = qs - a[_W_BASE]
        start = int(containing_at(ad, s))
        if start < 0 or s + n > start + (a[(start >> 2) - 1] & _SIZE_MASK) - HEADER:
            return owner._memcpy_checked(dst, src, nbytes)
        d = qd - a[_W_BASE]
        start = int(containing_at(ad, d))
        if start < 0 or d + n > start + (a[(start >> 2) - 1] & _SIZE_MASK) - HEADER:
            return owner._memcpy_checked(dst, src, nbytes)
        b = ptr8(ad)
        if d <= s:  # memmove: backwards when the destination overlaps the source's tail
            i = 0
            while i < n:
                b[d + i] = b[s + i]
                i += 1
        else:
            i = n
            while i > 0:
                i -= 1
                b[d + i] = b[s + i]
        return dst

    def retarget(new_owner, new_addr):
        nonlocal owner, addr
        owner, addr = new_owner, new_addr

    owner = heap
    tag = 0
    raw = _RAW_CELLS
    null = None  # viper compares objects with `is`, not with the None constant
    return kmalloc, kfree, ksize, kzalloc, memset, memcpy, retarget


@micropython.viper
def _owned_block(arena, p: int, kind: int) -> int:
    # Header offset of the live block at payload p when it is of this kind;
    # -1 if p is not a live payload, -2 if the block is of another kind.
    a = ptr32(arena)
    b = int(live_block(arena, p))
    if b < 0:
        return -1
    if (a[b >> 2] >> _KIND_SHIFT) & 3 != kind:
        return -2
    return b


@micropython.viper
def realloc(arena, p: int, n: int) -> int:
    # Resize a kmalloc block in place: p when done, 0 when it must move,
    # -1 / -2 as free(). Never changes anything when it returns <= 0.
    a = ptr32(arena)
    gs = a[_W_GSHIFT]
    b = int(_owned_block(arena, p, KIND_PLAIN))
    if b < 0:
        return b
    hdr = a[b >> 2]
    #@use live_size(size, b)
    ls_h = a[b >> 2]
    size = ls_h & _SIZE_MASK
    if ls_h & 5 or (ls_h >> 30) & 3 or size < 16 or size & ((1 << gs) - 1):
        _corrupt(a[_W_BASE] + b, _BAD_HEADER)
    if b + size > a[_W_END]:
        _corrupt(a[_W_BASE] + b, _BAD_HEADER)
    #@end
    need = int(_block_size_for(arena, n))
    if need > size:
        nb = b + size
        nh = a[nb >> 2]
        if (nh & _FREE) == 0:
            return 0
        #@use free_size(nsize, nb)
        fs_h = a[nb >> 2]
        nsize = fs_h & _SIZE_MASK
        if (fs_h & 7) != 1 or (fs_h >> 28) & 15 or nsize < 16 or nsize & ((1 << gs) - 1):
            _corrupt(a[_W_BASE] + nb, _BAD_FREE)
        if nb + nsize > a[_W_END] or a[((nb + nsize) >> 2) - 1] != nsize:
            _corrupt(a[_W_BASE] + nb, _BAD_FREE)
        #@end
        if size + nsize < need:
            return 0
        _remove_free(arena, nb, nsize)
        nnb = nb + nsize
        a[nnb >> 2] = a[nnb >> 2] & ~_PREV_FREE
        size += nsize
        a[b >> 2] = size | (hdr & _PREV_FREE)
        _note_used(arena, nsize)
    rest = size - need
    if rest >= MIN_BLOCK:
        a[b >> 2] = need | (hdr & _PREV_FREE)
        r = b + need
        a[r >> 2] = rest  # a used-looking block whose predecessor is live
        a[_W_USED] = a[_W_USED] - rest
        _release(arena, r, rest)
    return p


@micropython.viper
def usable(arena, p: int) -> int:
    # Usable bytes of the live block at payload p, or -1; a damaged header raises.
    a = ptr32(arena)
    gs = a[_W_GSHIFT]
    b = int(live_block(arena, p))
    if b < 0:
        return -1
    #@use live_size(size, b)
    ls_h = a[b >> 2]
    size = ls_h & _SIZE_MASK
    if ls_h & 5 or (ls_h >> 30) & 3 or size < 16 or size & ((1 << gs) - 1):
        _corrupt(a[_W_BASE] + b, _BAD_HEADER)
    if b + size > a[_W_END]:
        _corrupt(a[_W_BASE] + b, _BAD_HEADER)
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


@micropython.viper
def move(a: ptr8, dst: int, src: int, n: int):
    # memmove: copy backwards when the destination overlaps the source's tail.
    if dst <= src:
        i = 0
        while i < n:
            a[dst + i] = a[src + i]
            i += 1
    else:
        i = n
        while i > 0:
            i -= 1
            a[dst + i] = a[src + i]


# ---- set-up and introspection (not hot) ---------------------------------------

def format(arena, gshift, base):
    """Lay out an empty heap in arena: control words, then one free block."""
    size = len(arena)
    g = 1 << gshift
    flcount = max(1, _fls(size) - gshift - 2)
    livemap_words = (size >> gshift) // 32 + 1
    heads = _W_SLMAP + flcount
    livemap = heads + flcount * 16
    control_end = (livemap + livemap_words) * 4
    first = ((control_end + HEADER + g - 1) & -g) - HEADER
    end = (size & -g) - HEADER
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
    store32(arena, end, 0)  # epilogue: size 0, used
    store32(arena, first, MIN_BLOCK)  # used-looking, so _release can free it
    _release(arena, first, end - first)


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
    while b:
        best = max(best, load32(arena, b) & _SIZE_MASK)
        b = load32(arena, b + 4)
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


class CorruptionError(Exception):
    """check() found the heap inconsistent; the message names the first fault."""


def check(arena, base):
    """Walk the arena and verify every invariant above; True or CorruptionError."""
    def fail(off, what):
        raise CorruptionError("block at 0x%08x: %s" % (base + off, what))

    def word(w):
        return load32(arena, w * 4)

    if word(_W_MAGIC) != _MAGIC:
        raise CorruptionError("arena control block overwritten (bad magic)")
    gshift, first, end = word(_W_GSHIFT), word(_W_FIRST), word(_W_END)
    flcount, heads, livemap = word(_W_FLCOUNT), word(_W_HEADS), word(_W_LIVEMAP)
    g = 1 << gshift
    if end > len(arena) - HEADER or first >= end or (first + HEADER) % g:
        raise CorruptionError("arena control block overwritten (bad bounds)")

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
            while b:
                listed += 1
                if listed > nfree or not first <= b < end:
                    raise CorruptionError("free list %d/%d is broken" % (fl, sl))
                hdr = load32(arena, b)
                if not hdr & _FREE:
                    fail(b, "on free list %d/%d but not free" % (fl, sl))
                if _class_of(arena, hdr & _SIZE_MASK) != fl * 16 + sl:
                    fail(b, "on free list %d/%d, the wrong size class" % (fl, sl))
                if load32(arena, b + 8) != prev:
                    fail(b, "back link of free list %d/%d is wrong" % (fl, sl))
                prev, b = b, load32(arena, b + 4)
    if listed != nfree:
        raise CorruptionError("%d free blocks, %d on free lists" % (nfree, listed))
    return True
