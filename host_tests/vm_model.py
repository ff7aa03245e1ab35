"""A reference model of kmem's address spaces, for the differential fuzz (test_fuzz.py).

Pure Python, host only, written from the README and firmware/kmem/vm.py's docstrings and
cross-checked against Linux (mm/mmap.c, mm/mprotect.c, mm/vma.c); it shares no code with
the firmware. An AddressSpace is one mm_struct: a sorted list of (start, end, flags) areas
plus start_heap / end_heap. Errors are raised as the target raises them: ValueError for a
bad argument (Linux's EINVAL), OSError with errno EEXIST / ENOMEM.

Where kmem deliberately differs from Linux the model follows kmem; each place says so.

The one thing the model cannot know is whether the arena has room for the vm_area_structs
an operation needs: every change goes through _commit, which asks `room(n)` (n = how many
more areas the list holds afterwards, i.e. how many structs kmem must allocate before it
changes anything) and raises ENOMEM, changing nothing, when it says no. The fuzz supplies
`room` from the largest free block the target reported.
"""
import errno

VM_READ, VM_WRITE, VM_EXEC = 0x01, 0x02, 0x04
VM_SHARED, VM_GROWSUP, VM_GROWSDOWN = 0x08, 0x10, 0x20
VM_FLAGS_MASK = 0x3F
RWX = VM_READ | VM_WRITE | VM_EXEC  # all mprotect may change
BRK_FLAGS = VM_READ | VM_WRITE | VM_GROWSUP
PAGE_SIZE = 4096
ADDR_LIMIT = 1 << 32  # one past the last 32-bit address
# kmem's `end` field is a UINT32 and exclusive: no area can hold the last page. (Linux's
# limit is TASK_SIZE; past it is EINVAL, as past this is ValueError here.)
MAP_LIMIT = ADDR_LIMIT - PAGE_SIZE


def page_up(n):
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def check_range(start, length):
    """(start, page-rounded end) of a user range, or ValueError (Linux: EINVAL): a negative
    or unaligned start, a length <= 0 (munmap and MAP_FIXED mmap: EINVAL for 0 as well), or
    an end past MAP_LIMIT."""
    if start < 0 or start % PAGE_SIZE or length <= 0 or start + page_up(length) > MAP_LIMIT:
        raise ValueError("bad range 0x%x+0x%x" % (start, length))
    return start, start + page_up(length)


def check_flags(flags):
    if flags < 0 or flags & ~VM_FLAGS_MASK:
        raise ValueError("invalid flags 0x%x" % flags)
    return flags


class AddressSpace:
    """One mm_struct. `areas` is a list of (start, end, flags), sorted, non-overlapping,
    page-aligned, with no two adjacent areas of equal flags (kmem merges them whatever the
    flags; Linux also needs the same file, anon_vma and policy, which kmem has not got)."""

    def __init__(self, start_heap=0, room=lambda n: True):
        self.areas = []
        self.start_heap, self.end_heap = start_heap, 0  # mm_create zeroes; the fuzz sets start_heap
        self.room = room

    # ---- helpers ----------------------------------------------------------

    def _commit(self, s, e, pieces):
        """Replace [s, e) by `pieces` (sorted areas inside it), keep what lies outside,
        merge equal neighbours. Nothing changes if `room` says the structs are not there."""
        keep = []
        for a in self.areas:
            if a[1] <= s or a[0] >= e:
                keep.append(a)
            else:  # the parts sticking out of [s, e) stay, with their flags
                if a[0] < s:
                    keep.append((a[0], s, a[2]))
                if a[1] > e:
                    keep.append((e, a[1], a[2]))
        merged = []
        for a in sorted(keep + list(pieces)):
            if merged and merged[-1][1] == a[0] and merged[-1][2] == a[2]:
                merged[-1] = (merged[-1][0], a[1], a[2])
            else:
                merged.append(a)
        more = len(merged) - len(self.areas)
        if more > 0 and not self.room(more):
            raise OSError(errno.ENOMEM, "no room for %d vm_area_struct(s)" % more)
        self.areas = merged

    def _overlapping(self, s, e):
        return [a for a in self.areas if a[0] < e and s < a[1]]

    def _map(self, s, e, flags):
        if self._overlapping(s, e):
            # MAP_FIXED_NOREPLACE: an existing mapping in the range is EEXIST, nothing changes.
            raise OSError(errno.EEXIST, "overlap")
        self._commit(s, e, [(s, e, flags)])

    # ---- the API --------------------------------------------------------

    def mmap_region(self, start, length, flags):
        s, e = check_range(start, length)
        self._map(s, e, check_flags(flags))
        return start

    def munmap(self, start, length):
        # Unmapping a hole is fine (Linux too); areas are split at the range's ends.
        s, e = check_range(start, length)
        self._commit(s, e, [])

    def mprotect(self, start, length, flags):
        check_flags(flags)
        if flags & ~RWX:  # Linux: PROT_* beyond rwx (or GROWSUP|GROWSDOWN together) is EINVAL
            raise ValueError("only VM_READ, VM_WRITE and VM_EXEC can change")
        if length == 0:
            # A no-op, as in Linux, which checks only that start is aligned (kmem: and that
            # it is a 32-bit address).
            if start < 0 or start % PAGE_SIZE or start >= 1 << 32:
                raise ValueError("bad start 0x%x" % start)
            return None
        s, e = check_range(start, length)
        inside = self._overlapping(s, e)
        covered = s
        for a in inside:
            if a[0] > covered:
                break
            covered = a[1]
        if covered < e:
            # kmem: any unmapped page is ENOMEM and nothing changes. Linux also says ENOMEM
            # but has already changed the areas before the first hole.
            raise OSError(errno.ENOMEM, "hole in the range")
        # Each area keeps its other flags (VM_SHARED, VM_GROWSUP, VM_GROWSDOWN), as in Linux.
        self._commit(s, e, [(max(a[0], s), min(a[1], e), a[2] & ~RWX | flags) for a in inside])
        return None

    def find_vma(self, addr):
        """(start, end, flags) of the first area with addr < end, or None."""
        if not 0 <= addr < ADDR_LIMIT:
            raise ValueError("address out of range")
        for a in self.areas:
            if addr < a[1]:
                return a
        return None

    def brk(self, new_end):
        """Move the break: the heap area [start_heap, page_up(end_heap)), flags
        VM_READ|VM_WRITE|VM_GROWSUP. Returns the new end, or the current one when it cannot
        move (below start_heap, past the limit, an overlap, no room), as Linux's brk does.
        kmem differs from Linux in needing no guard page between the new break and the next
        area (Linux refuses to grow within a page of it) and in having no rlimit."""
        cur = max(self.end_heap, self.start_heap)  # a fresh mm: brk starts at start_brk
        if new_end < self.start_heap or new_end >= ADDR_LIMIT:
            return cur
        old_top, new_top = page_up(cur), page_up(new_end)
        if new_top > MAP_LIMIT:
            return cur
        try:
            if new_top > old_top:
                self._map(old_top, new_top, BRK_FLAGS)
            elif new_top < old_top:
                self._commit(new_top, old_top, [])  # whatever is mapped there goes (Linux too)
        except OSError:
            return cur
        self.end_heap = new_end
        return new_end

    def access_ok(self, addr, length, flags):
        """Is every byte of [addr, addr+length) mapped by areas having all bits of flags?
        (Linux's access_ok only checks the range against TASK_SIZE; kmem's looks at the
        areas.) Length 0 is always fine."""
        check_flags(flags)
        if length < 0:
            raise ValueError("negative length")
        if length == 0:
            return True
        end = addr + length
        if addr < 0 or end > ADDR_LIMIT:
            return False
        for s, e, f in self.areas:
            if e <= addr:
                continue
            if s > addr or f & flags != flags:
                return False
            addr = e
            if addr >= end:
                return True
        return False

    def vma_list(self):
        return list(self.areas)
