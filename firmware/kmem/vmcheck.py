# kmem.vmcheck - check() for the address spaces, loaded by check() only when the heap holds
# an mm_struct (nothing else needs it, and a small board's heap is better off without it).
from .tlsf import KIND_MM, KIND_VMA, CorruptionError, blocks, counters
from .vm import _areas


def check_lists(h):
    """check() for the address spaces: every mm_struct's list is sound (links, order,
    alignment, bounded) and every vm_area_struct is in exactly one list."""
    seen = set()
    vmas = 0
    for off, size, kind, free in blocks(h.arena):
        if free:
            continue
        if kind == KIND_VMA:
            vmas += 1
        elif kind == KIND_MM:
            mm = h.base + off
            h._vm_steps = 8 * (counters(h.arena)[2] + 1)
            for v, s, e, f in _areas(h, mm):
                if v in seen:
                    raise CorruptionError("vm_area_struct at 0x%08x is in two lists "
                                          "(again in the mm_struct at 0x%08x)" % (v, mm))
                seen.add(v)
    if vmas != len(seen):
        raise CorruptionError("%d vm_area_structs are in no mm_struct's list"
                              % (vmas - len(seen)))
    return True
