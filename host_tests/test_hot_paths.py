"""The hot paths (kmalloc, kfree, krealloc, ksize) allocate nothing on the
MicroPython heap: they run with the heap locked, where any allocation raises
MemoryError. That is what makes kmem usable from an interrupt handler and
keeps it from ever triggering a garbage collection."""
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
