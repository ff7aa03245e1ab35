# class Heap: the kernel-style API over one TLSF arena.
#
# This layer turns kernel addresses into arena offsets, validates every
# argument before the arena is touched (so bad input never changes the heap),
# and prints the seed's debug messages. The allocator work itself happens in
# the viper hot paths of hot.py (and tlsf.py's helpers).
import uctypes
from micropython import const
from . import tlsf
from .tlsf import KIND_PLAIN, KIND_STACK, KIND_MM, KIND_VMA, KIND_NAMES, CorruptionError
from .structs import VM_AREA_STRUCT, MM_STRUCT

_NATIVE_LIMIT = const(0x40000000)  # real addresses below this are small ints
_UNIX_BASE = const(0x20000000)  # default base when the real address is large
_next_base = [_UNIX_BASE]  # where the next such heap's addresses start (a list: no global)
_MIN_ARENA = const(512)
_FREED_WITH = ("kfree", "free_kernel_stack", "mm_destroy", "munmap")
_A_KIND = ("a kmalloc block", "a kernel stack", "an mm_struct", "a vm_area_struct")


def hexaddr(v):
    # An address for a message: 0x%08x, and a negative one as -0x... (not 0x-...).
    return "-0x%08x" % -v if v < 0 else "0x%08x" % v


def _is_null(ptr):
    return ptr is None or (isinstance(ptr, int) and ptr == 0)


def _need_int(value, what, fn=None):
    # fn: the call the value was given to, named first as in every per-call message.
    if not isinstance(value, int):
        raise TypeError("%s%s must be an int, not %s"
                        % (fn + ": " if fn else "", what, type(value).__name__))


def _need_size(value, fn, what="size"):
    _need_int(value, what, fn)
    if value < 0:
        raise ValueError("%s: %s must be >= 0, got %d" % (fn, what, value))


def _virtual_base(size):
    # Heaps whose real address is no small int (the 64-bit unix port) get consecutive
    # ranges of kernel addresses from 0x20000000, so no two heaps share an address and a
    # pointer from one is never taken for a block of another. After 512 MiB of heaps the
    # ranges start again.
    base = _next_base[0]
    if base + size > _NATIVE_LIMIT:
        base = _UNIX_BASE
    _next_base[0] = base + ((size + 0xFFFF) & ~0xFFFF)
    return base


def check_heap_args(size, base, align, hardened=False):
    """Validate Heap() arguments without allocating; returns the granule."""
    _need_int(size, "size")
    _need_int(align, "align")
    if hardened is not True and hardened is not False:
        raise TypeError("hardened must be True or False, not %s" % type(hardened).__name__)
    if not _MIN_ARENA <= size <= tlsf.MAX_ARENA:
        raise ValueError("size must be %d..%d bytes" % (_MIN_ARENA, tlsf.MAX_ARENA))
    if align not in (4, 8, 16):
        raise ValueError("align must be 4, 8 or 16")
    granule = 16 if align == 16 else 8
    if base is not None:
        _need_int(base, "base")
        if base <= 0 or base % granule or base + size > 0x100000000:
            raise ValueError("base must be a positive multiple of %d with "
                             "base + size <= 2**32" % granule)
    return granule


class Heap:
    """A TLSF heap over its own bytearray arena. Addresses are base + offset.

    kmalloc, kfree, ksize, kzalloc, kcalloc, krealloc, memset and memcpy are the viper hot
    paths of tlsf.bind(), kept as instance attributes (no method layer between the caller
    and the body): kmalloc(size) gives the address of a new block of >= size bytes, or
    None when none fits; kfree(ptr) frees a kmalloc block (NULL is a no-op; anything else
    raises ValueError); ksize(ptr) gives the usable bytes of a block (>= what was asked
    for; 0 for NULL); kzalloc(size) is kmalloc with the block zeroed; kcalloc(n, size) a
    zeroed array of n elements of size bytes, or None (n * size cannot wrap as C's size_t
    can: a product too big for the arena simply fails); krealloc(ptr, size) resizes a
    block, in place when it can, with C realloc semantics (NULL: kmalloc; size 0: kfree
    and None; None when it cannot grow, the block untouched); memset(ptr, value, n) fills
    n bytes with value (0..255) and memcpy(dst, src, n) copies n bytes (overlap-safe, like
    memmove), each range inside one live block. hardened=True adds red zones, seals, poison
    and secret links (harden.py); then these are Python functions around the hot paths,
    and ksize() is exactly the size asked for."""

    def __init__(self, size=32768, base=None, align=4, hardened=False):
        granule = check_heap_args(size, base, align, hardened)
        arena = bytearray(size)
        if base is None:
            # The arena's real address when it is a small int (RP2040, ESP32).
            base = uctypes.addressof(arena)
            if base >= _NATIVE_LIMIT or base % granule:
                base = _virtual_base(size)
        whole = tlsf.format(arena, 4 if granule == 16 else 3, base)
        self._addr = uctypes.addressof(arena)  # raw buffer address, for the hot paths
        (self.kmalloc, self.kfree, self.ksize, self.kzalloc, self.kcalloc, self.krealloc,
         self.memset, self.memcpy, _) = tlsf.bind(self, self._addr)
        self.arena = arena
        self.base = base
        self.size = size
        self.align = align
        self._debug = False
        self._vm_steps = 0  # vm.py's budget of list steps for the current call
        self._guard = None  # a hardened heap's checks (harden.py)
        if hardened:
            from . import harden
            secret = harden.secret()
            tlsf.store32(arena, tlsf.W_SECRET_OFFSET, secret)  # before any link is stored
        self.kfree(base + whole)  # the one block format() left: now the heap is empty
        tlsf.store32(arena, tlsf.W_FREES_OFFSET, 0)  # that free was no caller's
        if hardened:
            self._guard = harden.Guard(self, secret)

    def __repr__(self):
        return "<%sHeap %d bytes at 0x%08x>" % ("hardened " if self._guard else "",
                                                self.size, self.base)

    @property
    def hardened(self):
        return self._guard is not None

    def _usable(self, off):
        # Usable bytes of the live block at payload offset off: on a hardened heap, the
        # bytes asked for (its red zone and seal verified).
        return self._guard.usable(off) if self._guard else tlsf.usable(self.arena, off)

    # ---- address checks --------------------------------------------------------

    def _offset(self, ptr, fn):
        # Arena offset of a kernel address, or -1 when it is outside the arena.
        if not isinstance(ptr, int):
            raise TypeError("%s: pointer must be an int or None, not %s"
                            % (fn, type(ptr).__name__))
        off = ptr - self.base
        return off if 0 <= off < self.size else -1

    def _bad_pointer(self, ptr, fn, code, want=KIND_PLAIN):
        if code == -2:
            kind = tlsf.kind_of(self.arena, ptr - self.base)
            if fn in _FREED_WITH:  # a free function, given what another one frees
                return ValueError("%s: %s is %s; free it with %s()"
                                  % (fn, hexaddr(ptr), _A_KIND[kind], _FREED_WITH[kind]))
            return ValueError("%s: %s is %s, not %s"
                              % (fn, hexaddr(ptr), _A_KIND[kind], _A_KIND[want]))
        return ValueError("%s: %s is not the start of a live %s"
                          % (fn, hexaddr(ptr), KIND_NAMES[want]))

    def _expect(self, ptr, kind, fn):
        """ptr as an int if it starts a live block of that kind, else ValueError."""
        off = -1 if ptr is None else self._offset(ptr, fn)
        found = tlsf.kind_of(self.arena, off) if off >= 0 else -1
        if self._guard and found >= 0:
            self._guard.usable(off)  # the seal covers the kind: a flipped one is corruption
        if found != kind:
            raise self._bad_pointer(0 if ptr is None else ptr, fn,
                                    -2 if found >= 0 else -1, kind)
        return ptr

    def _block_end(self, ptr, fn):
        # Offset of the end of the live block that holds ptr (no tuple: memset and memcpy
        # must not allocate).
        off = -1 if ptr is None else self._offset(ptr, fn)
        start = tlsf.block_containing(self.arena, off) if off >= 0 else -1
        if start < 0:
            raise ValueError("%s: %s is not inside a live block" % (fn, hexaddr(ptr or 0)))
        return start + self._usable(start)

    def _span(self, ptr, n, fn):
        # Offset of ptr when [ptr, ptr+n) lies inside one live block.
        _need_size(n, fn, "n")
        end = self._block_end(ptr, fn)
        off = ptr - self.base
        if off + n > end:
            raise ValueError("%s: %d bytes at 0x%08x run past the end of the block (0x%08x)"
                             % (fn, n, ptr, self.base + end))
        return off

    # ---- allocation --------------------------------------------------------------

    def _quietly(self, fn, *args):
        # A hot path without its own debug message (the caller prints the seed's).
        flags = tlsf.load32(self.arena, tlsf.W_FLAGS_OFFSET)
        if not flags:
            return fn(*args)
        tlsf.store32(self.arena, tlsf.W_FLAGS_OFFSET, 0)
        try:
            return fn(*args)
        finally:
            tlsf.store32(self.arena, tlsf.W_FLAGS_OFFSET, flags)

    def _alloc(self, size, kind, asked=None):
        # Blocks of every kind come from the kmalloc hot path; the argument is already
        # validated. The debug message shows what the caller asked for (asked, else size).
        ptr = self._quietly(self.kmalloc, min(size, self.size))
        if ptr is None:
            if self._debug:
                print("Memory allocation failed")
            return None
        if kind:
            off = ptr - self.base - 4
            tlsf.store32(self.arena, off, tlsf.load32(self.arena, off) | kind << tlsf.KIND_SHIFT)
            if self._guard:
                self._guard.seal(ptr, size)  # the seal covers the kind
        if self._debug:
            print("Memory allocated: %d bytes at 0x%08x" % (asked or size, ptr))
        return ptr

    def _free(self, ptr, kind, fn):
        # Blocks of every kind go back through the kfree hot path, once the kind is checked
        # (before anything changes).
        if self._debug:
            print("Memory free requested at 0x%08x" % ptr)
        off = self._offset(ptr, fn)
        found = tlsf.kind_of(self.arena, off) if off >= 0 else -1
        # A hardened heap's seal covers the kind: a flipped one is corruption.
        n = self._guard.usable(off) if self._guard and found >= 0 else 0
        if found != kind:
            raise self._bad_pointer(ptr, fn, -2 if found >= 0 else -1, kind)
        hdr = tlsf.load32(self.arena, off - 4)
        if kind:
            tlsf.store32(self.arena, off - 4, hdr & ~(3 << tlsf.KIND_SHIFT))
            if self._guard:
                self._guard.seal(ptr, n)
        try:
            self._quietly(self.kfree, ptr)
        except CorruptionError:
            if kind:
                tlsf.store32(self.arena, off - 4, hdr)  # the block keeps its kind
                if self._guard:
                    self._guard.seal(ptr, n)
            raise

    def _zalloc(self, size, kind):
        ptr = self._alloc(size, kind)
        if ptr is not None:
            tlsf.fill(self.arena, ptr - self.base, 0, size)
        return ptr

    # ---- the hot paths' out-of-line parts (tlsf.bind) ---------------------------------

    def _kmalloc_slow(self, size, fn="kmalloc"):
        # Not an int, negative, a bool, or too big for any arena (counted as a failure);
        # fn: the call made (kzalloc's hot path comes here too).
        _need_size(size, fn)
        if size < self.size:  # a small int the hot path did not recognise: its box words
            raise CorruptionError("arena control block overwritten (box words)")
        tlsf.count_failure(self.arena)
        return self._oom()

    def _oom(self):
        # The arena's flag, not self._debug: _quietly silences it when the caller prints.
        if tlsf.load32(self.arena, tlsf.W_FLAGS_OFFSET) & tlsf.FLAG_DEBUG:
            print("Memory allocation failed")
        return None

    def _debug_alloc(self, size, ptr):
        print("Memory allocated: %d bytes at 0x%08x" % (size, ptr))

    def _debug_free(self, ptr):
        print("Memory free requested at 0x%08x" % ptr)

    def _kfree_slow(self, ptr):
        # The hot path's pointer is not a small int >= 0 (nor None): raise, unless it is an
        # int that may still start a block (a big int), which the hot path then frees.
        if not isinstance(ptr, int):
            raise TypeError("kfree: pointer must be an int or None, not %s"
                            % type(ptr).__name__)
        if not 0 <= ptr - self.base < self.size:
            self._free(ptr, KIND_PLAIN, "kfree")  # raises ValueError, after the debug line

    def _corrupt(self, addr, what):
        tlsf.fault(self.arena, self.base, addr, what)

    def _first_fit(self, need):
        return tlsf.first_fit_at(self._addr, need, self)

    def _big(self, ptr):
        return ptr  # boxed by the call: an address of 2**30 or more on a 32-bit port

    def _bad_free(self, ptr, code):
        raise self._bad_pointer(ptr, "kfree", code, KIND_PLAIN)

    def _ksize_slow(self, ptr):
        if ptr is None:
            return 0
        if not isinstance(ptr, int):
            raise TypeError("ksize: pointer must be an int or None, not %s"
                            % type(ptr).__name__)
        self._expect(ptr, KIND_PLAIN, "ksize")  # a big int may still name a block
        return self._usable(ptr - self.base)

    def _kcalloc_slow(self, n, size):
        # kcalloc of anything but two small ints below 2**15. n * size cannot wrap as C's
        # size_t can: a product too big for the arena simply fails like any other request.
        _need_size(n, "kcalloc", "n")
        _need_size(size, "kcalloc")
        if size and n > self.size // size:  # fails without making a big int of n * size
            return self._kmalloc_slow(self.size)
        return self.kzalloc(n * size)

    def _krealloc_slow(self, ptr, size):
        # krealloc of NULL, to size 0, of a big int, or with a bad argument (C realloc
        # semantics); self: a live kmalloc block and a size it may fit, the hot path goes on.
        _need_size(size, "krealloc")  # first: krealloc(NULL, size) is still krealloc's
        if _is_null(ptr):
            return self.kmalloc(size)
        self._offset(ptr, "krealloc")  # TypeError for a non-int
        self._expect(ptr, KIND_PLAIN, "krealloc")
        if size == 0:
            self.kfree(ptr)
            return None
        if size >= self.size:
            return self.kmalloc(size)  # fails (and is counted) as any request that big
        return self

    def _krealloc_bad(self, ptr):
        self._expect(ptr, KIND_PLAIN, "krealloc")
        raise self._bad_pointer(ptr, "krealloc", -1)

    def _krealloc_move(self, ptr, size):
        # The block cannot grow in place: a new one, the bytes, the old one freed (each hot
        # path prints its own debug line). A hardened heap's krealloc moves it itself.
        if self._guard:
            return None
        new = self.kmalloc(size)
        if new is not None:
            off = ptr - self.base
            tlsf.move(self.arena, new - self.base, off, min(size, tlsf.usable(self.arena, off)))
            self.kfree(ptr)
        return new

    # ---- kernel stacks ------------------------------------------------------------

    def allocate_kernel_stack(self, size):
        """Lowest address of a new stack; it grows down from kernel_stack_top().

        The lowest 8 bytes hold a canary (like Linux's STACK_END_MAGIC) that
        check() verifies, so a stack that grew too deep is reported.
        """
        _need_size(size, "allocate_kernel_stack")
        if not size:
            return None
        stack = self._alloc(((size + 7) & ~7) + 8, KIND_STACK, size)
        if stack is not None:
            off = stack - self.base
            tlsf.store32(self.arena, off, tlsf.STACK_CANARY)
            tlsf.store32(self.arena, off + 4, tlsf.STACK_CANARY)
        return stack

    def kernel_stack_top(self, stack):
        """Initial stack pointer of a kernel stack: its 8-aligned high end."""
        self._expect(stack, KIND_STACK, "kernel_stack_top")
        return stack + (self._usable(stack - self.base) & ~7)

    def free_kernel_stack(self, stack):
        """Free a stack from allocate_kernel_stack(); NULL is a no-op. A damaged canary
        (the stack grew too deep) raises CorruptionError and frees nothing."""
        if _is_null(stack):
            return
        self._expect(stack, KIND_STACK, "free_kernel_stack")
        off = stack - self.base
        if not (tlsf.load32(self.arena, off) == tlsf.STACK_CANARY
                == tlsf.load32(self.arena, off + 4)):
            raise CorruptionError("block at %s: kernel stack overflow (canary at %s damaged)"
                                  % (hexaddr(stack - 4), hexaddr(stack)))
        self._free(stack, KIND_STACK, "free_kernel_stack")

    # ---- bounded memory access ------------------------------------------------------

    def _memset_checked(self, ptr, value, n):
        # memset's slow path (tlsf.bind): every check with its message, then the fill.
        _need_int(value, "value", "memset")
        if not 0 <= value <= 255:
            raise ValueError("memset: value must be 0..255, got %d" % value)
        tlsf.fill(self.arena, self._span(ptr, n, "memset"), value, n)
        return ptr

    def _memcpy_checked(self, dst, src, n):
        # memcpy's slow path (tlsf.bind).
        s = self._span(src, n, "memcpy")
        d = self._span(dst, n, "memcpy")
        tlsf.move(self.arena, d, s, n)
        return dst

    def view(self, ptr, n=None):
        """A memoryview of n bytes at ptr (default: up to the end of its block)."""
        if n is None:
            end = self._block_end(ptr, "view")
            off = ptr - self.base
            n = end - off
        else:
            off = self._span(ptr, n, "view")
        return memoryview(self.arena)[off:off + n]

    def addressof(self, ptr):
        """The real machine address of a kernel address (for uctypes or viper)."""
        self._block_end(ptr, "addressof")
        return self._addr + ptr - self.base

    def vma(self, ptr):
        """A uctypes view of the VM_AREA_STRUCT at ptr (a vm_area_struct block)."""
        self._expect(ptr, KIND_VMA, "vma")
        return uctypes.struct(self.addressof(ptr), VM_AREA_STRUCT, uctypes.LITTLE_ENDIAN)

    def mm(self, ptr):
        """A uctypes view of the MM_STRUCT at ptr (an mm_struct block)."""
        self._expect(ptr, KIND_MM, "mm")
        return uctypes.struct(self.addressof(ptr), MM_STRUCT, uctypes.LITTLE_ENDIAN)

    def _kind_at(self, ptr):
        # Kind of the live block starting at ptr, or -1 (for vm.py's list checks).
        off = ptr - self.base
        return tlsf.kind_of(self.arena, off) if 0 <= off < self.size else -1

    # Word access for vm.py: the caller owns the block (no checks).
    def _ld(self, ptr):
        return tlsf.load32(self.arena, ptr - self.base)

    def _st(self, ptr, value):
        tlsf.store32(self.arena, ptr - self.base, value)

    # ---- introspection ----------------------------------------------------------------

    def stats(self):
        """Counters and sizes of the heap, read from the arena (O(1) but largest_free)."""
        used, peak, live, nfree, allocs, frees, fails = tlsf.counters(self.arena)
        free = tlsf.free_bytes(self.arena)
        return {
            "size": self.size, "used": used, "free": free,
            "overhead": self.size - used - free,
            "largest_free": tlsf.largest_free(self.arena),
            "free_blocks": nfree, "live_blocks": live, "peak_used": peak,
            "allocs": allocs, "frees": frees, "failures": fails,
        }

    def check(self):
        """Verify every heap invariant, the address spaces' lists included: True, or
        CorruptionError naming the fault."""
        tlsf.check(self.arena, self.base, self._guard.secret if self._guard else 0)
        if self._guard:
            self._guard.check()
        for off, size, kind, free in tlsf.blocks(self.arena):
            if kind == KIND_MM and not free:  # loaded only when there is an mm_struct
                from .vmcheck import check_lists
                return check_lists(self)
        return True

    def walk(self):
        """Yield (address, usable size, used) for every block in address order."""
        for off, size, _, free in tlsf.blocks(self.arena):
            yield self.base + off, size, not free

    def debug(self, on=True):
        """Print the seed's allocation messages while on."""
        self._debug = bool(on)
        tlsf.store32(self.arena, tlsf.W_FLAGS_OFFSET, tlsf.FLAG_DEBUG if on else 0)

    # ---- address spaces (vm.py, loaded on first use: it is not needed to allocate) ---------
    def mm_create(self):
        return _vm().mm_create(self)

    def mm_destroy(self, mm):
        return _vm().mm_destroy(self, mm)

    def mmap_region(self, mm, start, length, flags):
        return _vm().mmap_region(self, mm, start, length, flags)

    def munmap(self, mm, start, length):
        return _vm().munmap(self, mm, start, length)

    def mprotect(self, mm, start, length, flags):
        return _vm().mprotect(self, mm, start, length, flags)

    def find_vma(self, mm, addr):
        return _vm().find_vma(self, mm, addr)

    def brk(self, mm, new_end):
        return _vm().brk(self, mm, new_end)

    def access_ok(self, mm, addr, length, flags):
        return _vm().access_ok(self, mm, addr, length, flags)

    def vma_list(self, mm):
        return _vm().vma_list(self, mm)

    def mm_dump(self, mm):
        return _vm().mm_dump(self, mm)

    # ---- pictures (mapview.py, loaded on first use) --------------------------------------
    def heap_map(self, width=64):
        from . import mapview
        return mapview.heap_map(self, width)

    def mm_map(self, mm, width=64):
        from . import mapview
        return mapview.mm_map(self, mm, width)


def _vm():
    from . import vm
    return vm

