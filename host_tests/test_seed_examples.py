"""The two usage examples of the seed API document, translated line by line.

The C examples return ERROR after printing a message when an allocation fails;
the failure branches are kept and exercised by exhausting the heap first.
Lines marked "observe" are not part of the seed example: they only record what
the test checks afterwards.
"""
from helpers import run_and_capture

BASIC_EXAMPLE = '''
ERROR = -1
OK = 0
observed = {}

def basic_allocation():
    # 分配12字节内存
    buffer = kmalloc(12)
    if not buffer:
        print("Memory allocation failed")
        return ERROR

    # 使用内存
    memset(buffer, 0, 12)
    observed['buffer'] = buffer                      # observe
    observed['contents'] = contents(buffer, 12)      # observe

    # 释放内存
    kfree(buffer)
    return OK
'''

PROCESS_EXAMPLE = '''
ERROR = -1
OK = 0
observed = {}

def process_address_space():
    # 创建新进程的内存管理结构
    mm = mm_create()
    if not mm:
        print("Failed to create memory space")
        return ERROR

    # 为进程分配内核栈
    kernel_stack = allocate_kernel_stack(4096)
    if not kernel_stack:
        print("Failed to allocate kernel stack")
        mm_destroy(mm)
        return ERROR

    observed['mm'] = mm                                      # observe
    observed['kernel_stack'] = kernel_stack                  # observe
    observed['live_blocks'] = stats()['live_blocks']         # observe

    # 进程结束时释放资源
    free_kernel_stack(kernel_stack)
    mm_destroy(mm)
    return OK
'''


def test_basic_allocation_example_runs_and_returns_heap_to_baseline(target):
    printed, (rc, observed, before, after, ok) = run_and_capture(target, BASIC_EXAMPLE, '''
        # Leave dirty memory behind so that memset(buffer, 0, 12) has work to do.
        dirty = kmalloc(12)
        memset(dirty, 0xEE, 12)
        kfree(dirty)

        before = layout()
        rc = basic_allocation()
        result = (rc, observed, before, layout(), check())
    ''')
    assert printed == []
    assert rc == 0
    assert observed["buffer"] % 4 == 0
    assert observed["contents"] == bytes(12)
    assert after == before
    assert ok is True


def test_basic_allocation_example_failure_branch(target):
    printed, (rc, before, after, failures, ok) = run_and_capture(target, BASIC_EXAMPLE, '''
        hog = fill(8)                        # nothing left, not even for 12 bytes
        before = layout()
        failures = stats()['failures']
        rc = basic_allocation()
        result = (rc, before, layout(), stats()['failures'] - failures, check())
    ''')
    assert printed == ["Memory allocation failed"]
    assert rc == -1
    assert after == before
    assert failures == 1
    assert ok is True


def test_process_address_space_example_runs_and_returns_heap_to_baseline(target):
    printed, (rc, observed, before, after, ok) = run_and_capture(target, PROCESS_EXAMPLE, '''
        before = layout()
        rc = process_address_space()
        result = (rc, observed, before, layout(), check())
    ''')
    assert printed == []
    assert rc == 0
    assert observed["mm"] != observed["kernel_stack"]
    assert observed["kernel_stack"] % 8 == 0
    # While the process existed, its mm_struct and kernel stack were both live.
    assert observed["live_blocks"] == before["live_blocks"] + 2
    assert after == before
    assert ok is True


def test_process_address_space_example_when_mm_create_fails(target):
    printed, (rc, before, after, ok) = run_and_capture(target, PROCESS_EXAMPLE, '''
        hog = fill(8)
        before = layout()
        rc = process_address_space()
        result = (rc, before, layout(), check())
    ''')
    assert printed == ["Failed to create memory space"]
    assert rc == -1
    assert after == before
    assert ok is True


def test_process_address_space_example_when_kernel_stack_fails(target):
    printed, (rc, before, after, ok) = run_and_capture(target, PROCESS_EXAMPLE, '''
        hog = fill(64)
        kfree(hog.pop())                     # room for an mm_struct, not for a 4 KiB stack
        before = layout()
        rc = process_address_space()
        result = (rc, before, layout(), check())
    ''')
    assert printed == ["Failed to allocate kernel stack"]
    assert rc == -1
    # The failure branch destroyed the mm_struct it had created.
    assert after == before
    assert ok is True
