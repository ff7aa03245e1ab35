"""debug(True) prints the seed document's debug messages; debug off prints nothing."""
import re

from helpers import hex32, run_and_capture


def test_debug_messages_for_allocation_free_and_failure(target):
    printed, (p, q) = run_and_capture(target, '''
        debug(True)
        try:
            p = kmalloc(12)
            q = kmalloc(100)
            kfree(p)
            failed = kmalloc(stats()['size'])
            kfree(q)
        finally:
            debug(False)
        result = (p, q)
    ''')
    assert printed == [
        "Memory allocated: 12 bytes at " + hex32(p),
        "Memory allocated: 100 bytes at " + hex32(q),
        "Memory free requested at " + hex32(p),
        "Memory allocation failed",
        "Memory free requested at " + hex32(q),
    ]


def test_no_debug_output_by_default(target):
    printed, failed = run_and_capture(target, '''
        p = kmalloc(12)
        kfree(p)
        failed = kmalloc(stats()['size'])
        m = mm_create()
        mm_destroy(m)
        result = failed
    ''')
    assert failed is None
    assert printed == []


def test_no_debug_output_after_debug_is_switched_off(target):
    printed, (p, failed) = run_and_capture(target, '''
        debug(True)
        p = kmalloc(12)
        debug(False)
        kfree(p)
        q = kmalloc(12)
        failed = kmalloc(stats()['size'])
        kfree(q)
        result = (p, failed)
    ''')
    assert failed is None
    assert printed == ["Memory allocated: 12 bytes at " + hex32(p)]


def test_debug_messages_for_the_process_example(target):
    printed, (m, stack) = run_and_capture(target, '''
        debug(True)
        try:
            m = mm_create()
            stack = allocate_kernel_stack(4096)
            free_kernel_stack(stack)
            mm_destroy(m)
        finally:
            debug(False)
        result = (m, stack)
    ''')
    assert len(printed) == 4, printed
    assert printed[0] == "Memory allocated: 32 bytes at " + hex32(m)
    assert re.fullmatch(r"Memory allocated: \d+ bytes at " + hex32(stack), printed[1])
    assert int(printed[1].split()[2]) >= 4096
    assert printed[2:] == ["Memory free requested at " + hex32(stack),
                           "Memory free requested at " + hex32(m)]


def test_debug_addresses_are_printed_with_eight_hex_digits(target):
    printed, p = run_and_capture(target, '''
        init(stats()['size'], 0x00010000)    # low addresses: leading zeros must show
        debug(True)
        try:
            p = kmalloc(12)
            kfree(p)
        finally:
            debug(False)
        result = p
    ''')
    assert p < 0x10000000
    assert printed == ["Memory allocated: 12 bytes at 0x%08x" % p,
                       "Memory free requested at 0x%08x" % p]
