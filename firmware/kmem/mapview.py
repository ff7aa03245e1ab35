# kmem.mapview - pictures at the REPL: heap_map() draws the arena, mm_map() one address
# space, watch() draws again after each heap-changing call. Loaded on first use (import
# kmem does not need it); nothing here needs the host.
import time
from micropython import const
from . import tlsf
from .structs import PAGE_SIZE

# heap_map: one character per slice of the arena, for what holds most of its bytes.
HEAP_KEY = ".#SMv="
HEAP_NAMES = ("free", "kmalloc block", "kernel stack", "mm_struct", "vm_area_struct",
              "control area")
_CONTROL = const(5)
_ROWS = const(16)  # a screen: the slice grows (by powers of two) until the map fits
_W_FIRST_OFFSET = const(40)  # tlsf's FIRST and END control words, in bytes
_W_END_OFFSET = const(44)


def _width(width, fn):
    if not isinstance(width, int) or not 16 <= width <= 256:
        raise ValueError("%s: width must be an int 16..256, got %r" % (fn, width))


def _spans(h):
    # (start, end, what) in address order: the control area, every block (its header
    # included), the epilogue (control area again).
    first = tlsf.load32(h.arena, _W_FIRST_OFFSET)
    end = tlsf.load32(h.arena, _W_END_OFFSET)
    yield 0, first, _CONTROL
    for off, usable, kind, free in tlsf.blocks(h.arena):
        yield off - 4, off + usable, 0 if free else 1 + kind
    yield end, h.size, _CONTROL


def heap_map(h, width=64):
    """Print the arena as rows of `width` characters (HEAP_KEY: free, kmalloc block,
    kernel stack, mm_struct, vm_area_struct, control area; each the kind that holds most
    bytes of its slice), then the key and the figures."""
    _width(width, "heap_map")
    piece = 8
    while piece * width * _ROWS < h.size:
        piece *= 2
    key = HEAP_KEY.encode()
    counts = [0] * 6
    row = bytearray(width)
    col = 0
    at = 0  # start of the current slice
    for s, e, what in _spans(h):
        while s < e:
            take = min(e, at + piece) - s
            counts[what] += take
            s += take
            if s == at + piece or s == h.size:
                best = 0
                for i in range(1, 6):  # a tie goes to the block, not to free space
                    if counts[i] and counts[i] >= counts[best]:
                        best = i
                row[col] = key[best]
                col += 1
                for i in range(6):
                    counts[i] = 0
                if col == width or s == h.size:
                    print("%08x %s" % (h.base + at - (col - 1) * piece, row[:col].decode()))
                    col = 0
                at += piece
    print("  ".join("%s %s" % (HEAP_KEY[i], HEAP_NAMES[i]) for i in range(6))
          + "  (1 char = %d bytes)" % piece)
    st = h.stats()
    free = st["free"]
    print("used %d  free %d  largest free %d  free blocks %d  live blocks %d  "
          "fragmentation %.2f" % (st["used"], free, st["largest_free"], st["free_blocks"],
                                  st["live_blocks"],
                                  1 - st["largest_free"] / free if free else 0.0))


def _rights(f):
    # The strongest right of an area, one character: x, w, r, or - for none.
    return "x" if f & 4 else "w" if f & 2 else "r" if f & 1 else "-"


def mm_map(h, mm, width=64):
    """Print the address space mm as a bar from its lowest to its highest mapped address:
    a letter per area (A, B, ...; '.' unmapped) over its rights (x, w, r, -), then each
    area's letter with its /proc/<pid>/maps line (as mm_dump prints it)."""
    _width(width, "mm_map")
    areas = h.vma_list(mm)
    if not areas:
        print("(no areas)")
        return
    from .vm import maps_line
    lo, hi = areas[0][0], areas[-1][1]
    piece = PAGE_SIZE
    while piece * width < hi - lo:
        piece *= 2
    cols = (hi - lo + piece - 1) // piece
    names = bytearray(b"." * (cols + len(areas)))
    rights = bytearray(b" " * (cols + len(areas)))
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    used = 0  # columns drawn so far: every area gets one of its own, in order
    for i, (s, e, f) in enumerate(areas):
        a = max(used, (s - lo) // piece)
        used = max(a + 1, (e - lo + piece - 1) // piece)
        for c in range(a, used):
            names[c] = ord(letters[i] if i < len(letters) else "*")
            rights[c] = ord(_rights(f))
    names, rights = names[:used], rights[:used]
    print("%08x %s %08x" % (lo, names.decode(), hi))
    print("         %s" % rights.decode())
    for i, (s, e, f) in enumerate(areas):
        print("  %s %s" % (letters[i] if i < len(letters) else "*", maps_line(s, e, f)))
    print("(1 char = %d KiB)" % (piece // 1024))


# watch(): kmem's heap-changing functions, wrapped, show the heap after each call.
CHANGERS = ("kmalloc", "kzalloc", "kcalloc", "krealloc", "kfree", "allocate_kernel_stack",
            "free_kernel_stack", "mm_create", "mm_destroy", "mmap_region", "munmap",
            "mprotect", "brk", "init")
_originals = {}  # name: kmem's own function, while watch() is on


def _wrapped(f, show, interval_ms, last):
    def call(*args, **kwargs):
        r = f(*args, **kwargs)
        now = time.ticks_ms()
        if time.ticks_diff(now, last[0]) >= interval_ms:
            last[0] = now
            show()
        return r
    return call


def _rebind(kmem, values):
    # In kmem and in __main__ (the REPL's or a script's names, from `from kmem import *`),
    # wherever the name is still what kmem had.
    import __main__  # pyright: ignore[reportMissingImports]  (MicroPython has it)
    for name, new in values.items():
        old = getattr(kmem, name)
        setattr(kmem, name, new)
        if getattr(__main__, name, None) is old:
            setattr(__main__, name, new)


def watch(kmem, show, interval_ms):
    if type(interval_ms) is not int or interval_ms < 0:  # (not a bool either)
        raise ValueError("watch: interval_ms must be an int >= 0, got %r" % (interval_ms,))
    if not callable(show):
        raise TypeError("watch: show must be callable, not %s" % type(show).__name__)
    unwatch(kmem)
    last = [time.ticks_ms()]
    for name in CHANGERS:
        _originals[name] = getattr(kmem, name)
    _rebind(kmem, {name: _wrapped(f, show, interval_ms, last) for name, f in _originals.items()})


def unwatch(kmem):
    _rebind(kmem, _originals)
    _originals.clear()
