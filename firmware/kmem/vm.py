# kmem.vm - Linux-like virtual memory areas for an mm_struct.
#
# Everything lives inside the kmem arena: an MM_STRUCT (32 bytes) whose first
# word heads a singly linked list of VM_AREA_STRUCTs (16 bytes: start, end,
# flags, next), kept sorted by start, never overlapping, page aligned, with
# adjacent areas of equal flags merged.  No Python object exists per area.
#
# These are plain functions taking the Heap first; kheap.Heap binds them as
# methods.  The heap supplies _zalloc/_free/_expect/_ld/_st (kheap.py; the public
# API these functions implement: docs/API.md).
#
# The `end` field is a UINT32 and exclusive, so no area can include the last
# page of the 32-bit space: areas end at 0xfffff000 at the highest.

import errno
from micropython import const
from .tlsf import KIND_MM, KIND_VMA, CorruptionError, counters
from .structs import (VM_READ, VM_WRITE, VM_EXEC, VM_SHARED, VM_GROWSUP,
                      VM_FLAGS_MASK, PAGE_SIZE)

_MM_SIZE = const(32)
_VMA_SIZE = const(16)
# VM_AREA_STRUCT field offsets
_START = const(0)
_END = const(4)
_FLAGS = const(8)
_NEXT = const(12)
# MM_STRUCT field offsets
_MMAP = const(0)
_START_HEAP = const(20)
_END_HEAP = const(24)
_ADDR_LIMIT = 0x100000000  # 2**32: one past the last user address
_RWX = const(7)  # VM_READ | VM_WRITE | VM_EXEC: what mprotect changes
_MAP_LIMIT = 0xFFFFF000  # the highest end a UINT32 `end` field can hold


# ---- argument checking ----------------------------------------------------

def _int(v, name, fn):
    if not isinstance(v, int):
        raise TypeError("%s: %s must be an int, not %s" % (fn, name, type(v).__name__))
    return v


def _mm(h, mm, fn):
    # None goes to _expect too, which rejects it with ValueError. Every vm call starts
    # here, so this also sets the call's budget of list steps (see _link).
    if mm is not None:
        _int(mm, "mm", fn)
    mm = h._expect(mm, KIND_MM, fn)
    h._vm_steps = 8 * (counters(h.arena)[2] + 1)  # a few walks of a list of live blocks
    return mm


def _link(h, field):
    # The area a list link at `field` points to, checked before it is followed: 0, or a
    # live vm_area_struct; and the walks of one call take at most _vm_steps steps, so a
    # list that loops (damaged memory) raises instead of spinning.
    v = h._ld(field)
    if v:
        h._vm_steps -= 1
        if h._vm_steps < 0:
            raise CorruptionError("vma list at 0x%08x loops or is longer than the heap "
                                  "has blocks" % field)
        if h._kind_at(v) != KIND_VMA:
            raise CorruptionError("vma list link at 0x%08x points to 0x%08x, not a live "
                                  "vm_area_struct" % (field, v & 0xFFFFFFFF))
    return v


def _flags(flags, fn):
    _int(flags, "flags", fn)
    if flags < 0 or flags & ~VM_FLAGS_MASK:
        raise ValueError("%s: invalid flags %s (allowed bits 0x%02x)"
                         % (fn, "%d" % flags if flags < 0 else "0x%x" % flags, VM_FLAGS_MASK))
    return flags


def _page_up(n):
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _start(start, fn):
    # Validate the start of a user range: a page-aligned 32-bit address.
    _int(start, "start", fn)
    if start < 0:
        raise ValueError("%s: negative start %d" % (fn, start))
    if start % PAGE_SIZE:
        raise ValueError("%s: start 0x%08x is not a multiple of PAGE_SIZE"
                         % (fn, start))
    if start >= _ADDR_LIMIT:
        raise ValueError("%s: start 0x%x is past 32 bits" % (fn, start))


def _range(start, length, fn):
    # Validate a (start, length) user range; return (start, page-rounded end).
    _start(start, fn)
    _int(length, "length", fn)
    if length <= 0:
        raise ValueError("%s: length must be > 0, got %d" % (fn, length))
    end = start + _page_up(length)
    if end > _MAP_LIMIT:
        raise ValueError("%s: range 0x%08x+0x%x passes 0x%08x, the highest end "
                         "of a 32-bit area" % (fn, start, length, _MAP_LIMIT))
    return start, end


# ---- list access ----------------------------------------------------------

def _end(h, v):
    return h._ld(v + _END)


def _checked_end(h, mm, v, prev_end):
    # The end of the area v, once it is checked against the list invariant: page-aligned,
    # non-empty, within 32 bits and after the area before it (which ends at prev_end).
    s, e = h._ld(v + _START), _end(h, v)
    if s % PAGE_SIZE or e % PAGE_SIZE or not prev_end <= s < e <= _MAP_LIMIT:
        raise CorruptionError("vma list of the mm_struct at 0x%08x: the area at 0x%08x "
                              "(0x%08x-0x%08x) overlaps the one before it, is out of "
                              "order or is not page-aligned" % (mm, v, s, e))
    return e


def _areas(h, mm):
    # Walk the list: yields (vma, start, end, flags) in address order, checked.
    v = _link(h, mm + _MMAP)
    e = 0
    while v:
        e = _checked_end(h, mm, v, e)
        yield v, h._ld(v + _START), e, h._ld(v + _FLAGS)
        v = _link(h, v + _NEXT)


def _span(h, mm, s, e):
    # Locate [s, e) in the list.  Returns
    #   lslot, left : `left` is the last area ending at or before s (0 if
    #                 none) and lslot the word pointing at it (mm or prev+12);
    #   pslot       : the word pointing at `first`;
    #   first, last : first and last area overlapping [s, e) (0, 0 if none);
    #   stop        : first area starting at or after e (0 if none);
    #   gap         : True if some byte of [s, e) is unmapped.
    lslot = left = 0
    pslot = mm + _MMAP
    v = _link(h, pslot)
    prev_end = 0
    while v and _checked_end(h, mm, v, prev_end) <= s:
        prev_end = _end(h, v)
        lslot, left, pslot = pslot, v, v + _NEXT
        v = _link(h, pslot)
    first = v
    last = 0
    covered = s  # everything below `covered` is known mapped
    gap = False
    while v and _checked_end(h, mm, v, prev_end) and h._ld(v + _START) < e:
        prev_end = _end(h, v)
        if h._ld(v + _START) > covered:
            gap = True
        covered = _end(h, v)
        last = v
        v = _link(h, v + _NEXT)
    if covered < e:
        gap = True
    return lslot, left, pslot, (first if last else 0), last, v, gap


def _claimed(pieces, v):
    for p in pieces:
        if p[3] == v:
            return True
    return False


def _commit(h, lslot, left, pslot, first, stop, pieces, fn):
    # Replace the window of areas first..stop (exclusive; empty when
    # first == stop or first == 0) by `pieces`, a sorted list of
    # [start, end, flags, vma] where vma is the struct the piece would like to
    # keep (0: any).  Merges pieces with each other and with the neighbours
    # `left` / `stop` when adjacent with equal flags, so the list invariant
    # holds afterwards.  Structs are reused where possible; any extra ones are
    # allocated before anything is modified, so ENOMEM leaves all unchanged.
    if not first:
        first = stop
    i = 0
    while i + 1 < len(pieces):
        a = pieces[i]
        b = pieces[i + 1]
        if a[1] == b[0] and a[2] == b[2]:
            a[1] = b[1]
            if not a[3]:
                a[3] = b[3]
            pieces.pop(i + 1)
        else:
            i += 1
    if pieces:
        p = pieces[0]
        if (left and _end(h, left) == p[0]
                and h._ld(left + _FLAGS) == p[2]):
            # Grow the left neighbour over the piece (Linux vma_merge keeps
            # prev); the window now starts at it.
            p[0] = h._ld(left + _START)
            p[3] = left
            pslot, first = lslot, left
        p = pieces[-1]
        if (stop and h._ld(stop + _START) == p[1]
                and h._ld(stop + _FLAGS) == p[2]):
            p[1] = _end(h, stop)
            if not p[3]:
                p[3] = stop
            stop = _link(h, stop + _NEXT)  # old stop joins the window
    # Hand window structs nobody asked for to pieces that still need one.
    v = first
    while v != stop:
        if not _claimed(pieces, v):
            for p in pieces:
                if not p[3]:
                    p[3] = v
                    break
        v = _link(h, v + _NEXT)
    # Allocate what is still missing; undo and fail if the arena is full.
    new = []
    for p in pieces:
        if not p[3]:
            a = h._zalloc(_VMA_SIZE, KIND_VMA)
            if not a:
                for a in new:
                    h._free(a, KIND_VMA, fn)
                raise OSError(errno.ENOMEM, "%s: no room in the arena for a vm_area_struct"
                              % fn)
            p[3] = a
            new.append(a)
    # Point of no return: free unused window structs, then write and relink.
    v = first
    while v != stop:
        nxt = _link(h, v + _NEXT)
        if not _claimed(pieces, v):
            h._free(v, KIND_VMA, fn)
        v = nxt
    slot = pslot
    for s, e, f, v in pieces:
        h._st(v + _START, s)
        h._st(v + _END, e)
        h._st(v + _FLAGS, f)
        h._st(slot, v)
        slot = v + _NEXT
    h._st(slot, stop)


def _map(h, mm, s, e, flags, fn):
    lslot, left, pslot, first, last, stop, gap = _span(h, mm, s, e)
    if last:
        raise OSError(errno.EEXIST, "%s: [0x%08x, 0x%08x) overlaps the area [0x%08x, 0x%08x)"
                      % (fn, s, e, h._ld(first + _START), _end(h, first)))
    _commit(h, lslot, left, pslot, first, stop, [[s, e, flags, 0]], fn)


def _unmap(h, mm, s, e, fn):
    lslot, left, pslot, first, last, stop, gap = _span(h, mm, s, e)
    if not last:
        return  # only a hole: nothing to do
    pieces = []
    # Keep the parts of the first / last area sticking out of the range.
    fs = h._ld(first + _START)
    if fs < s:
        pieces.append([fs, s, h._ld(first + _FLAGS), first])
    le = _end(h, last)
    if le > e:
        keep = 0 if (last == first and fs < s) else last
        pieces.append([e, le, h._ld(last + _FLAGS), keep])
    _commit(h, lslot, left, pslot, first, stop, pieces, fn)


# ---- public API (bound as Heap methods) -----------------------------------

def mm_create(h):
    """Allocate a zeroed mm_struct; its address, or None if no room."""
    return h._zalloc(_MM_SIZE, KIND_MM) or None


def mm_destroy(h, mm):
    """Free every area of mm and mm itself.  NULL (None or 0) is a no-op."""
    if mm is None or (isinstance(mm, int) and mm == 0):
        return
    mm = _mm(h, mm, "mm_destroy")
    # Validate the whole list first so a bad list frees nothing.
    for v, s, e, f in _areas(h, mm):
        h._expect(v, KIND_VMA, "mm_destroy")
    v = _link(h, mm + _MMAP)
    while v:
        nxt = _link(h, v + _NEXT)
        h._free(v, KIND_VMA, "mm_destroy")
        v = nxt
    h._free(mm, KIND_MM, "mm_destroy")


def mmap_region(h, mm, start, length, flags):
    """Map [start, start+length) (length rounded up to pages); returns start.
    OSError EEXIST if it overlaps an area, ENOMEM if the arena is full."""
    fn = "mmap_region"
    mm = _mm(h, mm, fn)
    s, e = _range(start, length, fn)
    _map(h, mm, s, e, _flags(flags, fn), fn)
    return start


def munmap(h, mm, start, length):
    """Unmap [start, start+length); holes are fine, areas are split.
    OSError ENOMEM if a split needs a struct and the arena is full."""
    fn = "munmap"
    mm = _mm(h, mm, fn)
    s, e = _range(start, length, fn)
    _unmap(h, mm, s, e, fn)


def mprotect(h, mm, start, length, flags):
    """Set the access rights (VM_READ, VM_WRITE, VM_EXEC) of [start, start+length),
    splitting and merging areas; each area keeps its other flags, as in Linux. Length 0
    does nothing. OSError ENOMEM, and nothing changed, if any page is unmapped or there
    is no room (Linux changes the pages up to the first hole first)."""
    fn = "mprotect"
    mm = _mm(h, mm, fn)
    _int(length, "length", fn)
    flags = _flags(flags, fn)
    if flags & ~_RWX:
        raise ValueError("%s: flags 0x%x: only VM_READ, VM_WRITE and VM_EXEC can change"
                         % (fn, flags))
    if length == 0:  # as Linux: only the start is checked
        _start(start, fn)
        return
    s, e = _range(start, length, fn)
    lslot, left, pslot, first, last, stop, gap = _span(h, mm, s, e)
    if gap:
        raise OSError(errno.ENOMEM, "%s: [0x%08x, 0x%08x) is not all mapped" % (fn, s, e))
    # Each area in the range gives a piece of it with the new rights (and its own other
    # flags), and keeps its struct for its first piece; _commit merges equal neighbours.
    pieces = []
    v = first
    while True:
        vs, ve, vf = h._ld(v + _START), _end(h, v), h._ld(v + _FLAGS)
        if vs < s:
            pieces.append([vs, s, vf, v])
        pieces.append([max(vs, s), min(ve, e), (vf & ~_RWX) | flags, 0 if vs < s else v])
        if ve > e:
            pieces.append([e, ve, vf, 0])
        if v == last:
            break
        v = _link(h, v + _NEXT)
    _commit(h, lslot, left, pslot, first, stop, pieces, fn)


def find_vma(h, mm, addr):
    """Address of the first area with addr < end, or None."""
    fn = "find_vma"
    mm = _mm(h, mm, fn)
    _int(addr, "addr", fn)
    if addr < 0 or addr >= _ADDR_LIMIT:
        raise ValueError("%s: address %d outside 0..0xffffffff" % (fn, addr))
    for v, s, e, f in _areas(h, mm):
        if addr < e:
            return v
    return None


def brk(h, mm, new_end):
    """Move the program break (mm.end_heap) to new_end, growing or shrinking
    the heap area [start_heap, PAGE_ALIGN(end_heap)) with flags
    VM_READ|VM_WRITE|VM_GROWSUP.  Returns the new end, or the current end on
    failure (new_end below start_heap, overlap, no memory) and for queries
    such as brk(mm, 0)."""
    fn = "brk"
    mm = _mm(h, mm, fn)
    _int(new_end, "new_end", fn)
    start_heap = h._ld(mm + _START_HEAP)
    # A fresh heap (end_heap never set) ends where it starts, as in Linux
    # where mm->brk starts equal to mm->start_brk.
    cur = max(h._ld(mm + _END_HEAP), start_heap)
    if new_end < start_heap or new_end >= _ADDR_LIMIT:
        return cur
    old_top = _page_up(cur)
    new_top = _page_up(new_end)
    if new_top > _MAP_LIMIT:
        return cur
    try:
        if new_top > old_top:
            _map(h, mm, old_top, new_top, VM_READ | VM_WRITE | VM_GROWSUP, fn)
        elif new_top < old_top:
            _unmap(h, mm, new_top, old_top, fn)
    except OSError:
        return cur  # overlap (EEXIST) or no room for a struct (ENOMEM)
    h._st(mm + _END_HEAP, new_end)
    return new_end


def access_ok(h, mm, addr, length, flags):
    """True if every byte of [addr, addr+length) is mapped by areas having
    all bits of flags.  length 0 is always ok."""
    fn = "access_ok"
    mm = _mm(h, mm, fn)
    _int(addr, "addr", fn)
    _int(length, "length", fn)
    flags = _flags(flags, fn)
    if length < 0:
        raise ValueError("%s: negative length %d" % (fn, length))
    if length == 0:
        return True
    end = addr + length
    if addr < 0 or end > _ADDR_LIMIT:
        return False
    for v, s, e, f in _areas(h, mm):
        if e <= addr:
            continue
        if s > addr or (f & flags) != flags:
            return False  # a hole, or an area lacking permissions
        addr = e
        if addr >= end:
            return True
    return False


def vma_list(h, mm):
    """[(start, end, flags), ...] sorted by start."""
    mm = _mm(h, mm, "vma_list")
    return [(s, e, f) for v, s, e, f in _areas(h, mm)]


def maps_line(s, e, f):
    """An area as /proc/<pid>/maps shows it: 08048000-08049000 r-xp"""
    return "%08x-%08x %s%s%s%s" % (
        s, e,
        "r" if f & VM_READ else "-",
        "w" if f & VM_WRITE else "-",
        "x" if f & VM_EXEC else "-",
        "s" if f & VM_SHARED else "p")


def mm_dump(h, mm):
    """Print one /proc/<pid>/maps-style line per area, e.g.
    08048000-08049000 r-xp"""
    mm = _mm(h, mm, "mm_dump")
    for v, s, e, f in _areas(h, mm):
        print(maps_line(s, e, f))
