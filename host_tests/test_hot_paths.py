"""The hot paths (kmalloc, kfree, krealloc, ksize, kzalloc, kcalloc, memset, memcpy)
allocate nothing on the MicroPython heap: they run with the heap locked, where any
allocation raises MemoryError, and so do their NULL and out-of-memory results. That is
what makes kmem usable from an interrupt handler and keeps it from ever triggering a
garbage collection."""
import pytest

HEAP_LOCKED_LOOP = """
import micropython
h = heap()
def churn(rounds):
    for i in range(rounds):
        a = h.kmalloc(12)
        b = h.kmalloc(300 + i)
        h.kfree(a)
        b = h.krealloc(b, 900)      # grows in place into the freed neighbour...
        c = h.kmalloc(2000)
        b = h.krealloc(b, 3000)     # ...or moves
        n = h.ksize(b) + h.ksize(c)
        h.kfree(b)
        h.kfree(c)
        p = kmalloc(40)             # module-level API on the default heap
        kfree(p)
churn(2)                            # warm up: first calls may intern things
before = stats()
micropython.heap_lock()
try:
    churn(200)
    failure = None
except MemoryError as e:
    failure = str(e)
finally:
    micropython.heap_unlock()
"""


def test_hot_paths_run_with_the_python_heap_locked(target):
    if not target.eval("hasattr(__import__('micropython'), 'heap_lock')"):
        pytest.skip("this firmware has no micropython.heap_lock()")
    failure, allocs, live, ok = target.eval(
        "failure, stats()['allocs'] - before['allocs'], stats()['live_blocks'], check()",
        setup=HEAP_LOCKED_LOOP)
    assert failure is None
    # The loop really ran: 4 kmallocs a round, plus one per krealloc that moved.
    assert 200 * 4 <= allocs <= 200 * 6
    assert live == 0 and ok


EVERY_RESULT_LOCKED = """
import micropython
h = heap()
size = h.size
def one(kmalloc, kzalloc, kcalloc, krealloc, kfree, ksize, memset, memcpy):
    # Each hot path on its usual, NULL and out-of-memory results (no tuple or list is
    # built here: that would allocate).
    p = kmalloc(40)
    q = kzalloc(24)
    r = kcalloc(4, 6)
    memset(p, 0xAB, 40)
    memcpy(q, p, 24)
    out = ksize(p) + ksize(None)
    p = krealloc(p, 200)
    if kmalloc(0) is not None or kmalloc(size) is not None or kzalloc(size) is not None:
        out = -1000000
    if kcalloc(size, size) is not None or krealloc(p, size) is not None:  # p stays
        out = -1000000
    kfree(p)
    kfree(q)
    kfree(r)
    kfree(None)
    kfree(0)
    return out
# Heap methods bound beforehand (a bound method is made, and allocated, at each lookup).
methods = [h.kmalloc, h.kzalloc, h.kcalloc, h.krealloc, h.kfree, h.ksize, h.memset, h.memcpy]
m0, m1, m2, m3, m4, m5, m6, m7 = methods
def every_result():
    return (one(m0, m1, m2, m3, m4, m5, m6, m7) +
            one(kmalloc, kzalloc, kcalloc, krealloc, kfree, ksize, memset, memcpy))
every_result()                      # warm up
total = failure = None              # a new module global would allocate
micropython.heap_lock()
try:
    total = every_result()
    failure = None
except MemoryError as e:
    failure = 'allocated'
finally:
    micropython.heap_unlock()
"""


def test_every_hot_path_result_is_allocation_free(target):
    if not target.eval("hasattr(__import__('micropython'), 'heap_lock')"):
        pytest.skip("this firmware has no micropython.heap_lock()")
    failure, total, s, ok = target.eval("failure, total, stats(), check()",
                                        setup=EVERY_RESULT_LOCKED)
    assert failure is None
    assert total > 0                     # every NULL / out-of-memory result came back
    assert s["live_blocks"] == 0 and ok  # and everything was freed
    assert s["failures"] == 2 * 2 * 4    # 2 runs x 2 APIs x 4 out-of-memory calls, counted
