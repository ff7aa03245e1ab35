"""Differential fuzzing of the allocator: hypothesis draws sequences of kmalloc, kzalloc,
kfree, krealloc, memset and kernel stacks; each sequence runs on the target in one round
trip, and its answers are checked against a reference model kept here on the host.

The model knows every live block (its size and the byte pattern its contents must hold)
and what each call must do: a request fails (None) exactly when no free block is big
enough (the target reports its largest free block before each request: TLSF's good fit
and its fallback through the request's own class find a block whenever one fits); live
blocks never overlap; contents survive until freed (krealloc keeps the old bytes); kzalloc
zeroes; after the sequence check() is sound, and freeing everything gives back the heap's
initial largest free block. KMEM_FUZZ_EXAMPLES sets the number of sequences;
KMEM_FUZZ_LONG=1 adds the long run."""
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import run

EXAMPLES = int(os.environ.get("KMEM_FUZZ_EXAMPLES", "0")) or None


@pytest.fixture(scope="module")
def fuzz_count():
    count = {"ops": 0, "sequences": 0}
    yield count
    if count["sequences"]:
        print("\nallocator fuzz: %(ops)d operations in %(sequences)d sequences, all as "
              "the model says" % count)
SIZES = st.one_of(st.integers(0, 64), st.integers(65, 700), st.integers(701, 3000))
OP = st.one_of(
    st.tuples(st.just("malloc"), SIZES), st.tuples(st.just("zalloc"), SIZES),
    st.tuples(st.just("free"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("realloc"), st.integers(0, 0xFFFF), SIZES),
    st.tuples(st.just("memset"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("stack"), st.integers(1, 1500)),
    st.tuples(st.just("free_stack"), st.integers(0, 0xFFFF)),
)
SHORT = st.lists(OP, min_size=30, max_size=100)  # for every target (small answers)
LONG = st.lists(OP, min_size=150, max_size=400)  # many operations: the unix port


# Runs the ops on the target. Blocks are named by the index of the op that made them; an
# op on a block takes the i-th of the live blocks it may use (modulo their number), and
# says which it took, so that the model can follow.
RUNNER = '''
from kmem import tlsf
h = heap()
A = h.arena
def pattern(name):
    return (name * 37 + 11) & 0xFF
import micropython
@micropython.viper
def _same(a: ptr8, off: int, n: int, byte: int) -> bool:
    end = off + n
    while off < end:
        if a[off] != byte:
            return False
        off += 1
    return True
def intact(p, n, byte):
    view(p, n)  # inside one live block (raises otherwise)
    return _same(A, p - h.base, n, byte)
def largest():
    return tlsf.largest_free(A)
first_largest = largest()
blocks = {}  # name: (address, size asked, byte, stack?)
order = []   # live names, oldest first
out = []
KINDS = ('malloc', 'zalloc', 'free', 'realloc', 'memset', 'stack', 'free_stack')
for name in range(len(OPS) // 5):
    kind = KINDS[OPS[5 * name]]
    op = (kind, OPS[5 * name + 1] | OPS[5 * name + 2] << 8, OPS[5 * name + 3] | OPS[5 * name + 4] << 8)
    if kind in ('malloc', 'zalloc', 'stack'):
        size = op[1]
        room = largest()
        if kind == 'stack':
            p = allocate_kernel_stack(size)
            usable = kernel_stack_top(p) - p if p is not None else 0
        else:
            p = (kmalloc if kind == 'malloc' else kzalloc)(size)
            usable = ksize(p) if p is not None else 0
        zero = kind != 'zalloc' or p is None or intact(p, size, 0)
        if p is not None:
            blocks[name] = (p, size, pattern(name), kind == 'stack')
            order.append(name)
            if kind != 'stack' and size:
                memset(p, pattern(name), size)
        out.append((room, p, usable, zero))
        continue
    pool = [b for b in order if blocks[b][3] == (kind == 'free_stack')]
    if not pool:
        out.append(None)
        continue
    b = pool[op[1] % len(pool)]
    p, n, byte, stack = blocks[b]
    if kind in ('free', 'free_stack', 'memset'):
        ok = stack or intact(p, n, byte)
        if kind == 'memset':
            memset(p, pattern(name), n)
            blocks[b] = (p, n, pattern(name), stack)
        else:
            (free_kernel_stack if stack else kfree)(p)
            del blocks[b]
            order.remove(b)
        out.append((b, ok))
    else:  # realloc
        size = op[2]
        room = largest()
        old_usable = ksize(p)
        q = krealloc(p, size)
        ok = size == 0 or intact(q if q is not None else p, min(n, size), byte)
        if q is not None or size == 0:  # moved or resized, or freed (size 0)
            del blocks[b]
            order.remove(b)
        if q is not None:
            blocks[name] = (q, size, byte, False)
            order.append(name)
            if size > n:
                memset(q + n, byte, size - n)
        out.append((b, room, q, ksize(q) if q is not None else 0, ok, old_usable))
sound = check()
for b in list(order):
    p, n, byte, stack = blocks.pop(b)
    (free_kernel_stack if stack else kfree)(p)
result = (out, sound, first_largest, largest(), stats()['live_blocks'])
h = A = None  # a board keeps its globals: they must not keep this heap alive
'''


KINDS = ("malloc", "zalloc", "free", "realloc", "memset", "stack", "free_stack")


def encode(ops):
    # 5 bytes an op (kind, two 16-bit arguments): a small script for a small board.
    out = bytearray()
    for op in ops:
        a = op[1] if len(op) > 1 else 0
        b = op[2] if len(op) > 2 else 0
        out += bytes((KINDS.index(op[0]), a & 0xFF, a >> 8, b & 0xFF, b >> 8))
    return bytes(out)


def check_against_the_model(target, ops, fuzz_count):
    if (target.profile.get("heap_size") or 1 << 30) < 150000:
        pytest.skip("a sequence's answers need more MicroPython heap than this %d-byte "
                    "profile leaves (fuzzed on the 192 KiB targets)" % target.profile["heap_size"])
    out, sound, first, last, live_after = run(target, "OPS = %r\n" % encode(ops), RUNNER)
    fuzz_count["ops"] += len(ops)
    fuzz_count["sequences"] += 1
    live = {}  # name: (start, bytes it spans, stack?)
    for name, (op, got) in enumerate(zip(ops, out)):
        kind = op[0]
        if kind in ("malloc", "zalloc", "stack"):
            size = op[1]
            room, p, usable, zeroed = got
            if kind != "stack" and size == 0:
                assert p is None, (name, op)
                continue
            need = (size + 7 & ~7) + 8 if kind == "stack" else size
            assert (p is not None) == (room >= need), (name, op, room)
            if p is not None:
                assert usable >= size and zeroed, (name, op, usable)
                live[name] = (p, usable, kind == "stack")  # a stack: canary to top
        elif got is None:  # no block it could use
            assert not [b for b in live.values() if b[2] == (kind == "free_stack")], name
        elif kind in ("free", "free_stack", "memset"):
            b, ok = got
            pool = [n for n in sorted(live) if live[n][2] == (kind == "free_stack")]
            assert b == pool[op[1] % len(pool)], (name, "took another block", b)
            assert ok is True, (name, op, "contents changed while the block was live")
            if kind != "memset":
                del live[b]
        else:
            b, room, q, usable, kept, old_usable = got
            pool = [n for n in sorted(live) if not live[n][2]]
            assert b == pool[op[1] % len(pool)], (name, "took another block", b)
            assert kept is True, (name, op, "krealloc lost the old contents")
            size = op[2]
            if q is None:
                if size:  # failed: nothing fits in place or elsewhere
                    assert size > old_usable and size > room, (name, op, room, old_usable)
                else:
                    del live[b]  # krealloc(p, 0) frees
            else:
                assert usable >= size, (name, op, usable)
                del live[b]
                live[name] = (q, usable, False)
        spans = sorted(v[:2] for v in live.values())
        for (a, n), (c, _) in zip(spans, spans[1:]):
            assert a + n <= c, (name, "overlapping blocks", hex(a), n, hex(c))
    assert sound is True
    assert last == first and live_after == 0


@settings(max_examples=EXAMPLES or 25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(ops=SHORT)
def test_allocator_matches_its_model(target, ops, fuzz_count):
    check_against_the_model(target, ops, fuzz_count)


@settings(max_examples=EXAMPLES or 400, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(ops=LONG)
def test_allocator_matches_its_model_over_100000_operations(target, ops, fuzz_count):
    if not os.environ.get("KMEM_FUZZ_LONG"):
        pytest.skip("the long run (400 sequences of 150-400 operations, minutes on the "
                    "unix port) runs with KMEM_FUZZ_LONG=1")
    check_against_the_model(target, ops, fuzz_count)
