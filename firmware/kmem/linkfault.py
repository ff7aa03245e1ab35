# kmem.linkfault - which free-list link is bad, for the CorruptionError that reports it.
# Loaded by tlsf.fault only when a hot path or check() has found a bad link: nothing
# else needs it, and a small board's heap is better off without it.
from micropython import const
from .tlsf import CorruptionError, load32, _class_of

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


def name_link(arena, base, at, head, loop):
    """Raise CorruptionError for the free-list link found bad at offset at: a link of the
    block there, or (head) the list head there.

    A hot path or check() stops at the block (or head) whose link is no block's address,
    or which links to a block that does not link back, or which heads its list by its own
    account but not by the head's. This reads the links again to name the one that is bad,
    at its holder (where the damaged bytes are; the link itself may point anywhere), and
    where it points, so that every path reports a fault alike. When the block's links all
    agree: with loop (a walk came back round through its next link) that link is named,
    else this returns."""
    first, end, gshift, heads, flcount, secret = [load32(arena, w * 4) for w in (
        _W_FIRST, _W_END, _W_GSHIFT, _W_HEADS, _W_FLCOUNT, _W_SECRET)]

    def bad(v):  # the test of check_link (blocks/tlsf.blocks)
        return v and (v < first or v >= end or (v + 4) & ((1 << gshift) - 1))

    def report(holder, v):  # holder: a block, or a list head's word (below the blocks)
        to = "0x%08x" % ((base + v) & 0xFFFFFFFF) if v else "NULL"
        if holder >= first:
            raise CorruptionError("block at 0x%08x: free list link is broken (points to %s)"
                                  % ((base + holder) & 0xFFFFFFFF, to))
        li = holder // 4 - heads
        raise CorruptionError("free list %d/%d is broken: its head at 0x%08x points to %s"
                              % (li >> 4, li & 15, (base + holder) & 0xFFFFFFFF, to))

    def head_of(b):  # the offset of the head of the list of the free block b, or -1
        li = _class_of(gshift, load32(arena, b) & _SIZE_MASK)
        return (heads + li) * 4 if li < flcount * 16 else -1

    def vouched(v, back, word):
        # v's link (its word at +word) points to back, not to the block that links to v:
        # does back link to v in turn (or, NULL, does v head its list)? Then that block's
        # link is the bad one; else v's is.
        if not back:
            return word == 8 and head_of(v) >= 0 and load32(arena, head_of(v)) == v
        return (not bad(back) and load32(arena, back) & _FREE
                and load32(arena, back + 12 - word) ^ secret == v)

    if head:
        report(at, load32(arena, at))
    nxt = load32(arena, at + 4) ^ secret
    prv = load32(arena, at + 8) ^ secret
    for v in (nxt, prv):
        if bad(v):
            report(at, v)
    for v, word in ((nxt, 8), (prv, 4)):  # the link back: v's prev, or v's next
        if v:
            back = load32(arena, v + word) ^ secret
            if back != at:
                if load32(arena, v) & _FREE and not vouched(v, back, word):
                    report(v, back)
                report(at, v)  # a link to a block that is not free, or that links elsewhere
    word = -1 if prv else head_of(at)
    if word >= 0 and load32(arena, word) != at:  # at heads its list by its links, not its head's
        v = load32(arena, word)
        if not v or bad(v) or not (load32(arena, v) & _FREE
                                   and not load32(arena, v + 8) ^ secret):
            report(word, v)  # the head is NULL, or no free block that heads a list either
        report(at, 0)  # at's NULL prev link
    if loop:
        report(at, nxt)
