# kmem: a kernel-style memory manager for MicroPython.
#
# The seed API (kmalloc, kfree, kernel stacks, mm_struct / vm_area_struct)
# over a real TLSF allocator. Module functions act on a default Heap, made by
# init() or on first use; every Heap offers the same functions as methods.
# `mpremote mip install` over `make deploy` leaves .py beside .mpy, and .py wins (compiling
# it can exhaust a small heap): say so before the big modules load.
if __file__.endswith(".py"):
    try:
        __import__("os").stat(__file__[:-3] + ".mpy")
        print("kmem: warning: importing the .py sources, though " + __file__[:-3] + ".mpy"
              + " is there too; remove one set (make deploy removes stale .py files)")
    except OSError:
        pass
from . import hot  # first: compiled from .py, it needs the most RAM, so the rest waits
from .structs import (
    VM_READ, VM_WRITE, VM_EXEC, VM_SHARED, VM_GROWSUP, VM_GROWSDOWN,
    PAGE_SIZE, VM_AREA_STRUCT, MM_STRUCT,
)
from .kheap import Heap, CorruptionError, check_heap_args
from .tlsf import bind as _bind

__version__ = "0.1.0"

_heap = None


def init(size=32768, base=None, align=4, hardened=False):
    """(Re)create the default heap and return it; hardened=True: a hardened heap (see
    Heap). Bad arguments raise and keep the old
    heap, and so does a size that could not fit even without it. Otherwise the new arena
    is made beside the old one, or, when there is no room for both, in its place; if even
    that fails (the free memory is in pieces), MemoryError says the old heap is released,
    and the next call makes a default one."""
    global _heap
    check_heap_args(size, base, align, hardened)
    try:
        h = Heap(size, base, align, hardened)
    except MemoryError:
        gc = __import__("gc")
        gc.collect()
        free = gc.mem_free()
        if _heap is None:
            raise MemoryError("init: no room for a %d-byte arena in one piece (%d bytes "
                              "free)" % (size, free))
        if size > free + _heap.size:
            raise MemoryError("init: no room for a %d-byte arena (%d bytes free); the "
                              "current heap is kept" % (size, free))
        # Room once the old arena is gone: let it go (the hot paths must not point at it
        # meanwhile: their next call would ask heap() for a new one) and try again.
        _retarget(_FirstUse(), 0)
        _heap = None
        gc.collect()
        try:
            h = Heap(size, base, align, hardened)
        except MemoryError:
            raise MemoryError("init: no room for a %d-byte arena in one piece; the old "
                              "heap has been released" % size)
    # Before heap() can hand it out. A hardened heap's functions are Python: the hot paths
    # call them (addr 0).
    _retarget(h, 0 if h.hardened else h._addr)
    _heap = h
    return h


def heap():
    """The default heap (a 32 KiB one is created on first use)."""
    return _heap or init()


# The API on the default heap; see Heap for each function's contract. kmalloc, kfree,
# ksize, kzalloc, kcalloc, krealloc, memset and memcpy are the default heap's viper hot
# paths themselves (init() retargets them).
class _FirstUse:
    # The default heap's hot paths before it exists: their first call makes it.
    _addr = 0

    def __getattr__(self, name):  # kmalloc, kfree...: the default heap's, once made
        return getattr(heap(), name)


(kmalloc, kfree, ksize, kzalloc, kcalloc, krealloc, memset, memcpy,
 _retarget) = _bind(_FirstUse(), 0)


def allocate_kernel_stack(size):
    return heap().allocate_kernel_stack(size)


def kernel_stack_top(stack):
    return heap().kernel_stack_top(stack)


def free_kernel_stack(stack):
    return heap().free_kernel_stack(stack)


def mm_create():
    return heap().mm_create()


def mm_destroy(mm):
    return heap().mm_destroy(mm)


def mmap_region(mm, start, length, flags):
    return heap().mmap_region(mm, start, length, flags)


def munmap(mm, start, length):
    return heap().munmap(mm, start, length)


def mprotect(mm, start, length, flags):
    return heap().mprotect(mm, start, length, flags)


def find_vma(mm, addr):
    return heap().find_vma(mm, addr)


def brk(mm, new_end):
    return heap().brk(mm, new_end)


def access_ok(mm, addr, length, flags):
    return heap().access_ok(mm, addr, length, flags)


def vma_list(mm):
    return heap().vma_list(mm)


def mm_dump(mm):
    return heap().mm_dump(mm)


def heap_map(width=64):
    return heap().heap_map(width)


def mm_map(mm, width=64):
    return heap().mm_map(mm, width)


def watch(interval_ms=0, show=None):
    """Call show() (default: print heap_map()) after each call that changes the heap
    (kmalloc, kfree, mmap_region, init...: mapview.CHANGERS), at most once per
    interval_ms, until unwatch(). The names are rebound in kmem and in __main__, where
    `from kmem import *` put them, so a program needs no change. Its wrappers allocate:
    for teaching and debugging, not for timing."""
    from . import mapview
    mapview.watch(__import__(__name__), heap_map if show is None else show, interval_ms)


def unwatch():
    """Stop watch(): kmem's own functions again, in kmem and in __main__."""
    from . import mapview
    mapview.unwatch(__import__(__name__))


def view(ptr, n=None):
    return heap().view(ptr, n)


def addressof(ptr):
    return heap().addressof(ptr)


def vma(ptr):
    return heap().vma(ptr)


def mm(ptr):
    return heap().mm(ptr)


def stats():
    return heap().stats()


def check():
    return heap().check()


def walk():
    return heap().walk()


def debug(on=True):
    return heap().debug(on)


__all__ = (
    "VM_READ", "VM_WRITE", "VM_EXEC", "VM_SHARED", "VM_GROWSUP", "VM_GROWSDOWN",
    "PAGE_SIZE", "VM_AREA_STRUCT", "MM_STRUCT", "Heap", "CorruptionError",
    "init", "heap", "kmalloc", "kzalloc", "kcalloc", "krealloc", "kfree", "ksize",
    "allocate_kernel_stack", "kernel_stack_top", "free_kernel_stack",
    "mm_create", "mm_destroy", "mmap_region", "munmap", "mprotect", "find_vma",
    "brk", "access_ok", "vma_list", "mm_dump", "memset", "memcpy", "view",
    "addressof", "vma", "mm", "stats", "check", "walk", "debug", "heap_map", "mm_map",
    "watch", "unwatch",
)
