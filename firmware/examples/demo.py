# kmem demo: the seed document's two usage examples, run verbatim on kmem
# with the debug messages on, then a small process address space.
# uctypes.struct fields are set by name; the board stubs type only their reading:
# pyright: reportAttributeAccessIssue=false
import kmem
from kmem import *

ERROR = -1


def basic_allocation():
    # 分配12字节内存 (allocate 12 bytes)
    buffer = kmalloc(12)
    if not buffer:
        print("Memory allocation failed")
        return ERROR
    # 使用内存 (use the memory)
    memset(buffer, 0, 12)
    # 释放内存 (free it)
    kfree(buffer)
    return 0


def process_address_space():
    # 创建新进程的内存管理结构 (a new process's mm_struct)
    mm = mm_create()
    if not mm:
        print("Failed to create memory space")
        return ERROR
    # 为进程分配内核栈 (its kernel stack)
    kernel_stack = allocate_kernel_stack(4096)
    if not kernel_stack:
        print("Failed to allocate kernel stack")
        mm_destroy(mm)
        return ERROR
    # 进程结束时释放资源 (release everything when the process exits)
    free_kernel_stack(kernel_stack)
    mm_destroy(mm)
    return 0


def show_a_process():
    # An ELF-like layout: text, data, a brk heap and a stack that grows down.
    mm_ptr = mm_create()
    mmap_region(mm_ptr, 0x08048000, 0x1000, VM_READ | VM_EXEC)
    mmap_region(mm_ptr, 0x08049000, 0x1000, VM_READ | VM_WRITE)
    m = mm(mm_ptr)
    m.start_code, m.end_code = 0x08048000, 0x08049000
    m.start_data, m.end_data = 0x08049000, 0x0804A000
    m.start_heap = m.end_heap = 0x0804A000
    brk(mm_ptr, 0x0804C800)
    mmap_region(mm_ptr, 0xBFFFE000, 0x2000, VM_READ | VM_WRITE | VM_GROWSDOWN)
    m.start_stack = 0xC0000000
    print("\n/proc/1/maps:")
    mm_dump(mm_ptr)
    print("access_ok(heap, 100 bytes, VM_WRITE):",
          access_ok(mm_ptr, 0x0804A000, 100, VM_WRITE))
    print("access_ok(text, 4 bytes, VM_WRITE):",
          access_ok(mm_ptr, 0x08048000, 4, VM_WRITE))
    return mm_ptr


print("kmem %s: %r" % (kmem.__version__, heap()))
debug(True)
print("\n-- example 1: kmalloc / memset / kfree")
print("result:", basic_allocation())
print("\n-- example 2: mm_create / allocate_kernel_stack / free / mm_destroy")
print("result:", process_address_space())
debug(False)
mm_ptr = show_a_process()
print("\nstats():")
for key, value in sorted(stats().items()):
    print("  %-12s %d" % (key, value))
print("check():", check())
mm_destroy(mm_ptr)
