# kmem.harden - the checks of a hardened heap: Heap(..., hardened=True), init(..., hardened=True).
#
# A hardened heap's kmalloc, kfree, ksize, kzalloc, kcalloc, krealloc, memset and memcpy
# are the Guard's Python functions around the viper hot paths, which still do the
# allocator work (and their own header and link checks). What a hardened heap adds:
#
#   live block payload: [ n bytes asked for | red zone: REDZONE bytes (>= 1) | seal ]
#   seal (the payload's last word) = n * odd ^ mix(header) ^ secret (mod 2**30)
#   free block: header, next, prev, then POISON bytes up to its boundary tag
#
# - Red zone: a write past the n bytes changes the red zone or the seal; kfree,
#   krealloc, ksize and check() verify both (a 1-byte overrun is reported).
# - Seal: a flipped bit in the header (its size or its kind) makes the seal decode to a
#   size that does not fit the block; every call that takes the block verifies it, so a
#   kmalloc block whose kind bits turn it into an "mm_struct" is reported, not used.
# - Poison: kfree fills the freed bytes with POISON; kmalloc verifies them before it hands
#   the block out again and check() verifies every free block, so a write through a
#   dangling pointer (use after free) is reported.
# - Links: the free-list links are stored XOR a per-heap secret (as FreeRTOS's heap
#   protector does), so a forged or scribbled link decodes to an address the hot paths'
#   link checks refuse.
# Nothing is repaired: each fault raises CorruptionError naming the address and what was
# damaged. ksize() is the n asked for, and memset, memcpy and view() stop there.
import micropython
from micropython import const
from . import tlsf
from .tlsf import KIND_PLAIN, CorruptionError

POISON = const(0x6B)  # Linux's POISON_FREE
REDZONE = const(0xCC)  # Linux's SLUB_RED_ACTIVE
TAIL = const(5)  # bytes a block needs beyond the n asked for: >= 1 of red zone and the seal
_SIZE_MASK = const(0x0FFFFFF8)
_FREE = const(1)
_PREV_FREE = const(2)
_MIX = const(0x2545F491)  # odd: every header bit changes the seal's high bits
_NMUL = const(0x1F3D5B79)  # odd, so n * _NMUL mod 2**30 is undone by * _NINV
_NINV = const(0x07331EC9)  # _NMUL's inverse mod 2**30


@micropython.viper
def _mix(a: ptr32, off: int, n: int, secret: int) -> int:
    # The seal of the live block at payload off holding n bytes (30 bits, so the same on
    # every word size): n times an odd constant, so that a flipped bit of the seal (or of
    # the header, which reaches bits 26..29) decodes to a size far too big for the block.
    # PREV_FREE is left out: it is the block before's to change.
    return ((n * _NMUL) ^ (((a[(off >> 2) - 1] & -3) * _MIX) >> 2) ^ secret) & 0x3FFFFFFF


@micropython.viper
def _seal(a: ptr32, off: int, n: int, secret: int):
    # Write the red zone after n bytes and the seal into the block's last word.
    end = off + (a[(off >> 2) - 1] & _SIZE_MASK) - 4 - 4  # the seal's offset
    b = ptr8(a)
    i = off + n
    while i < end:
        b[i] = REDZONE
        i += 1
    a[end >> 2] = int(_mix(a, off, n, secret))


@micropython.viper
def _unseal(a: ptr32, off: int, secret: int, limit: int) -> int:
    # n of the live block at payload off; -1: the seal does not decode to a size that fits
    # (header or seal damaged); -2 - k: the red zone is damaged at byte k of the payload.
    # limit: the arena's length (a damaged size is not followed past it).
    size = a[(off >> 2) - 1] & _SIZE_MASK
    if size < 16 or off - 4 + size > limit:
        return -1
    end = off + size - 4 - 4
    seal = a[end >> 2]
    if seal >> 30:  # a seal has 30 bits
        return -1
    n = ((seal ^ int(_mix(a, off, 0, secret))) * _NINV) & 0x3FFFFFFF  # seal: n * _NMUL ^ ...
    if n > end - off - 1:
        return -1
    b = ptr8(a)
    i = off + n
    while i < end:
        if b[i] != REDZONE:
            return -2 - (i - off)
        i += 1
    return n


@micropython.viper
def _handed_out(a: ptr32, off: int) -> int:
    # The block at payload off, just taken from a free block by the kmalloc hot path: the
    # offset of the first of its freed bytes (past the links it had, up to its boundary
    # tag, or its last word too when it was split from a bigger block) that is not POISON,
    # else -1. The hot path has checked the header.
    end = off + (a[(off >> 2) - 1] & _SIZE_MASK) - 4  # the next block's header
    if (a[end >> 2] & _FREE) == 0:  # not split: its last word was the boundary tag
        end -= 4
    w = 0x6B6B
    w |= w << 16  # four POISON bytes, built at run time (as a constant: a big int)
    i = off + 8  # word-aligned, as end is
    while i < end:
        if a[i >> 2] != w:
            b = ptr8(a)
            while b[i] == POISON:
                i += 1
            return i
        i += 4
    return -1


@micropython.viper
def _first_unlike(a: ptr8, start: int, end: int, byte: int) -> int:
    # Offset of the first byte in [start, end) that is not byte, else -1.
    while start < end:
        if a[start] != byte:
            return start
        start += 1
    return -1


class Guard:
    """The hardened functions of one heap (see the module comment)."""

    def __init__(self, h, secret):
        self.h = h
        self.secret = secret & 0x3FFFFFFF
        # The viper hot paths do the allocator work; the Guard's functions take their names.
        self._kmalloc, self._kfree, self._ksize, self._krealloc = (
            h.kmalloc, h.kfree, h.ksize, h.krealloc)
        h.kmalloc, h.kfree, h.ksize, h.krealloc = (
            self.kmalloc, self.kfree, self.ksize, self.krealloc)
        h.kzalloc, h.kcalloc = self.kzalloc, h._kcalloc_slow  # checks, then self.kzalloc
        h.memset, h.memcpy = h._memset_checked, h._memcpy_checked  # bounded by usable()
        for off, size, _, free in tlsf.blocks(h.arena):
            if free:
                tlsf.fill(h.arena, off + 8, POISON, size - 12)

    def _debug(self):
        # The arena's flag: Heap._quietly clears it when the caller prints the message.
        return tlsf.load32(self.h.arena, tlsf.W_FLAGS_OFFSET) & tlsf.FLAG_DEBUG

    def _fault(self, off, what):
        raise CorruptionError("block at %s: %s" % (_hex(self.h.base + off - 4), what))

    def usable(self, off):
        """The n asked for of the live block at payload offset off, verified."""
        n = _unseal(self.h.arena, off, self.secret, self.h.size)
        if n == -1:
            self._fault(off, "seal overwritten (the header's size or kind changed, or "
                        "the block's last word)")
        if n < 0:
            self._fault(off, "red zone overwritten at %s: an overrun past the bytes asked "
                        "for" % _hex(self.h.base + off - 2 - n))
        return n

    def seal(self, ptr, n):
        _seal(self.h.arena, ptr - self.h.base, n, self.secret)

    def _poisoned(self, off, start, end):
        # Verify POISON in [start, end) of the arena (freed bytes of the block at off).
        bad = _first_unlike(self.h.arena, start, end, POISON)
        if bad >= 0:
            self._fault(off, "freed memory written at %s (use after free)"
                        % _hex(self.h.base + bad))

    def kmalloc(self, size):
        h = self.h
        if type(size) is not int or size <= 0 or size >= h.size:
            return self._kmalloc(size)  # its errors, None for 0, a failure when too big
        # (Heap._quietly only when debug is on: it costs more than the hot path itself.)
        p = h._quietly(self._kmalloc, size + TAIL) if h._debug else self._kmalloc(size + TAIL)
        if p is None:
            return h._oom()
        off = p - h.base
        bad = _handed_out(h.arena, off)
        if bad >= 0:
            self._release(off, True)  # not handed out; the damage stays for check()
            self._fault(off, "freed memory written at %s (use after free)"
                        % _hex(h.base + bad))
        _seal(h.arena, off, size, self.secret)
        if h._debug and self._debug():
            print("Memory allocated: %d bytes at 0x%08x" % (size, p))
        return p

    def kzalloc(self, size):
        if type(size) is not int or size < 0:
            return self.h._kmalloc_slow(size, "kzalloc")  # raises, naming kzalloc
        p = self.kmalloc(size)
        if p is not None:
            tlsf.fill(self.h.arena, p - self.h.base, 0, size)
        return p

    def _plain(self, ptr):
        # True if ptr starts a live kmalloc block (its seal verified); False: the hot path
        # is to answer (NULL, or the error; a block of another kind has its seal verified
        # first, so a flipped kind is reported as corruption).
        if type(ptr) is not int:
            return False
        h = self.h
        off = ptr - h.base
        kind = tlsf.kind_of(h.arena, off) if 0 <= off < h.size else -1
        if kind >= 0 and _unseal(h.arena, off, self.secret, h.size) < 0:
            self.usable(off)  # raises, saying what is damaged
        return kind == KIND_PLAIN

    def kfree(self, ptr):
        if not self._plain(ptr):
            return self._kfree(ptr)  # NULL, or the error (after the debug line)
        if self.h._debug and self._debug():
            print("Memory free requested at 0x%08x" % ptr)
        self._release(ptr - self.h.base, False)

    def _release(self, off, keep):
        # Free the block at payload off and poison what is no block's metadata once it has
        # merged with its free neighbours: from the one before's boundary tag (or past this
        # block's links) to the next one's links (or this block's boundary tag). keep: all
        # but this block's own freed bytes (damaged ones, which check() is to find).
        h = self.h
        b = off - 4
        hdr = tlsf.load32(h.arena, b)
        size = hdr & _SIZE_MASK
        lo = b - 4 if hdr & _PREV_FREE else b + 12
        hi = b + size + 12 if tlsf.load32(h.arena, b + size) & _FREE else b + size - 4
        if h._debug:
            h._quietly(self._kfree, h.base + off)
        else:
            self._kfree(h.base + off)
        if keep:
            tlsf.fill(h.arena, lo, POISON, b + 12 - lo)
            lo = b + size - 4
        tlsf.fill(h.arena, lo, POISON, hi - lo)

    def ksize(self, ptr):
        if not self._plain(ptr):
            return self._ksize(ptr)  # 0 for NULL, or the error
        return self.usable(ptr - self.h.base)

    def krealloc(self, ptr, size):
        h = self.h
        if ptr is None or ptr == 0 or type(size) is not int or size <= 0:
            return self._krealloc(ptr, size)  # NULL, size 0, or the error
        h._expect(ptr, KIND_PLAIN, "krealloc")  # verifies the seal too
        if size >= h.size:
            return self.kmalloc(size)  # fails (and is counted), the block untouched
        off = ptr - h.base
        n = self.usable(off)
        room = tlsf.usable(h.arena, off)
        if size + TAIL <= room:  # fits: stays, as Linux's krealloc does
            _seal(h.arena, off, size, self.secret)
            return ptr
        if (h._quietly(self._krealloc, ptr, size + TAIL) if h._debug
                else self._krealloc(ptr, size + TAIL)) is not None:
            # Grown in place into the free block after it: its freed bytes must be intact.
            self._poisoned(off, off + room + 12, off + tlsf.usable(h.arena, off) - 4)
            _seal(h.arena, off, size, self.secret)
            return ptr
        new = self.kmalloc(size)  # Heap._krealloc_move leaves the move to us
        if new is not None:
            tlsf.move(h.arena, new - h.base, off, n)
            self.kfree(ptr)
        return new

    def check(self):
        """Verify every live block's seal and red zone and every free block's poison."""
        for off, size, _, free in tlsf.blocks(self.h.arena):
            if free:
                self._poisoned(off, off + 8, off + size - 4)
            else:
                self.usable(off)
        return True


def _hex(v):
    return "0x%08x" % v


def secret():
    """A per-heap secret: random where the port has os.urandom, else from the clock."""
    try:
        import os
        r = os.urandom(4)
        return r[0] | r[1] << 8 | r[2] << 16 | (r[3] & 0x3F) << 24
    except Exception:
        import time
        # A ticks value is an int; the stubs make it opaque (for ticks_diff) and so reject *.
        return (time.ticks_us() * 0x5BD1E995) & 0x3FFFFFFF  # pyright: ignore[reportOperatorIssue]
