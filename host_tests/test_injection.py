"""Corruption injection: faults are injected on purpose into a heap in use, in the default
and in the hardened mode, and a fixed workload then runs on it (ksize, kfree, kmalloc,
krealloc, the stack, the address space, check()). Every fault of a kind the mode covers
must raise CorruptionError before any wrong address is handed out (a block outside the
block area, or overlapping one that is live); no fault may crash or hang the board.
`pytest -s` prints detected / injected per mode and kind."""
import pytest

from helpers import run

# Kinds of fault, and the modes that cover each (CorruptionError, always).
COVERED = {
    "overrun": ("hardened",),            # 1-16 bytes past ksize()
    "use after free": ("hardened",),     # 1-4 bytes into a freed block
    "header bit flip": ("hardened",),    # one bit of any block's header
    "free-list link": ("default", "hardened"),  # a free block's next or prev
    "boundary tag": ("default", "hardened"),    # a free block's last word
    "stack canary": ("default", "hardened"),
    "vma list": ("default", "hardened"),        # a loop, or two areas overlapping
    "scribble": (),                              # 1-8 random bytes anywhere in the blocks
}
KINDS = list(COVERED)

RUNNER = '''
from kmem import tlsf
import gc, struct
init(1024)  # the prelude's arena is not used: its room goes to the heaps below
SEED = [1]
def rnd(n):  # a small LCG: the same faults on every board
    SEED[0] = (SEED[0] * 1103515245 + 12345) & 0x7FFFFFFF
    return (SEED[0] >> 8) % n
def poke(h, off, b):
    h.arena[off] = b
def flip_byte(h, off):
    h.arena[off] ^= 1 + rnd(255)

def setup(hardened):
    h = Heap(8192, hardened=hardened)
    live, freed = [], []
    for i in range(14):
        n = 8 + rnd(200)
        live.append((h.kmalloc(n), n))
    s = h.allocate_kernel_stack(128)
    m = h.mm_create()
    for start in (0x10000, 0x20000, 0x30000):
        h.mmap_region(m, start, 0x1000, VM_READ | VM_WRITE)
    for i in (1, 4, 7, 10, 12):  # free blocks between live ones
        p, n = live[i]
        h.kfree(p)
        freed.append((p, n))
    live = [b for i, b in enumerate(live) if i not in (1, 4, 7, 10, 12)]
    return h, live, freed, s, m

def free_blocks(h):
    return [(off - 4, size + 4) for off, size, kind, free in tlsf.blocks(h.arena) if free]

def inject(kind, h, live, freed, s, m):
    base = h.base
    if kind == 'overrun':
        p, n = live[rnd(len(live))]
        at = p - base + h.ksize(p)
        for i in range(1 + rnd(16)):
            flip_byte(h, at + i)
    elif kind == 'use after free':
        p, n = freed[rnd(len(freed))]
        at = p - base + rnd(n)
        for i in range(1 + rnd(4)):
            flip_byte(h, at + i)
    elif kind == 'header bit flip':
        heads = [off - 4 for off, size, k, free in tlsf.blocks(h.arena)]
        at = heads[rnd(len(heads))] + rnd(4)
        h.arena[at] ^= 1 << rnd(8)
    elif kind == 'free-list link':
        blocks = free_blocks(h)
        b, size = blocks[rnd(len(blocks))]
        at = b + 4 + 4 * rnd(2)
        was = struct.unpack_from('<I', h.arena, at)[0]
        secret = struct.unpack_from('<I', h.arena, 128)[0]
        others = [o for o, n in blocks if o ^ secret != was]
        if rnd(2) and others:  # a plausible link: another free block, encoded
            struct.pack_into('<I', h.arena, at, others[rnd(len(others))] ^ secret)
        else:
            flip_byte(h, at + rnd(4))
    elif kind == 'boundary tag':
        b, size = free_blocks(h)[rnd(len(free_blocks(h)))]
        flip_byte(h, b + size - 4 + rnd(4))
    elif kind == 'stack canary':
        flip_byte(h, s - base + rnd(8))
    elif kind == 'vma list':
        v = h.mm(m).mmap
        w = h.vma(v).next
        if rnd(2):
            h.vma(w).next = v  # a loop
        else:
            h.vma(v).end = h.vma(w).start + 0x1000  # overlaps the next area
    else:  # scribble
        first = struct.unpack_from('<I', h.arena, 40)[0]
        at = first + rnd(len(h.arena) - first - 16)
        for i in range(1 + rnd(8)):
            flip_byte(h, at + i)

def workload(h, live, s, m, spans):
    # Returns where the fault was found ('ksize', 'kfree', ..., 'check'), 'refused' (an
    # error that is not CorruptionError), 'wrong' (a bad address handed out) or 'missed'.
    # spans: the live blocks before the fault, (address, usable bytes).
    first = h.base + struct.unpack_from('<I', h.arena, 40)[0]
    end = h.base + struct.unpack_from('<I', h.arena, 44)[0]
    step = ['ksize']
    def handed(r, n):
        if r is None:
            return True
        if r < first + 4 or r + n > end:
            return False
        for a, k in spans:
            if r < a + k and a < r + n:
                return False
        spans.append((r, n))
        return True
    def gone(p):
        for i, (a, k) in enumerate(spans):
            if a == p:
                del spans[i]
                return
    try:
        for p, n in live:
            h.ksize(p)
        step[0] = 'kfree'
        for p, n in live[::2]:
            h.kfree(p)
            gone(p)
        step[0] = 'kmalloc'
        for n in (8, 24, 40, 100, 200, 500, 1000):
            if not handed(h.kmalloc(n), n):
                return 'wrong'
        step[0] = 'krealloc'
        for p, n in live[1::2]:
            gone(p)
            q = h.krealloc(p, n + 60)
            if q is None:
                spans.append((p, n))
            elif not handed(q, n + 60):
                return 'wrong'
        step[0] = 'free_kernel_stack'
        h.free_kernel_stack(s)
        gone(s)
        step[0] = 'vm calls'
        h.find_vma(m, 0x20000)
        h.mprotect(m, 0x20000, 0x1000, VM_READ)
        h.munmap(m, 0x10000, 0x1000)
        step[0] = 'check'
        h.check()
    except CorruptionError:
        return step[0]
    except Exception:
        return 'refused'
    return 'missed'

result = []
for kind, hardened, seed in FAULTS:
    SEED[0] = seed
    h = None
    gc.collect()
    h, live, freed, s, m = setup(hardened)
    spans = [(a, n) for a, n, used in h.walk() if used]
    inject(kind, h, live, freed, s, m)
    result.append(workload(h, live, s, m, spans))
h = None
'''


@pytest.fixture(scope="module")
def tally():
    counts = {}
    yield counts
    for mode in ("default", "hardened"):
        rows = [(kind, counts.get((mode, kind), [])) for kind in KINDS]
        total = sum(len(r) for _, r in rows)
        if not total:
            continue
        found = sum(1 for _, r in rows for o in r if o not in ("missed", "wrong", "refused"))
        print("\nfault injection, %s heap: %d / %d detected" % (mode, found, total))
        for kind, r in rows:
            print("  %-16s %3d / %3d detected (%s)%s" % (
                kind, sum(1 for o in r if o not in ("missed", "wrong", "refused")), len(r),
                ", ".join("%s %d" % (o, r.count(o)) for o in sorted(set(r))),
                "" if mode in COVERED[kind] else "  [not covered by this mode]"))


@pytest.mark.parametrize("mode", ["default", "hardened"])
@pytest.mark.parametrize("kind", KINDS)
def test_injected_faults_are_detected_before_a_wrong_address_is_handed_out(
        target, kind, mode, tally):
    count = 24 if type(target).__name__ == "UnixTarget" else 4
    faults = [(kind, mode == "hardened", 1000 * KINDS.index(kind) + i + 1)
              for i in range(count)]
    outcomes = []
    for i in range(0, count, 4):  # small answers, small scripts: a batch of 4
        outcomes += run(target, "FAULTS = %r\n" % faults[i:i + 4], RUNNER)
    tally[(mode, kind)] = outcomes
    if mode in COVERED[kind]:
        assert not [o for o in outcomes if o in ("missed", "wrong", "refused")], outcomes
