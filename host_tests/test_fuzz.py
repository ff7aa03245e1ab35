"""Differential fuzzing: hypothesis draws sequences that mix the allocator (kmalloc,
kzalloc, kfree, krealloc, memset, kernel stacks) with address spaces (mm_create,
mm_destroy, mmap_region, munmap, mprotect, brk, find_vma, access_ok, vma_list); each
sequence runs on the target in one round trip (a batch), and every answer is checked on
the host against two reference models.

The allocator model knows every live block (its size and the byte pattern its contents
must hold, made from the id of the op that allocated it) and what each call must do: a
request fails (None) exactly when no free block is big enough (the target reports its
largest free block before each request: TLSF's good fit and its fallback through the
request's own class find a block whenever one fits); live blocks never overlap; contents
survive until freed (krealloc keeps the old bytes); kzalloc zeroes.

The address-space model is vm_model.py (Linux vm-area semantics as kmem documents them):
every vm call's return value, or its exception class and errno, must be the model's, and
after each batch every live mm's vma_list() must be the model's. Addresses come from a
16-page grid (so overlaps, splits and merges are frequent) plus the edges of the 32-bit
space, unaligned starts, zero and odd lengths; but 3/4 of the munmap and mprotect ranges
are aimed at the areas the model says the mm has at that point (whole areas, parts of
one, across the boundary to the next, across holes: decode_all follows the sequence with
the model while decoding), so that most of them split, change and merge areas (about 60%
of the mprotect calls succeed, against 20% for ranges drawn blind). Whether a call that
needs more vm_area_structs finds room is decided from the largest free block: certainly
not below 16 bytes, certainly yes with room for all of them, the target's answer in
between (then only the all-or-nothing rule is checked).

After each batch check() is sound, and freeing everything gives back the heap's initial
largest free block with no live block left.

Ops are drawn as 32-bit ints (one hypothesis choice each, so cheap to draw) and decoded
here into readable tuples (the same ints always give the same tuples); a failing sequence
is shrunk by dropping chunks of ops (shrink) and shown as its tuples, ready for
REGRESSIONS at the end. Profiles per target are in PROFILES; env: KMEM_FUZZ_LONG=1 the
long run (what `make fuzz` runs, with progress and fresh random sequences each time),
KMEM_FUZZ_EXAMPLES=N the number of sequences."""
import base64
import bisect
import collections
import copy
import errno
import os
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from helpers import TargetError
from vm_model import (MAP_LIMIT, PAGE_SIZE, VM_EXEC as X, VM_GROWSDOWN, VM_GROWSUP,
                      VM_READ as R, VM_SHARED, VM_WRITE as W, AddressSpace)

# (sequences, shortest, longest) per target kind, for make test and for KMEM_FUZZ_LONG=1.
PROFILES = {
    "unix": ((160, 650, 800), (1500, 800, 1000)),
    "vboard": ((40, 400, 600), (400, 600, 800)),
    "qemu": ((25, 300, 500), (250, 400, 500)),
    "port": ((10, 200, 300), (100, 300, 400)),
}
HARDENED_SHARE = 4  # a hardened heap gets a quarter of the sequences (its calls are slower)
TAIL = 5  # the bytes a hardened heap adds to each request (firmware/kmem/harden.py)
# A MicroPython heap below SMALL_HEAP (an ESP32's 110 KiB: ~30 KB free beside kmem and the
# prelude's 32 KiB arena; a batch of 800 ops then ran out of it) gets its own arena of
# SMALL_ARENA bytes (the prelude's is let go) and sequences of SMALL_LENGTHS ops, at most as
# many as its kind's profile says or SMALL_EXAMPLES (for make test, for KMEM_FUZZ_LONG=1).
SMALL_HEAP = 150000
SMALL_ARENA = 16384
SMALL_LENGTHS = (250, 350)
SMALL_EXAMPLES = (100, 1000)

# ---- ops: drawn as ints, decoded into tuples ------------------------------------------

ALLOC_KINDS = ("malloc", "zalloc", "free", "realloc", "memset", "stack", "free_stack")
VM_KINDS = ("mm_create", "mm_destroy", "mmap", "munmap", "mprotect", "brk", "find_vma",
            "access_ok", "vmas")
KINDS = ALLOC_KINDS + VM_KINDS
# The low 5 bits of a drawn int pick the kind: half allocator, half address spaces. The two
# "vmas" slots are an mm_destroy a quarter of the time, so that mms live long enough to
# gather areas; vm calls take one of the 4 oldest live mms (an aimed munmap or mprotect,
# see decode, the first from there on that has an area).
SLOTS = (["malloc"] * 4 + ["zalloc"] * 2 + ["free"] * 4 + ["realloc"] * 3 + ["memset", "stack",
         "free_stack"] + ["mm_create", "brk", "find_vma", "access_ok"] + ["vmas"] * 2
         + ["mmap"] * 5 + ["munmap"] * 2 + ["mprotect"] * 3)
assert len(SLOTS) == 32

GRID = 0x10000  # the 16-page grid starts here
ADDR_EDGES = (0, PAGE_SIZE, GRID - PAGE_SIZE, GRID + 16 * PAGE_SIZE, GRID + 0x100, 0x100,
              0x7FFF00, 0xFF800000, 0xFFFFF800, 0xFFFFFF00, 0xFFFFF100, MAP_LIMIT - 0x100,
              GRID + 24 * PAGE_SIZE, 0x400000, 0x7FF000, 0xFFFF0000)
LENGTH_EDGES = (32 * PAGE_SIZE, 0x7FFF00, 0x100000, 0x100, 0xF00, 0x1100,
                PAGE_SIZE - 0x100, 17 * PAGE_SIZE)
RW, RX, RWX = R | W, R | X, R | W | X
MAP_FLAGS = (R, RW, RX, RWX, R | W | VM_GROWSUP, R | VM_SHARED, RW | VM_GROWSDOWN, 0,
             R, RW, RX, RW | VM_SHARED, W, X, 0x40, 0xFF)  # the last two: ValueError
PROT_FLAGS = (R, RW, RX, RWX, 0, R, RW, W, X, W | X, RW, R, RWX, RX, VM_SHARED, 0x40)
ACCESS_FLAGS = (0, R, W, X, RW, RX, RWX, VM_SHARED, VM_GROWSUP, RW | VM_GROWSUP,
                R | VM_GROWSDOWN, R | VM_SHARED, R, RW, 0x40, 0)


def address(a):
    """An address from 8 bits: mostly the grid's page starts, some unaligned, the top pages
    of the 32-bit space, and a few edges."""
    if a < 176:
        return GRID + a % 16 * PAGE_SIZE
    if a < 208:
        return GRID + a % 16 * PAGE_SIZE + 0x800
    if a < 240:
        return MAP_LIMIT - a % 8 * PAGE_SIZE
    return ADDR_EDGES[a - 240]


def length(n):
    """A length from 8 bits: mostly 1-4 pages, up to the whole grid, odd ones, 0, large."""
    if n < 128:
        return (1 + n % 4) * PAGE_SIZE
    if n < 176:
        return (1 + n % 16) * PAGE_SIZE
    if n < 208:
        return n % 4 * PAGE_SIZE + 0x100 * (1 + n % 15)
    if n < 224:
        return 0
    return LENGTH_EDGES[n % 8]


def alloc_size(y):
    # As many small (0-64) as medium (65-700) as large (701-3000) requests.
    lo, hi = ((0, 64), (65, 700), (701, 3000))[y % 3]
    return lo + y // 3 % (hi - lo + 1)


def codable(start, size):
    """Can the range travel to the target (see code(); a length must be below 0x800000)?"""
    return 0 <= size < 0x800000 and (0 <= start < 0x800000 or 0xFF800000 <= start < 1 << 32)


def aimed(areas, shape, a, n, q):
    """A (start, length) on or across `areas` (an mm's, as the model has them when the op
    comes), from a shape (0-7) and 8 + 8 + 4 bits, or None (no area, or a range that cannot
    travel). The shapes: one whole area; its first or its last pages; pages inside it; from
    inside it to the end of, or into, the area right after it (across a boundary: the first
    such pair from it on, else the first; with none, to its own end); from inside it into
    the next area (across a hole if there is one; past the last area, into the hole after
    it); one page before it to its end, or all the mm's areas. A quarter of the lengths end
    256 bytes short of a page (the target rounds them up)."""
    if not areas:
        return None
    i, p = a % len(areas), n >> 3
    if shape in (4, 5):  # across a boundary between two adjacent areas
        pairs = [k for k in range(len(areas) - 1) if areas[k][1] == areas[k + 1][0]]
        i = next((k for k in pairs if k >= i), pairs[0] if pairs else i)
    s, e, _ = areas[i]
    pages = (e - s) // PAGE_SIZE
    nxt = areas[i + 1] if i + 1 < len(areas) else (e + PAGE_SIZE * (1 + q % 4),) * 2
    if shape in (4, 5) and nxt[0] != e:  # no two adjacent areas: from inside it to its end
        nxt = (e, e)
    inside = s + p % pages * PAGE_SIZE
    into = nxt[0] + PAGE_SIZE * (1 + q % 2)
    start, end = [(s, e), (s, s + (1 + p % pages) * PAGE_SIZE),
                  (e - (1 + p % pages) * PAGE_SIZE, e),
                  (inside, min(e, inside + (1 + q) * PAGE_SIZE)), (inside, nxt[1]),
                  (inside, min(into, nxt[1])), (inside, into),
                  (s - PAGE_SIZE, e) if p & 1 else (areas[0][0], areas[-1][1])][shape]
    size = end - start - (0x100 if a >> 6 == 3 else 0)
    return (start, size) if codable(start, size) else None


def decode(x, spaces=()):
    """The op a drawn 32-bit int stands for, as a tuple (kind, args...). `spaces`: the
    model's live mms at that point of the sequence (see decode_all), at which most munmap
    and mprotect ranges are aimed."""
    kind, y = SLOTS[x & 31], x >> 5
    if kind in ("malloc", "zalloc"):
        return (kind, alloc_size(y))
    if kind in ("free", "memset", "free_stack"):
        return (kind, y & 0xFFFF)
    if kind == "realloc":
        return (kind, y & 0x3FF, alloc_size(y >> 10))
    if kind == "stack":
        return (kind, 1 + y % 1500)
    if kind == "mm_create":
        return (kind, address(y & 0xFF))  # its start_heap
    m, f, a, n = y & 3, y >> 2 & 15, y >> 6 & 0xFF, y >> 14 & 0xFF
    if kind == "vmas":
        return ("mm_destroy" if f < 4 else kind, m)
    if kind in ("brk", "find_vma"):
        return (kind, m, address(a))
    rng = (address(a), length(n))
    # A hash of the int (hypothesis favours some ints, e.g. small ones and all ones) aims 3/4
    # of the munmap and mprotect ranges, when an mm has an area, picks the range's shape and
    # spreads mprotect's flags.
    h = (x * 2654435761 & 0xFFFFFFFF) >> 25
    if kind in ("munmap", "mprotect") and h >> 3 >= 4:
        # at the first mm from the m-th on that has an area (the op then names that one)
        full = [j for j in range(len(spaces)) if spaces[j].areas]
        if full:
            j = next((j for j in full if j >= m % len(spaces)), full[0])
            r = aimed(spaces[j].areas, h & 7, a, n, y >> 22 & 15)
            if r and j < 256:  # the selector travels as one byte
                m, rng = j, r
    if kind == "munmap":
        return (kind, m) + rng
    if kind == "mprotect":
        f = (f + (h >> 3)) & 15
    flags = {"mmap": MAP_FLAGS, "mprotect": PROT_FLAGS, "access_ok": ACCESS_FLAGS}[kind][f]
    return (kind, m) + rng + (flags,)


def decode_all(drawn):
    """The ops drawn ints stand for, in order; the same ints give the same ops. It follows
    the sequence with one model AddressSpace per mm, as the runner picks them (an op takes
    the live mm its index modulo their number gives), assuming every mm_create and every
    vm_area_struct finds room (when the target runs short, an aimed range may miss: it is
    still a valid op, and the replay checks it against the model as any other)."""
    ops, spaces = [], []
    for x in drawn:
        op = decode(x, spaces)
        ops.append(op)
        kind, args = op[0], [int(v) for v in op[1:]]
        if kind == "mm_create":
            spaces.append(AddressSpace(start_heap=args[0]))
        elif kind in VM_KINDS and spaces:
            j = args[0] % len(spaces)
            if kind == "mm_destroy":
                del spaces[j]
            elif kind in ("mmap", "munmap", "mprotect", "brk"):
                try:
                    getattr(spaces[j], {"mmap": "mmap_region"}.get(kind, kind))(*args[1:])
                except (ValueError, OSError):
                    pass
    return ops


def code(value):
    # 16 bits for a multiple of 256: 0..0x7fff00 and 0xff800000..0xffffff00 (sign-extended).
    assert value % 256 == 0 and (value < 0x800000 or 0xFF800000 <= value < 1 << 32), value
    return value >> 8 & 0xFFFF


def encode(ops):
    """7 bytes an op: kind, selector (block/mm index), flags, two 16-bit arguments (sizes and
    indices as they are; addresses and lengths in units of 256 bytes, see code())."""
    out = bytearray()
    for op in ops:
        kind, args = op[0], op[1:]
        sel = flags = a = b = 0
        if kind in ("malloc", "zalloc", "stack", "free", "memset", "free_stack"):
            a = args[0]
        elif kind == "realloc":
            a, b = args
        elif kind == "mm_create":
            a = code(args[0])
        else:
            sel = args[0]
            if len(args) > 1:
                a = code(args[1])
            if len(args) > 2:
                b = code(args[2])
            if len(args) > 3:
                flags = args[3]
        out += bytes((KINDS.index(kind), sel, flags, a & 0xFF, a >> 8, b & 0xFF, b >> 8))
    return bytes(out)


# ---- the target side -------------------------------------------------------------------

# fuzz_batch(OPS, hardened) runs the ops on a default or a hardened heap and prints one
# line per op. Blocks are named by the index of
# the op that made them; an op on a block takes the i-th of the live blocks it may use
# (modulo their number; kmalloc blocks and stacks apart, oldest first), an op on an mm the
# i-th live mm, and says which it took, so that the host can follow. A board keeps it
# defined between the batches of a test (see run_batch).
RUNNER = """
import gc
import micropython
from kmem import tlsf
@micropython.viper
def _fuzz_same(a: ptr8, off: int, n: int, byte: int) -> bool:
    end = off + n
    while off < end:
        if a[off] != byte:
            return False
        off += 1
    return True
def _fuzz_addr(c):
    return (c << 8) + (0xFF000000 if c & 0x8000 else 0)
def fuzz_batch(OPS, hardened):
    try:  # a batch that failed may have left blocks behind: start afresh
        fresh = check() and not stats()['live_blocks'] and heap().hardened == hardened
        fresh = fresh and heap().size == ARENA_SIZE  # (the prelude's may be bigger)
    except Exception:
        fresh = False
    if not fresh:
        init(ARENA_SIZE, hardened=hardened)
        gc.collect()  # the old arena's bytearray is garbage now
    h = heap()
    A, base = h.arena, h.base
    def intact(p, n, byte):
        view(p, n)  # inside one live block (raises otherwise)
        return _fuzz_same(A, p - base, n, byte)
    def largest():
        return tlsf.largest_free(A)
    addr = _fuzz_addr
    first_largest = largest()
    blocks = {}  # name: (address, size asked, byte)
    pools = ([], [])  # live names: kmalloc blocks, kernel stacks
    mms = []
    for name in range(len(OPS) // 7):
        i = 7 * name
        k, s, f = OPS[i], OPS[i + 1], OPS[i + 2]
        a, b = OPS[i + 3] | OPS[i + 4] << 8, OPS[i + 5] | OPS[i + 6] << 8
        if k in (0, 1, 5):  # malloc, zalloc, stack
            room = largest()
            if k == 5:
                p = allocate_kernel_stack(a)
                usable = kernel_stack_top(p) - p if p is not None else 0
            else:
                p = (kmalloc if k == 0 else kzalloc)(a)
                usable = ksize(p) if p is not None else 0
            zero = k != 1 or p is None or intact(p, a, 0)
            if p is not None:
                byte = (name * 37 + 11) & 0xFF
                blocks[name] = (p, a, byte)
                pools[k == 5].append(name)
                if k != 5 and a:
                    memset(p, byte, a)
            print(room, p, usable, zero)
        elif k < 7:  # free, realloc, memset, free_stack
            pool = pools[k == 6]
            if not pool:
                print('-')
                continue
            j = a % len(pool)
            bn = pool[j]
            p, n, byte = blocks[bn]
            if k != 3:
                ok = k == 6 or intact(p, n, byte)
                if k == 4:
                    byte = (name * 37 + 11) & 0xFF
                    memset(p, byte, n)
                    blocks[bn] = (p, n, byte)
                else:
                    (free_kernel_stack if k == 6 else kfree)(p)
                    del blocks[bn]
                    pool.pop(j)
                print(bn, ok)
                continue
            room = largest()
            old_usable = ksize(p)
            q = krealloc(p, b)
            ok = b == 0 or intact(q if q is not None else p, min(n, b), byte)
            if q is not None or b == 0:  # moved or resized, or freed (size 0)
                del blocks[bn]
                pool.pop(j)
            if q is not None:
                blocks[name] = (q, b, byte)
                pool.append(name)
                if b > n:
                    memset(q + n, byte, b - n)
            print(bn, room, q, ksize(q) if q is not None else 0, ok, old_usable)
        elif k == 7:  # mm_create
            room = largest()
            m = mm_create()
            if m is not None:
                mm(m).start_heap = addr(a)
                mms.append(m)
            print(room, m)
        elif not mms:
            print('-')
        else:
            j = s % len(mms)
            m = mms[j]
            room = largest() if k in (9, 10, 11, 12) else 0
            try:
                if k == 8:
                    mm_destroy(m)
                    mms.pop(j)
                    r = None
                elif k == 9:
                    r = mmap_region(m, addr(a), b << 8, f)
                elif k == 10:
                    r = munmap(m, addr(a), b << 8)
                elif k == 11:
                    r = mprotect(m, addr(a), b << 8, f)
                elif k == 12:
                    r = brk(m, addr(a))
                elif k == 13:
                    v = find_vma(m, addr(a))
                    if v is not None:
                        v = vma(v)
                        print(room, 'ok', v.start, v.end, v.flags)
                        continue
                    r = None
                elif k == 14:
                    r = access_ok(m, addr(a), b << 8, f)
                else:
                    print(*[x for area in vma_list(m) for x in area])
                    continue
                print(room, 'ok', r)
            except Exception as e:
                print(room, type(e).__name__, e.errno if isinstance(e, OSError) else 0)
    print('@@end', check())
    for m in mms:
        print(*[x for area in vma_list(m) for x in area])
    for pool in pools:
        for bn in pool:
            (kfree if pool is pools[0] else free_kernel_stack)(blocks.pop(bn)[0])
    for m in mms:
        mm_destroy(m)
    print(check(), first_largest, largest(), stats()['live_blocks'])
"""


def small_heap(target):
    return (target.profile.get("heap_size") or 1 << 30) < SMALL_HEAP


def fuzz_arena(target):
    """The kmem arena the fuzz runs in (fuzz_batch makes it if the heap is another size)."""
    return SMALL_ARENA if small_heap(target) else target.profile["arena_size"]


def run_batch(target, ops, hardened=False):
    """Run the ops on the target in one round trip; the lines it printed.

    The ops travel as base64 in short pieces (a board's lexer needs a buffer as long as a
    literal). A board keeps fuzz_batch and its kmem heap from the first batch of a test to
    the next (no soft reset within a test), so a later batch is only its ops: a 25 KB script
    needs a buffer that size, which a board's heap may not have in one piece after a while,
    and neither may a new 32 KiB arena. The unix port starts a fresh process each time."""
    bare = copy.copy(target)
    bare.prelude = ""  # the same board, without the init() before every snippet
    data = base64.b64encode(encode(ops)).decode()
    call = "from binascii import a2b_base64\nOPS = bytearray()\n" + "".join(
        "OPS += a2b_base64(%r)\n" % data[i:i + 400] for i in range(0, len(data), 400))
    if target.kind != "unix":
        out = bare.exec(call + "if 'fuzz_batch' in globals(): fuzz_batch(OPS, %r)\n"
                        "else: print('@@undefined')\n" % hardened)
        if not out.startswith("@@undefined"):
            return out.splitlines()
    runner = RUNNER.replace("ARENA_SIZE", str(fuzz_arena(target)))
    return bare.exec(target.prelude + runner + call
                     + "fuzz_batch(OPS, %r)\n" % hardened).splitlines()


# ---- the host side ---------------------------------------------------------------------

TOKENS = {"None": None, "True": True, "False": False}


def parse(line):
    return [TOKENS[t] if t in TOKENS else int(t) if t.lstrip("-").isdigit() else t
            for t in line.split()]


def flat(areas):
    return [x for area in areas for x in area]


def struct_room(room, wanted, observed, tail=0):
    """Do `wanted` more 16-byte vm_area_structs fit, given the largest free block `room`
    (tail: the bytes a hardened heap adds to each block)? None fit below 16 + tail bytes;
    all fit in 16 + tail + block * (wanted - 1) (a payload of 16 takes a 24-byte block, of
    21 a 32-byte one); in between it depends on the other free blocks: the target's answer."""
    need = 16 + tail
    if room < need:
        return False
    if room >= need + ((need + 4 + 7) & ~7) * (wanted - 1):
        return True
    return observed


class Replay:
    """Follows one sequence's answers with both models; assert on any difference."""

    def __init__(self, tail=0):
        self.tail = tail  # the bytes a hardened heap adds to each request (harden.TAIL)
        self.blocks = {}  # name: (start, bytes it spans)
        self.pools = ([], [])  # as the runner's: kmalloc blocks, stacks
        self.spans = []  # sorted (start, end) of the live blocks
        self.mms = []  # AddressSpace per live mm, in the runner's order
        self.kinds = collections.Counter()

    def _live(self, name, start, usable, stack):
        self.blocks[name] = (start, usable)
        self.pools[stack].append(name)
        span = (start, start + usable)
        i = bisect.bisect(self.spans, span)
        assert i == 0 or self.spans[i - 1][1] <= start, (name, "overlaps", self.spans[i - 1])
        assert i == len(self.spans) or span[1] <= self.spans[i][0], (name, "overlaps",
                                                                    self.spans[i])
        self.spans.insert(i, span)

    def _dead(self, pool, j):
        start, usable = self.blocks.pop(pool.pop(j))
        self.spans.remove((start, start + usable))

    def op(self, name, op, got):
        kind = op[0]
        self.kinds[kind] += 1
        if kind in ("malloc", "zalloc", "stack"):
            size = op[1]
            room, p, usable, zeroed = got
            if kind != "stack" and size == 0:
                assert p is None, "kmalloc(0) is NULL"
                return
            need = ((size + 7 & ~7) + 8 if kind == "stack" else size) + self.tail
            assert (p is not None) == (room >= need), ("fails exactly when nothing fits", room)
            if p is not None:
                assert usable >= size and zeroed is True, ("short or not zeroed", usable)
                assert not self.tail or kind == "stack" or usable == size, (
                    "a hardened heap's ksize() is the size asked for", usable)
                self._live(name, p, usable, kind == "stack")  # a stack: canary to top
            return
        if kind in ALLOC_KINDS:
            pool = self.pools[kind == "free_stack"]
            if not pool:
                assert got == ["-"], "no block to take"
                return
            j = op[1] % len(pool)
            assert got[0] == pool[j], ("took another block", pool[j])
            if kind != "realloc":
                assert got[1] is True, "contents changed while the block was live"
                if kind != "memset":
                    self._dead(pool, j)
                return
            b, room, q, usable, kept, old_usable = got
            assert kept is True, "krealloc lost the old contents"
            size = op[2]
            if q is None and size:  # failed: nothing fits in place or elsewhere
                assert size > old_usable and size + self.tail > room, (room, old_usable)
                return
            self._dead(pool, j)
            if q is not None:
                assert usable >= size and (not self.tail or usable == size), usable
                self._live(name, q, usable, False)
            return
        if kind == "mm_create":
            room, m = got
            assert (m is not None) == (room >= 32 + self.tail), ("fails exactly when nothing "
                                                                 "fits", room)
            if m is not None:
                self.mms.append(AddressSpace(start_heap=op[1]))
            return
        if not self.mms:
            assert got == ["-"], "no mm to take"
            return
        j = op[1] % len(self.mms)
        space = self.mms[j]
        if kind == "vmas":
            assert got == flat(space.vma_list()), "vma_list"
            return
        room, status, *value = got
        oom = status == "OSError" and value == [errno.ENOMEM] or (
            kind == "brk" and status == "ok" and value != [op[2]])
        space.room = lambda wanted: struct_room(room, wanted, not oom, self.tail)
        args = op[2:]
        before = list(space.areas)
        try:
            if kind == "mm_destroy":
                del self.mms[j]
                r = None
            else:
                r = getattr(space, {"mmap": "mmap_region"}.get(kind, kind))(*args)
            expect = ["ok"] + (list(r) if isinstance(r, tuple) else [r])
        except ValueError:
            expect = ["ValueError", 0]
        except OSError as e:
            expect = ["OSError", e.errno]
        assert [status] + value == expect, ("the vm model says", expect)
        if kind in ("munmap", "mprotect"):  # how often they succeed and change the areas
            self.kinds[kind + " ok"] += status == "ok"
            self.kinds[kind + " changed"] += space.areas != before

    def end(self, tail):
        assert tail[0] == ["@@end", True], ("check() after the batch", tail[0])
        for i, space in enumerate(self.mms):
            assert tail[1 + i] == flat(space.vma_list()), ("vma_list of mm", i, space.areas)
        sound, first, last, live = tail[1 + len(self.mms)]
        assert sound is True and last == first and live == 0, (
            "everything freed gives the heap back", tail[-1])


@pytest.fixture
def fuzz_count():
    count = {"ops": 0, "sequences": 0, "kinds": collections.Counter(), "start": time.time(),
             "shown": time.time(), "target": None}
    yield count
    if count["sequences"]:
        seconds = time.time() - count["start"]
        print("\nfuzz on %s: %d operations in %d sequences, all as the models say; %.0f s, "
              "%.0f ops/s" % (count["target"], count["ops"], count["sequences"], seconds,
                              count["ops"] / seconds))
        print("  " + ", ".join("%s %d" % kv for kv in sorted(count["kinds"].items())))


def check_against_the_models(target, ops, fuzz_count=None, hardened=False):
    lines = run_batch(target, ops, hardened)
    replay = Replay(TAIL if hardened else 0)
    for name, (op, line) in enumerate(zip(ops, lines)):
        try:
            replay.op(name, op, parse(line))
        except AssertionError as e:
            raise AssertionError("op %d %r answered %r: %s\nthe sequence: %r"
                                 % (name, op, line, e, ops[:name + 1])) from None
    replay.end([parse(line) for line in lines[len(ops):]])
    if fuzz_count is not None:
        fuzz_count["ops"] += len(ops)
        fuzz_count["sequences"] += 1
        fuzz_count["kinds"].update(replay.kinds)
        fuzz_count["target"] = target.name + (", hardened heap" if hardened else "")
        if os.environ.get("KMEM_FUZZ_LONG") and time.time() - fuzz_count["shown"] > 10:
            fuzz_count["shown"] = time.time()
            print("  %d operations, %d sequences, %.0f ops/s" % (
                fuzz_count["ops"], fuzz_count["sequences"],
                fuzz_count["ops"] / (time.time() - fuzz_count["start"])), flush=True)


def failure(target, ops, fuzz_count=None, hardened=False):
    """The AssertionError or TargetError the ops end in, or None."""
    try:
        check_against_the_models(target, ops, fuzz_count, hardened)
    except (AssertionError, TargetError) as e:
        return e
    return None


def shrink(target, ops, hardened=False):
    """A shorter sequence that still fails: drop chunks of ops, halves down to single ones,
    while it does (any op list is a valid sequence: ops pick blocks and mms by index modulo
    what is live). Faster than hypothesis's shrinker on 600 ops that cannot be deleted below
    min_size: about 200 batches of 0.1 s on the unix port."""
    chunk = len(ops) // 2
    while chunk:
        i = 0
        while i < len(ops):
            if failure(target, ops[:i] + ops[i + chunk:], hardened=hardened):
                ops = ops[:i] + ops[i + chunk:]
            else:
                i += chunk
        chunk //= 2
    return ops


@pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
def test_kmem_matches_its_models(target, fuzz_count, hardened):
    long = bool(os.environ.get("KMEM_FUZZ_LONG"))
    examples, shortest, longest = PROFILES.get(target.kind, PROFILES["port"])[long]
    if small_heap(target):
        examples, (shortest, longest) = min(examples, SMALL_EXAMPLES[long]), SMALL_LENGTHS
    examples = int(os.environ.get("KMEM_FUZZ_EXAMPLES", "0")) or examples
    if hardened:
        examples = max(1, examples // HARDENED_SHARE)

    # Shrinking is ours (shrink above), so hypothesis only generates.
    @settings(max_examples=examples, deadline=None, derandomize=not long, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # pyright: ignore[reportArgumentType]
    @given(st.lists(st.integers(0, 0xFFFFFFFF), min_size=shortest, max_size=longest))
    def sequences(drawn):
        ops = decode_all(drawn)
        if failure(target, ops, fuzz_count, hardened) is None:
            return
        ops = shrink(target, ops, hardened)
        raise AssertionError("kmem and the models differ; shrunk to %d ops (a regression test "
                             "takes them as they are):\n%r\n%s"
                             % (len(ops), ops, failure(target, ops, hardened=hardened)))

    sequences()


# Shrunk sequences worth keeping, run as they are (none so far was a kmem bug; these pin
# the vm cases the model distinguishes: splits and re-merges, the flags mprotect keeps, its
# all-or-nothing ENOMEM, brk into a mapping, the last page's edges).
REGRESSIONS = {
    "mprotect splits, keeps VM_SHARED, re-merges": [
        ("mm_create", GRID), ("mmap", 0, GRID, 4 * PAGE_SIZE, R | VM_SHARED),
        ("mprotect", 0, GRID + PAGE_SIZE, PAGE_SIZE, RW), ("vmas", 0),
        ("mprotect", 0, GRID, 4 * PAGE_SIZE, R), ("vmas", 0)],
    "mprotect over a hole changes nothing": [
        ("mm_create", GRID), ("mmap", 0, GRID, PAGE_SIZE, R),
        ("mmap", 0, GRID + 2 * PAGE_SIZE, PAGE_SIZE, R),
        ("mprotect", 0, GRID, 3 * PAGE_SIZE, RWX), ("mprotect", 0, GRID, 0, RWX), ("vmas", 0)],
    "munmap in the middle, brk up to a mapping": [
        ("mm_create", GRID), ("mmap", 0, GRID + 3 * PAGE_SIZE, 3 * PAGE_SIZE, RX),
        ("munmap", 0, GRID + 4 * PAGE_SIZE, 0x100), ("brk", 0, GRID + 2 * PAGE_SIZE + 0x100),
        ("brk", 0, GRID + 3 * PAGE_SIZE + 0x100), ("brk", 0, GRID + 0x800), ("vmas", 0),
        ("find_vma", 0, GRID + 4 * PAGE_SIZE), ("access_ok", 0, GRID, 0x900, RW)],
    "the top of the 32-bit space": [
        ("mm_create", 0), ("mmap", 0, MAP_LIMIT - PAGE_SIZE, PAGE_SIZE, R),
        ("mmap", 0, MAP_LIMIT, PAGE_SIZE, R), ("mprotect", 0, MAP_LIMIT, 0, R),
        ("munmap", 0, MAP_LIMIT - PAGE_SIZE, 2 * PAGE_SIZE), ("find_vma", 0, 0xFFFFFF00),
        ("access_ok", 0, MAP_LIMIT - PAGE_SIZE, PAGE_SIZE, R), ("vmas", 0)],
}


@pytest.mark.parametrize("ops", list(REGRESSIONS.values()), ids=list(REGRESSIONS))
def test_kept_sequences(target, ops):
    check_against_the_models(target, ops)
