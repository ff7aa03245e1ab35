# kmem.linkfault - which free-list link is bad, for the CorruptionError that reports it.
# Loaded by tlsf.fault only when a hot path or check() has found a bad link: nothing
# else needs it, and a small board's heap is better off without it.
from micropython import const
from .tlsf import CorruptionError, load32, _class_of

_FREE = const(1)
_SIZE_MASK = const(0x0FFFFFF8)


def name_link(arena, base, at, head, loop, words):
    """Raise CorruptionError for the free-list link found bad at offset at: a link of the
    block there, or (head) the list head there. words: the indices of the control words
    FIRST, END, GSHIFT, HEADS, FLCOUNT and SECRET (tlsf.py's layout).

    A hot path or check() stops at the block (or head) whose link is no block's address,
    or which links to a block that does not link back, or which heads its list by its own
    account but not by the head's. This reads the links again to name the one that is bad,
    at its holder (where the damaged bytes are; the link itself may point anywhere), and
    where it points, so that every path reports a fault alike. When the block's links all
    agree: with loop (a walk came back round through its next link) that link is named,
    else this returns."""
    first, end, gshift, heads, flcount, secret = [load32(arena, w * 4) for w in words]

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
