"""Shared pieces for the kmem host tests.

Every test runs MicroPython code on a target through the ``target`` fixture.
Snippets are self-contained: each starts after the harness prelude
(``import kmem; from kmem import *; init(arena_size)``).  The target-side
helper definitions in TARGET_HELPERS are pasted in front of every snippet so
a test needs only one round-trip.
"""
import ast
import textwrap

from kmemhost.targets import TargetError  # noqa: F401  (re-exported for the tests)

# Flag values from the seed API document (not from the implementation).
VM_READ = 0x01
VM_WRITE = 0x02
VM_EXEC = 0x04
VM_SHARED = 0x08
VM_GROWSUP = 0x10
VM_GROWSDOWN = 0x20
PAGE_SIZE = 4096

# Definitions available to every snippet (MicroPython side).
TARGET_HELPERS = '''
import errno
import uctypes

def raised(f, *args):
    # (exception type name, message) raised by f(*args), or None if it returned.
    try:
        f(*args)
    except Exception as e:
        return (type(e).__name__, str(e))
    return None

def errno_of(f, *args):
    # errno of the OSError raised by f(*args), or None if it returned.
    try:
        f(*args)
    except OSError as e:
        return e.errno
    return None

def fill(size, h=None):
    # Allocate blocks of `size` bytes until the heap says no; return them all.
    alloc = kmalloc if h is None else h.kmalloc
    blocks = []
    while True:
        p = alloc(size)
        if p is None:
            return blocks
        blocks.append(p)

LAYOUT_KEYS = ('size', 'used', 'free', 'largest_free', 'free_blocks',
               'live_blocks', 'overhead')

def layout(h=None):
    # The part of stats() that describes the heap's shape (no event counters).
    s = stats() if h is None else h.stats()
    return dict((k, s[k]) for k in LAYOUT_KEYS)

def contents(p, n, h=None):
    return bytes((view if h is None else h.view)(p, n))

def scribble(p, n, seed=1, h=None):
    # Write a recognisable byte pattern into [p, p+n) and return it.
    v = (view if h is None else h.view)(p, n)
    for i in range(n):
        v[i] = (seed + 7 * i) & 0xFF
    return bytes(v)
'''

RESULT_MARKER = "@@result "


def _snippet(parts):
    # Each part (a shared fragment or a test's own code) is dedented on its own.
    return "\n".join([TARGET_HELPERS] + [textwrap.dedent(p) for p in parts])


def run(target, *code, expr="result", timeout=None):
    """Run the code parts on the target and return the value of `expr` afterwards."""
    if timeout is None:
        return target.eval(expr, setup=_snippet(code))
    return target.eval(expr, setup=_snippet(code), timeout=timeout)


def output(target, *code):
    """Run the code parts on the target and return the lines they printed."""
    return target.exec(_snippet(code)).splitlines()


def run_and_capture(target, *code):
    """Run the code parts; return (lines printed, value of `result`)."""
    out = target.exec(_snippet(code) + "\nprint(%r + repr(result))\n" % RESULT_MARKER)
    lines = out.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith(RESULT_MARKER)]
    assert marks, "snippet printed no result:\n" + out
    i = marks[-1]
    return lines[:i], ast.literal_eval(lines[i][len(RESULT_MARKER):])


def hex32(addr):
    """How the kernel prints an address: 0x%08x."""
    return "0x%08x" % addr
