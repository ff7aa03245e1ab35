# kmem.hot - the hot paths: kmalloc, kfree, ksize, kzalloc, kcalloc, krealloc, memset and
# memcpy, each one viper body over the arena that tlsf.py lays out (see its opening comment for the layout
# and the invariants). A module of its own so that the .py sources compile in less RAM.
import struct
import uctypes
import micropython
from micropython import const

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

_CORRUPT = ("free list link is broken", "free block header or boundary tag overwritten",
            "header overwritten", "header of the next block overwritten",
            "boundary tag before the block overwritten", "free-list bitmap overwritten",
            "freed memory written (use after free)")


class CorruptionError(Exception):
    """check() found the heap inconsistent; the message names the first fault."""


def _corrupt(addr, what):
    # Out of line: only reached when the arena is damaged. (A Heap reports a bad free-list
    # link with tlsf.fault instead: at the link's holder, and where it points.)
    if what == _BAD_HEAD:  # addr: a list head's word
        raise CorruptionError("free list head at 0x%08x is broken" % (addr & 0xFFFFFFFF))
    raise CorruptionError("block at 0x%08x: %s" % (addr & 0xFFFFFFFF, _CORRUPT[what]))


@micropython.viper
def _first_fit_at(addr: int, size: int, owner) -> int:
    # Fallback when good fit fails: the request's own class may still hold a block that is
    # big enough (the good-fit search skips it by rounding up). The walk is bounded by the
    # number of free blocks and checks each link before following it; a bad one is
    # reported to owner (the Heap) at its holder: the list head, then the block before.
    a = ptr32(addr)
    gs = a[_W_GSHIFT]
    gm = (1 << gs) - 1
    sk = a[_W_SECRET]
    #@use class_of(li, size)
    if size < (16 << gs):
        li = size >> gs
    else:
        fl_x = size
        fl_x |= fl_x >> 1
        fl_x |= fl_x >> 2
        fl_x |= fl_x >> 4
        fl_x |= fl_x >> 8
        fl_x |= fl_x >> 16
        fl_x ^= fl_x >> 1
        co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
        li = ((co_t - gs - 3) << 4) | ((size >> (co_t - 4)) & 15)
    #@end
    if (li >> 4) >= a[_W_FLCOUNT]:
        return 0
    at = (a[_W_HEADS] + li) * 4  # where link b was read
    what = _BAD_HEAD
    b = a[at >> 2]
    left = a[_W_NFREE]
    while b:
        #@use check_link(b, at, what)
        if b:
            if b < a[_W_FIRST] or b >= a[_W_END] or (b + 4) & gm:
                owner._corrupt(a[_W_BASE] + at, what)
        #@end
        h = a[b >> 2]
        if left <= 0 or (h & _FREE) == 0:  # more blocks than are free (a loop), or a live one
            owner._corrupt(a[_W_BASE] + at, what)
        left -= 1
        if (h & _SIZE_MASK) >= size:
            return b
        at = b
        what = _BAD_LINK
        b = a[(b >> 2) + 1] ^ sk
    return 0


@micropython.viper
def containing_at(addr: int, p: int) -> int:
    # Payload offset of the live block that contains byte p of the arena at addr, else -1.
    # Out of line: memset and memcpy call it (their byte loop outweighs the call).
    a = ptr32(addr)
    gs = a[_W_GSHIFT]
    gm = (1 << gs) - 1  # noqa: F841 (in scope for the blocks, tlsf.blocks)
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
                fl_x |= fl_x >> 1
                fl_x |= fl_x >> 2
                fl_x |= fl_x >> 4
                fl_x |= fl_x >> 8
                fl_x |= fl_x >> 16
                fl_x ^= fl_x >> 1
                ct_top = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
            start = (((ct_w - ct_lm) << 5) + ct_top) << gs
            ls_h = a[(start - HEADER) >> 2]
            ct_size = ls_h & _SIZE_MASK
            if ls_h & a[_W_LIVEMASK] or ct_size < 16:  # not FREE, no bit 2, 30, 31, granule-aligned
                owner._corrupt(a[_W_BASE] + (start - HEADER), _BAD_HEADER)
            if (start - HEADER) + ct_size > a[_W_END]:
                owner._corrupt(a[_W_BASE] + (start - HEADER), _BAD_HEADER)
            if p >= start - HEADER + ct_size:
                start = -1
    #@end
    return start


@micropython.viper
def move(a: ptr8, dst: int, src: int, n: int):
    # memmove within the buffer (or at the raw address) a: copy backwards when the destination
    # overlaps the source's tail. Whole words while both ends are word-aligned (payloads are:
    # krealloc moves a block that way).
    w = ptr32(a)
    i = 0
    if dst <= src:
        if ((dst | src) & 3) == 0:
            while i + 4 <= n:
                w[(dst + i) >> 2] = w[(src + i) >> 2]
                i += 4
        while i < n:
            a[dst + i] = a[src + i]
            i += 1
    else:
        i = n
        if ((dst | src) & 3) == 0:
            while i & 3:
                i -= 1
                a[dst + i] = a[src + i]
            while i > 0:
                i -= 4
                w[(dst + i) >> 2] = w[(src + i) >> 2]
        while i > 0:
            i -= 1
            a[dst + i] = a[src + i]


# ---- the hot paths: one viper body per operation ----------------------------------
#
# bind() makes the eight hot paths for one arena as closures over its raw buffer address (a
# captured int: cheaper than ptr32 of the bytearray) and its Heap (for the out-of-line paths:
# errors, debug messages, first use).
# A Heap keeps them as instance attributes and the kmem module exports the default heap's,
# retargeted by init(): no layer sits between the caller and the body. The block helpers
# are inlined from firmware/blocks/tlsf.blocks.
#
# Arguments and results pass through `box`, one closure cell shared by every bind(). A
# body stores its argument there (one pointer store) and reads the object word back with
# ptr32 at the cell's address, which format() writes into every arena (_W_BOX...); a
# result is boxed by writing its object word into the cell and returning the cell. So a
# small int is recognised and unboxed by a mask test, and boxed, with no call into the
# runtime, no try (an exception frame on every call, and no local in a register) and no
# global (a viper function that names one swaps the globals dict on every call, under
# an exception frame too): all but memset and memcpy name none, and reach everything out
# of line through their Heap (owner). Anything else (None, a bool, a big
# int, a float...) takes the slow path, which decides. Every path, NULL and out of memory
# included, runs under heap_lock. _box_cell_word() checks at import the layout this relies on
# (py/objclosure.c, py/objcell.c). A closure call passes its cells with its arguments,
# and allocates when they are more than five: each body keeps to that.

_ret = 0  # memset and memcpy compare their arguments' identity through this global


class owner:
    """What the block helpers report corruption to, `owner._corrupt(...)`, outside bind():
    inside, owner is the Heap (and _first_fit_at is given it)."""
    _corrupt = staticmethod(_corrupt)


def _binder():
    box = None  # the shared cell (see above)

    def put_in_box(x):  # for _box_words()
        nonlocal box
        box = x

    def bind(heap, addr):
        """(kmalloc, kfree, ksize, kzalloc, kcalloc, krealloc, memset, memcpy, retarget) over
        the arena at raw address addr, owned by heap.
        retarget(heap, addr) points them at another arena; with addr 0 each of them calls
        heap's own method of its name instead (the default heap before its first use, or
        a hardened heap, whose functions are Python)."""

        @micropython.viper
        def kmalloc(nbytes) -> object:
            nonlocal box
            ad = int(addr)
            if ad == 0:  # no arena: the default heap before its first use, or a hardened one
                return owner.kmalloc(nbytes)
            a = ptr32(ad)
            box = nbytes
            bx = a[_W_BOX] + (a[_W_BOXHI] << 16 << 16)
            w = ptr32(bx)[0]  # nbytes' object word: (n << 1) | 1 for a small int n
            if (w & 1) == 0 or (w >> 29) or ptr32(bx + a[_W_BOXTOP])[0]:
                return owner._kmalloc_slow(nbytes)  # not a small int 0 <= n < 2**28
            n = w >> 1
            if n == 0:
                return None
            a = ptr32(ad)
            gs = a[_W_GSHIFT]
            gm = (1 << gs) - 1
            sk = a[_W_SECRET]
            need = (n + HEADER + (1 << gs) - 1) & (-1 << gs)
            if need < MIN_BLOCK:
                need = MIN_BLOCK
            # Good fit: the first non-empty class whose every block is >= need.
            want = need
            if need >= (16 << gs):
                #@use fls(ca_t, need)
                fl_x = need
                fl_x |= fl_x >> 1
                fl_x |= fl_x >> 2
                fl_x |= fl_x >> 4
                fl_x |= fl_x >> 8
                fl_x |= fl_x >> 16
                fl_x ^= fl_x >> 1
                ca_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                #@end
                want = need + (1 << (ca_t - 4)) - 1
            #@use class_of(li, want)
            if want < (16 << gs):
                li = want >> gs
            else:
                fl_x = want
                fl_x |= fl_x >> 1
                fl_x |= fl_x >> 2
                fl_x |= fl_x >> 4
                fl_x |= fl_x >> 8
                fl_x |= fl_x >> 16
                fl_x ^= fl_x >> 1
                co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                li = ((co_t - gs - 3) << 4) | ((want >> (co_t - 4)) & 15)
            #@end
            fl = li >> 4
            b = 0
            if fl < a[_W_FLCOUNT]:
                slmap = a[_W_SLMAP + fl] & (-1 << (li & 15))
                if slmap == 0:
                    flmap = a[_W_FLMAP] & (-1 << (fl + 1))
                    if flmap:
                        #@use ctz(fl, flmap)
                        ctz_x = flmap
                        fl = ptr8(a)[_W_CTZ * 4 + (((ctz_x & -ctz_x) * 0x077CB531) >> 27 & 31)]
                        #@end
                        if fl >= a[_W_FLCOUNT]:  # a bit no list has: its heads would lie beyond
                            owner._corrupt(a[_W_BASE] + _W_FLMAP * 4, _BAD_MAP)
                        slmap = a[_W_SLMAP + fl]
                if slmap:
                    #@use ctz(sl, slmap)
                    ctz_x = slmap
                    sl = ptr8(a)[_W_CTZ * 4 + (((ctz_x & -ctz_x) * 0x077CB531) >> 27 & 31)]
                    #@end
                    li = (fl << 4) + (sl & 15)  # 16 lists: a stray bit stays in them
                    b = a[a[_W_HEADS] + li]
            if b == 0:
                b = int(owner._first_fit(need))
                if b == 0:
                    a[_W_FAILS] = a[_W_FAILS] + 1
                    return owner._oom()
                #@use class_of(li, need)
                if need < (16 << gs):
                    li = need >> gs
                else:
                    fl_x = need
                    fl_x |= fl_x >> 1
                    fl_x |= fl_x >> 2
                    fl_x |= fl_x >> 4
                    fl_x |= fl_x >> 8
                    fl_x |= fl_x >> 16
                    fl_x ^= fl_x >> 1
                    co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                    li = ((co_t - gs - 3) << 4) | ((need >> (co_t - 4)) & 15)
                #@end
            #@use check_link(b, (a[_W_HEADS] + li) * 4, _BAD_HEAD)
            if b:
                if b < a[_W_FIRST] or b >= a[_W_END] or (b + 4) & gm:
                    owner._corrupt(a[_W_BASE] + ((a[_W_HEADS] + li) * 4), _BAD_HEAD)
            #@end
            #@use free_size(size, b)
            fs_h = a[b >> 2]
            size = fs_h & _SIZE_MASK
            if (fs_h & a[_W_FREEMASK]) != 1 or size < 16:  # FREE, kind 0, granule-aligned
                owner._corrupt(a[_W_BASE] + b, _BAD_FREE)
            if b + size > a[_W_END] or a[((b + size) >> 2) - 1] != size:
                owner._corrupt(a[_W_BASE] + b, _BAD_FREE)
            #@end
            if size < need:
                owner._corrupt(a[_W_BASE] + b, _BAD_FREE)
            if size - need >= MIN_BLOCK:  # the list the rest will head, checked before writing
                #@use poison_check(b + need, b + 12)
                if sk:
                    pc_w = 0x6B6B
                    pc_w |= pc_w << 16  # 0x6B6B6B6B, built at run time: as a constant it would be a big int
                    pc_i = (b + need)
                    while pc_i < (b + need) + 12:
                        if pc_i >= (b + 12) and a[pc_i >> 2] != pc_w:
                            owner._corrupt(a[_W_BASE] + (b + need), _BAD_POISON)
                        pc_i += 4
                #@end
                #@use head_check(size - need)
                if (size - need) < (16 << gs):
                    hc_li = (size - need) >> gs
                else:
                    fl_x = (size - need)
                    fl_x |= fl_x >> 1
                    fl_x |= fl_x >> 2
                    fl_x |= fl_x >> 4
                    fl_x |= fl_x >> 8
                    fl_x |= fl_x >> 16
                    fl_x ^= fl_x >> 1
                    co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                    hc_li = ((co_t - gs - 3) << 4) | (((size - need) >> (co_t - 4)) & 15)
                hc_head = a[a[_W_HEADS] + hc_li]
                if hc_head:
                    if hc_head < a[_W_FIRST] or hc_head >= a[_W_END] or (hc_head + 4) & gm:
                        owner._corrupt(a[_W_BASE] + ((a[_W_HEADS] + hc_li) * 4), _BAD_HEAD)
                #@end
            #@use unlink_from(b, li)
            # unlink when b's list is known (kmalloc took b from list li).
            ul_nxt = a[(b >> 2) + 1] ^ sk
            ul_prv = a[(b >> 2) + 2] ^ sk
            if ul_nxt:
                if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & gm:
                    owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
            if ul_prv:
                if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & gm:
                    owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
            if ul_nxt and (a[(ul_nxt >> 2) + 2] ^ sk) != b:
                owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
            if ul_prv and (a[(ul_prv >> 2) + 1] ^ sk) != b:
                owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
            ul_head = a[_W_HEADS] + li
            if ul_prv == 0 and a[ul_head] != b:
                owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
            # The writes of an unlink, once unlink_check (or unlink_from's check) has passed.
            if ul_nxt:
                a[(ul_nxt >> 2) + 2] = ul_prv ^ sk
            if ul_prv:
                a[(ul_prv >> 2) + 1] = ul_nxt ^ sk
            else:
                a[ul_head] = ul_nxt
                if ul_nxt == 0:
                    ul_fl = li >> 4
                    ul_map = a[_W_SLMAP + ul_fl] & ~(1 << (li & 15))
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
                #@use link_in(r, hc_li)
                ln_head = a[_W_HEADS] + hc_li
                ln_nxt = a[ln_head]
                if ln_nxt:
                    if ln_nxt < a[_W_FIRST] or ln_nxt >= a[_W_END] or (ln_nxt + 4) & gm:
                        owner._corrupt(a[_W_BASE] + (ln_head * 4), _BAD_HEAD)
                a[(r >> 2) + 1] = ln_nxt ^ sk
                a[(r >> 2) + 2] = sk  # 0, the list's start
                if ln_nxt:
                    a[(ln_nxt >> 2) + 2] = r ^ sk
                a[ln_head] = r
                ln_fl = hc_li >> 4
                a[_W_SLMAP + ln_fl] = a[_W_SLMAP + ln_fl] | (1 << (hc_li & 15))
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
                owner._debug_alloc(n, uint(q))
            if q >> 30:  # not a small int on a 32-bit port (a base chosen near 2**32)
                return owner._big(uint(q))
            ptr32(bx + a[_W_BOXTOP])[0] = 0
            ptr32(bx)[0] = (q << 1) | 1  # box q
            return box

        @micropython.viper
        def kfree(ptr):
            nonlocal box
            ad = int(addr)
            if ad == 0:  # no arena: the default heap before its first use, or a hardened one
                return owner.kfree(ptr)
            a = ptr32(ad)
            box = ptr  # as in kmalloc
            bx = a[_W_BOX] + (a[_W_BOXHI] << 16 << 16)
            w = ptr32(bx)[0]
            if (w & 1) == 0 or w < 0 or ptr32(bx + a[_W_BOXTOP])[0]:
                if w == a[_W_NONE]:
                    return  # NULL
                owner._kfree_slow(ptr)  # raises unless ptr is an int inside the arena
                q = int(ptr)
            else:
                q = w >> 1
            if q == 0:
                return
            if a[_W_FLAGS] & FLAG_DEBUG:
                owner._debug_free(ptr)
            gs = a[_W_GSHIFT]
            gm = (1 << gs) - 1
            sk = a[_W_SECRET]
            p = q - a[_W_BASE]
            if p < a[_W_FIRST] + HEADER or p >= a[_W_END] or p & gm:
                owner._bad_free(ptr, -1)
            bit = p >> gs
            w = a[_W_LIVEMAP] + (bit >> 5)
            if (a[w] >> (bit & 31)) & 1 == 0:
                owner._bad_free(ptr, -1)
            b = p - HEADER
            #@use live_size(size, b)
            ls_h = a[b >> 2]
            size = ls_h & _SIZE_MASK
            if ls_h & a[_W_LIVEMASK] or size < 16:  # not FREE, no bit 2, 30, 31, granule-aligned
                owner._corrupt(a[_W_BASE] + b, _BAD_HEADER)
            if b + size > a[_W_END]:
                owner._corrupt(a[_W_BASE] + b, _BAD_HEADER)
            #@end
            if (a[b >> 2] >> _KIND_SHIFT) & 3:
                owner._bad_free(ptr, -2)
            freed = size - HEADER  # its usable bytes, before the merges change size
            # Both neighbours are checked before anything changes.
            nb = b + size
            nh = a[nb >> 2]
            if nh & _PREV_FREE:
                owner._corrupt(a[_W_BASE] + nb, _BAD_NEXT)
            nsize = 0
            if nh & _FREE:
                #@use free_size(nsize, nb)
                fs_h = a[nb >> 2]
                nsize = fs_h & _SIZE_MASK
                if (fs_h & a[_W_FREEMASK]) != 1 or nsize < 16:  # FREE, kind 0, granule-aligned
                    owner._corrupt(a[_W_BASE] + nb, _BAD_FREE)
                if nb + nsize > a[_W_END] or a[((nb + nsize) >> 2) - 1] != nsize:
                    owner._corrupt(a[_W_BASE] + nb, _BAD_FREE)
                #@end
            psize = 0
            if a[b >> 2] & _PREV_FREE:
                psize = a[(b >> 2) - 1]
                if psize < MIN_BLOCK or psize & gm or b - psize < a[_W_FIRST]:
                    owner._corrupt(a[_W_BASE] + b, _BAD_TAG)
                #@use free_size(pchk, b - psize)
                fs_h = a[(b - psize) >> 2]
                pchk = fs_h & _SIZE_MASK
                if (fs_h & a[_W_FREEMASK]) != 1 or pchk < 16:  # FREE, kind 0, granule-aligned
                    owner._corrupt(a[_W_BASE] + (b - psize), _BAD_FREE)
                if (b - psize) + pchk > a[_W_END] or a[(((b - psize) + pchk) >> 2) - 1] != pchk:
                    owner._corrupt(a[_W_BASE] + (b - psize), _BAD_FREE)
                #@end
                if pchk != psize:
                    owner._corrupt(a[_W_BASE] + b, _BAD_TAG)
            # Every link this free follows is checked before the first write: unlinking the next
            # block checks its own links first, and runs first; the previous block's links and
            # the list the merged block joins are checked here (the second unlink checks
            # again: the first may have changed what it reads).
            if psize:
                #@use unlink_check(b - psize, psize, ck_nxt, ck_prv, ck_li, ck_head)
                # The class (and so the list head) matters only when (b - psize) heads its list.
                ck_nxt = a[((b - psize) >> 2) + 1] ^ sk
                ck_prv = a[((b - psize) >> 2) + 2] ^ sk
                if ck_nxt:
                    if ck_nxt < a[_W_FIRST] or ck_nxt >= a[_W_END] or (ck_nxt + 4) & gm:
                        owner._corrupt(a[_W_BASE] + (b - psize), _BAD_LINK)
                if ck_prv:
                    if ck_prv < a[_W_FIRST] or ck_prv >= a[_W_END] or (ck_prv + 4) & gm:
                        owner._corrupt(a[_W_BASE] + (b - psize), _BAD_LINK)
                if ck_nxt and (a[(ck_nxt >> 2) + 2] ^ sk) != (b - psize):
                    owner._corrupt(a[_W_BASE] + (b - psize), _BAD_LINK)
                if ck_prv and (a[(ck_prv >> 2) + 1] ^ sk) != (b - psize):
                    owner._corrupt(a[_W_BASE] + (b - psize), _BAD_LINK)
                if ck_prv == 0:
                    if psize < (16 << gs):
                        ck_li = psize >> gs
                    else:
                        fl_x = psize
                        fl_x |= fl_x >> 1
                        fl_x |= fl_x >> 2
                        fl_x |= fl_x >> 4
                        fl_x |= fl_x >> 8
                        fl_x |= fl_x >> 16
                        fl_x ^= fl_x >> 1
                        co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                        ck_li = ((co_t - gs - 3) << 4) | ((psize >> (co_t - 4)) & 15)
                    ck_head = a[_W_HEADS] + ck_li
                    if a[ck_head] != (b - psize):
                        owner._corrupt(a[_W_BASE] + (b - psize), _BAD_LINK)
                #@end
            #@use head_check(size + nsize + psize)
            if (size + nsize + psize) < (16 << gs):
                hc_li = (size + nsize + psize) >> gs
            else:
                fl_x = (size + nsize + psize)
                fl_x |= fl_x >> 1
                fl_x |= fl_x >> 2
                fl_x |= fl_x >> 4
                fl_x |= fl_x >> 8
                fl_x |= fl_x >> 16
                fl_x ^= fl_x >> 1
                co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                hc_li = ((co_t - gs - 3) << 4) | (((size + nsize + psize) >> (co_t - 4)) & 15)
            hc_head = a[a[_W_HEADS] + hc_li]
            if hc_head:
                if hc_head < a[_W_FIRST] or hc_head >= a[_W_END] or (hc_head + 4) & gm:
                    owner._corrupt(a[_W_BASE] + ((a[_W_HEADS] + hc_li) * 4), _BAD_HEAD)
            #@end
            if nsize:
                #@use unlink(nb, nsize)
                # The class (and so the list head) matters only when nb heads its list.
                ul_nxt = a[(nb >> 2) + 1] ^ sk
                ul_prv = a[(nb >> 2) + 2] ^ sk
                if ul_nxt:
                    if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & gm:
                        owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_prv:
                    if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & gm:
                        owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_nxt and (a[(ul_nxt >> 2) + 2] ^ sk) != nb:
                    owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_prv and (a[(ul_prv >> 2) + 1] ^ sk) != nb:
                    owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_prv == 0:
                    if nsize < (16 << gs):
                        ul_li = nsize >> gs
                    else:
                        fl_x = nsize
                        fl_x |= fl_x >> 1
                        fl_x |= fl_x >> 2
                        fl_x |= fl_x >> 4
                        fl_x |= fl_x >> 8
                        fl_x |= fl_x >> 16
                        fl_x ^= fl_x >> 1
                        co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                        ul_li = ((co_t - gs - 3) << 4) | ((nsize >> (co_t - 4)) & 15)
                    ul_head = a[_W_HEADS] + ul_li
                    if a[ul_head] != nb:
                        owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                # The writes of an unlink, once unlink_check (or unlink_from's check) has passed.
                if ul_nxt:
                    a[(ul_nxt >> 2) + 2] = ul_prv ^ sk
                if ul_prv:
                    a[(ul_prv >> 2) + 1] = ul_nxt ^ sk
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
                # The class (and so the list head) matters only when b heads its list.
                ul_nxt = a[(b >> 2) + 1] ^ sk
                ul_prv = a[(b >> 2) + 2] ^ sk
                if ul_nxt:
                    if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & gm:
                        owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
                if ul_prv:
                    if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & gm:
                        owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
                if ul_nxt and (a[(ul_nxt >> 2) + 2] ^ sk) != b:
                    owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
                if ul_prv and (a[(ul_prv >> 2) + 1] ^ sk) != b:
                    owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
                if ul_prv == 0:
                    if psize < (16 << gs):
                        ul_li = psize >> gs
                    else:
                        fl_x = psize
                        fl_x |= fl_x >> 1
                        fl_x |= fl_x >> 2
                        fl_x |= fl_x >> 4
                        fl_x |= fl_x >> 8
                        fl_x |= fl_x >> 16
                        fl_x ^= fl_x >> 1
                        co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                        ul_li = ((co_t - gs - 3) << 4) | ((psize >> (co_t - 4)) & 15)
                    ul_head = a[_W_HEADS] + ul_li
                    if a[ul_head] != b:
                        owner._corrupt(a[_W_BASE] + b, _BAD_LINK)
                # The writes of an unlink, once unlink_check (or unlink_from's check) has passed.
                if ul_nxt:
                    a[(ul_nxt >> 2) + 2] = ul_prv ^ sk
                if ul_prv:
                    a[(ul_prv >> 2) + 1] = ul_nxt ^ sk
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
            a[w] = a[w] & ~(1 << (bit & 31))
            a[_W_USED] = a[_W_USED] - freed
            a[_W_LIVE] = a[_W_LIVE] - 1
            a[_W_FREES] = a[_W_FREES] + 1
            a[b >> 2] = size | _FREE
            a[((b + size) >> 2) - 1] = size
            nb = b + size
            a[nb >> 2] = a[nb >> 2] | _PREV_FREE
            #@use link_in(b, hc_li)
            ln_head = a[_W_HEADS] + hc_li
            ln_nxt = a[ln_head]
            if ln_nxt:
                if ln_nxt < a[_W_FIRST] or ln_nxt >= a[_W_END] or (ln_nxt + 4) & gm:
                    owner._corrupt(a[_W_BASE] + (ln_head * 4), _BAD_HEAD)
            a[(b >> 2) + 1] = ln_nxt ^ sk
            a[(b >> 2) + 2] = sk  # 0, the list's start
            if ln_nxt:
                a[(ln_nxt >> 2) + 2] = b ^ sk
            a[ln_head] = b
            ln_fl = hc_li >> 4
            a[_W_SLMAP + ln_fl] = a[_W_SLMAP + ln_fl] | (1 << (hc_li & 15))
            a[_W_FLMAP] = a[_W_FLMAP] | (1 << ln_fl)
            a[_W_NFREE] = a[_W_NFREE] + 1
            #@end

        @micropython.viper
        def ksize(ptr) -> int:
            nonlocal box
            ad = int(addr)
            if ad == 0:  # no arena: the default heap before its first use, or a hardened one
                return int(owner.ksize(ptr))
            a = ptr32(ad)
            box = ptr  # as in kmalloc
            bx = a[_W_BOX] + (a[_W_BOXHI] << 16 << 16)
            w = ptr32(bx)[0]
            if (w & 1) == 0 or w < 0 or ptr32(bx + a[_W_BOXTOP])[0]:
                return int(owner._ksize_slow(ptr))  # NULL, or not a small int >= 0
            q = w >> 1
            if q == 0:
                return 0
            gs = a[_W_GSHIFT]
            gm = (1 << gs) - 1
            p = q - a[_W_BASE]
            if p < a[_W_FIRST] + HEADER or p >= a[_W_END] or p & gm:
                return int(owner._ksize_slow(ptr))
            bit = p >> gs
            if (a[a[_W_LIVEMAP] + (bit >> 5)] >> (bit & 31)) & 1 == 0:
                return int(owner._ksize_slow(ptr))
            #@use live_size(size, p - HEADER)
            ls_h = a[(p - HEADER) >> 2]
            size = ls_h & _SIZE_MASK
            if ls_h & a[_W_LIVEMASK] or size < 16:  # not FREE, no bit 2, 30, 31, granule-aligned
                owner._corrupt(a[_W_BASE] + (p - HEADER), _BAD_HEADER)
            if (p - HEADER) + size > a[_W_END]:
                owner._corrupt(a[_W_BASE] + (p - HEADER), _BAD_HEADER)
            #@end
            if ls_h >> _KIND_SHIFT:  # a stack, an mm_struct...: the slow path says so
                return int(owner._ksize_slow(ptr))
            return size - HEADER

        @micropython.viper
        def kzalloc(nbytes) -> object:
            nonlocal box
            ad = int(addr)
            if ad == 0:  # no arena: the default heap before its first use, or a hardened one
                return owner.kzalloc(nbytes)
            a = ptr32(ad)
            box = nbytes  # as in kmalloc, which would name itself in the slow path's errors
            bx = a[_W_BOX] + (a[_W_BOXHI] << 16 << 16)
            n = ptr32(bx)[0]
            if (n & 1) == 0 or (n >> 29) or ptr32(bx + a[_W_BOXTOP])[0]:
                return owner._kmalloc_slow(nbytes, "kzalloc")  # not a small int 0 <= n < 2**28
            p = kmalloc(nbytes)  # one call: zeroing the block costs more than it
            box = p
            w = ptr32(bx)[0]
            if w == a[_W_NONE]:
                return p
            if (w & 1) == 0 or w < 0 or ptr32(bx + a[_W_BOXTOP])[0]:
                off = int(p) - a[_W_BASE]  # not a small int < 2**31 (a base near 2**32)
            else:
                off = (w >> 1) - a[_W_BASE]
            wd = off >> 2
            end = (off + (n >> 1) + 3) >> 2  # the block is granule-aligned, so whole
            while wd < end:                  # words stay in it
                a[wd] = 0
                wd += 1
            return p

        @micropython.viper
        def kcalloc(count, nbytes) -> object:
            nonlocal box
            ad = int(owner._addr)  # no addr cell: with kzalloc, owner and box, 5 in all
            if ad == 0:  # the default heap before its first use
                return owner.kcalloc(count, nbytes)
            a = ptr32(ad)
            bx = a[_W_BOX] + (a[_W_BOXHI] << 16 << 16)
            box = count  # both object words, as in kmalloc
            w = ptr32(bx)[0]
            big = ptr32(bx + a[_W_BOXTOP])[0]
            box = nbytes
            v = ptr32(bx)[0]
            big |= ptr32(bx + a[_W_BOXTOP])[0]
            if (w & 1) == 0 or (v & 1) == 0 or big or ((w | v) >> 16):
                return owner._kcalloc_slow(count, nbytes)  # not both small ints < 2**15
            return kzalloc((w >> 1) * (v >> 1))  # < 2**30: no overflow, no big int

        @micropython.viper
        def krealloc(ptr, nbytes) -> object:
            nonlocal box
            ad = int(addr)
            if ad == 0:  # no arena: the default heap before its first use, or a hardened one
                return owner.krealloc(ptr, nbytes)
            a = ptr32(ad)
            bx = a[_W_BOX] + (a[_W_BOXHI] << 16 << 16)
            box = nbytes  # both object words, as in kmalloc
            w = ptr32(bx)[0]
            big = ptr32(bx + a[_W_BOXTOP])[0]
            box = ptr
            v = ptr32(bx)[0]
            big |= ptr32(bx + a[_W_BOXTOP])[0]
            if (w & 1) == 0 or (w >> 29) or (v & 1) == 0 or v < 0 or big or w == 1 or v == 1:
                # NULL, a size of 0, a big int or an error: the slow path does it, or says
                # to go on (a live block, a size it may fit)
                done = owner._krealloc_slow(ptr, nbytes)
                if done is not owner:
                    return done
                q = int(ptr)
                n = int(nbytes)
            else:
                q = v >> 1
                n = w >> 1
            gs = a[_W_GSHIFT]
            gm = (1 << gs) - 1
            sk = a[_W_SECRET]
            p = q - a[_W_BASE]
            if p < a[_W_FIRST] + HEADER or p >= a[_W_END] or p & gm:
                return owner._krealloc_bad(ptr)  # ValueError
            bit = p >> gs
            if (a[a[_W_LIVEMAP] + (bit >> 5)] >> (bit & 31)) & 1 == 0:
                return owner._krealloc_bad(ptr)
            b = p - HEADER
            #@use live_size(size, b)
            ls_h = a[b >> 2]
            size = ls_h & _SIZE_MASK
            if ls_h & a[_W_LIVEMASK] or size < 16:  # not FREE, no bit 2, 30, 31, granule-aligned
                owner._corrupt(a[_W_BASE] + b, _BAD_HEADER)
            if b + size > a[_W_END]:
                owner._corrupt(a[_W_BASE] + b, _BAD_HEADER)
            #@end
            hdr = a[b >> 2]
            if (hdr >> _KIND_SHIFT) & 3:
                return owner._krealloc_bad(ptr)  # a stack, an mm_struct...: ValueError
            need = (n + HEADER + gm) & (-1 << gs)
            if need < MIN_BLOCK:
                need = MIN_BLOCK
            # In place: take in the next block when it is free, then split off what is left
            # over. Every check runs before the first write.
            nb = b + size
            nh = a[nb >> 2]
            if nh & _PREV_FREE:
                owner._corrupt(a[_W_BASE] + nb, _BAD_NEXT)
            nsize = 0
            if nh & _FREE:
                #@use free_size(nsize, nb)
                fs_h = a[nb >> 2]
                nsize = fs_h & _SIZE_MASK
                if (fs_h & a[_W_FREEMASK]) != 1 or nsize < 16:  # FREE, kind 0, granule-aligned
                    owner._corrupt(a[_W_BASE] + nb, _BAD_FREE)
                if nb + nsize > a[_W_END] or a[((nb + nsize) >> 2) - 1] != nsize:
                    owner._corrupt(a[_W_BASE] + nb, _BAD_FREE)
                #@end
            if need > size + nsize:
                return owner._krealloc_move(ptr, nbytes)  # nothing has changed
            rest = size + nsize - need
            if rest >= MIN_BLOCK:
                #@use poison_check(b + need, nb + 12)
                if sk:
                    pc_w = 0x6B6B
                    pc_w |= pc_w << 16  # 0x6B6B6B6B, built at run time: as a constant it would be a big int
                    pc_i = (b + need)
                    while pc_i < (b + need) + 12:
                        if pc_i >= (nb + 12) and a[pc_i >> 2] != pc_w:
                            owner._corrupt(a[_W_BASE] + (b + need), _BAD_POISON)
                        pc_i += 4
                #@end
                #@use head_check(rest)
                if rest < (16 << gs):
                    hc_li = rest >> gs
                else:
                    fl_x = rest
                    fl_x |= fl_x >> 1
                    fl_x |= fl_x >> 2
                    fl_x |= fl_x >> 4
                    fl_x |= fl_x >> 8
                    fl_x |= fl_x >> 16
                    fl_x ^= fl_x >> 1
                    co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                    hc_li = ((co_t - gs - 3) << 4) | ((rest >> (co_t - 4)) & 15)
                hc_head = a[a[_W_HEADS] + hc_li]
                if hc_head:
                    if hc_head < a[_W_FIRST] or hc_head >= a[_W_END] or (hc_head + 4) & gm:
                        owner._corrupt(a[_W_BASE] + ((a[_W_HEADS] + hc_li) * 4), _BAD_HEAD)
                #@end
            elif nsize == 0:
                return ptr  # it fits, and too little would be left to split off
            if nsize:
                #@use unlink(nb, nsize)
                # The class (and so the list head) matters only when nb heads its list.
                ul_nxt = a[(nb >> 2) + 1] ^ sk
                ul_prv = a[(nb >> 2) + 2] ^ sk
                if ul_nxt:
                    if ul_nxt < a[_W_FIRST] or ul_nxt >= a[_W_END] or (ul_nxt + 4) & gm:
                        owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_prv:
                    if ul_prv < a[_W_FIRST] or ul_prv >= a[_W_END] or (ul_prv + 4) & gm:
                        owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_nxt and (a[(ul_nxt >> 2) + 2] ^ sk) != nb:
                    owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_prv and (a[(ul_prv >> 2) + 1] ^ sk) != nb:
                    owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                if ul_prv == 0:
                    if nsize < (16 << gs):
                        ul_li = nsize >> gs
                    else:
                        fl_x = nsize
                        fl_x |= fl_x >> 1
                        fl_x |= fl_x >> 2
                        fl_x |= fl_x >> 4
                        fl_x |= fl_x >> 8
                        fl_x |= fl_x >> 16
                        fl_x ^= fl_x >> 1
                        co_t = ptr8(a)[_W_CTZ * 4 + ((fl_x * 0x077CB531) >> 27 & 31)]
                        ul_li = ((co_t - gs - 3) << 4) | ((nsize >> (co_t - 4)) & 15)
                    ul_head = a[_W_HEADS] + ul_li
                    if a[ul_head] != nb:
                        owner._corrupt(a[_W_BASE] + nb, _BAD_LINK)
                # The writes of an unlink, once unlink_check (or unlink_from's check) has passed.
                if ul_nxt:
                    a[(ul_nxt >> 2) + 2] = ul_prv ^ sk
                if ul_prv:
                    a[(ul_prv >> 2) + 1] = ul_nxt ^ sk
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
            if rest >= MIN_BLOCK:
                r = b + need
                a[r >> 2] = rest | _FREE
                a[((r + rest) >> 2) - 1] = rest
                a[(r + rest) >> 2] = a[(r + rest) >> 2] | _PREV_FREE
                #@use link_in(r, hc_li)
                ln_head = a[_W_HEADS] + hc_li
                ln_nxt = a[ln_head]
                if ln_nxt:
                    if ln_nxt < a[_W_FIRST] or ln_nxt >= a[_W_END] or (ln_nxt + 4) & gm:
                        owner._corrupt(a[_W_BASE] + (ln_head * 4), _BAD_HEAD)
                a[(r >> 2) + 1] = ln_nxt ^ sk
                a[(r >> 2) + 2] = sk  # 0, the list's start
                if ln_nxt:
                    a[(ln_nxt >> 2) + 2] = r ^ sk
                a[ln_head] = r
                ln_fl = hc_li >> 4
                a[_W_SLMAP + ln_fl] = a[_W_SLMAP + ln_fl] | (1 << (hc_li & 15))
                a[_W_FLMAP] = a[_W_FLMAP] | (1 << ln_fl)
                a[_W_NFREE] = a[_W_NFREE] + 1
                #@end
                grown = need
            else:
                a[(b + size + nsize) >> 2] = a[(b + size + nsize) >> 2] & ~_PREV_FREE
                grown = size + nsize
            a[b >> 2] = grown | (hdr & _PREV_FREE)
            used = a[_W_USED] + grown - size
            a[_W_USED] = used
            if used > a[_W_PEAK]:
                a[_W_PEAK] = used
            return ptr

        @micropython.viper
        def memset(ptr, value, nbytes) -> object:
            global _ret  # not the box cell: over 5 cells and arguments, a closure call allocates
            ad = int(addr)
            if ad == 0:  # no arena: the default heap before its first use, or a hardened one
                return owner.memset(ptr, value, nbytes)
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
            p = q - a[_W_BASE]
            start = int(containing_at(addr, p))  # addr: the int object, no boxing
            if start < 0 or p + n > start + (a[(start >> 2) - 1] & _SIZE_MASK) - HEADER:
                return owner._memset_checked(ptr, value, nbytes)
            b = ptr8(ad)
            end = p + n
            if (p & 3) == 0:  # a payload, or a word inside one: whole words first
                w = ptr32(ad)
                v4 = v | (v << 8)
                v4 |= v4 << 16
                while p + 4 <= end:
                    w[p >> 2] = v4
                    p += 4
            while p < end:
                b[p] = v
                p += 1
            return ptr

        @micropython.viper
        def memcpy(dst, src, nbytes) -> object:
            global _ret  # not the box cell: over 5 cells and arguments, a closure call allocates
            ad = int(addr)
            if ad == 0:  # no arena: the default heap before its first use, or a hardened one
                return owner.memcpy(dst, src, nbytes)
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
            s = qs - a[_W_BASE]
            start = int(containing_at(addr, s))
            if start < 0 or s + n > start + (a[(start >> 2) - 1] & _SIZE_MASK) - HEADER:
                return owner._memcpy_checked(dst, src, nbytes)
            d = qd - a[_W_BASE]
            start = int(containing_at(addr, d))
            if start < 0 or d + n > start + (a[(start >> 2) - 1] & _SIZE_MASK) - HEADER:
                return owner._memcpy_checked(dst, src, nbytes)
            move(addr, d, s, n)  # one call: the copy outweighs it
            return dst

        def retarget(new_owner, new_addr):
            nonlocal owner, addr
            owner, addr = new_owner, new_addr

        owner = heap
        return kmalloc, kfree, ksize, kzalloc, kcalloc, krealloc, memset, memcpy, retarget

    return bind, put_in_box


bind, _put_in_box = _binder()


def _box_cell_word():
    # The address of the box cell's object word, found and checked: bind is a closure over
    # box alone (py/objclosure.c: type, function, n_closed, cells) and a cell holds its
    # object after its type (py/objcell.c).
    ws = struct.calcsize("P")
    _, _, n_closed, cell = struct.unpack("4P", uctypes.bytearray_at(id(bind), 4 * ws))
    at = cell + ws
    probe = bytearray(1)
    seen = []
    for value in (probe, 12345):
        _put_in_box(value)
        seen.append(struct.unpack("P", uctypes.bytearray_at(at, ws))[0])
    _put_in_box(None)
    none = struct.unpack("P", uctypes.bytearray_at(at, ws))[0]
    if n_closed != 1 or seen != [id(probe), 2 * 12345 + 1]:
        raise ImportError("kmem: this MicroPython lays out closures or cells in a way kmem "
                          "does not know (py/objclosure.c, py/objcell.c)")
    return at, ws, none


_BOX_AT, _WORD_SIZE, _NONE_WORD = _box_cell_word()


def box_words(arena_addr):
    """The control words _W_BOX, _W_BOXHI, _W_BOXTOP and _W_NONE for the arena at raw
    address arena_addr (format() writes them)."""
    if _WORD_SIZE == 8:
        top = 4
    else:  # a word of the arena that stays 0; 32-bit arithmetic wraps, as viper's does
        top = (arena_addr + _W_ZERO * 4 - _BOX_AT) & 0xFFFFFFFF
    return _BOX_AT & 0xFFFFFFFF, _BOX_AT >> 32, top, _NONE_WORD
