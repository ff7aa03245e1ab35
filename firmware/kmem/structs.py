# The seed's C types, flags and page size, as uctypes layouts.
# Both structs are little-endian with 32-bit fields, exactly the seed's
# layouts on a 32-bit kernel: pointer fields hold kernel addresses (0 = NULL).
import uctypes
from micropython import const

VM_READ = const(0x01)
VM_WRITE = const(0x02)
VM_EXEC = const(0x04)
VM_SHARED = const(0x08)
VM_GROWSUP = const(0x10)
VM_GROWSDOWN = const(0x20)
VM_FLAGS_MASK = const(0x3F)

PAGE_SIZE = const(4096)

# struct vm_area_struct: one contiguous region of an address space.
VM_AREA_STRUCT = {
    "start": 0 | uctypes.UINT32,
    "end": 4 | uctypes.UINT32,  # exclusive
    "flags": 8 | uctypes.UINT32,
    "next": 12 | uctypes.UINT32,  # struct vm_area_struct *
}
VMA_SIZE = const(16)

# struct mm_struct: a whole address space.
MM_STRUCT = {
    "mmap": 0 | uctypes.UINT32,  # struct vm_area_struct * (list head)
    "start_code": 4 | uctypes.UINT32,
    "end_code": 8 | uctypes.UINT32,
    "start_data": 12 | uctypes.UINT32,
    "end_data": 16 | uctypes.UINT32,
    "start_heap": 20 | uctypes.UINT32,
    "end_heap": 24 | uctypes.UINT32,
    "start_stack": 28 | uctypes.UINT32,
}
MM_SIZE = const(32)
