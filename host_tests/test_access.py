"""access_ok: every byte of [addr, addr+length) mapped with all requested flags."""
from helpers import run

LAYOUT = '''
m = mm_create()
mmap_region(m, 0x1000, 0x1000, VM_READ | VM_WRITE)       # A [0x1000, 0x2000) rw
mmap_region(m, 0x2000, 0x1000, VM_READ)                  # B [0x2000, 0x3000) r, right after A
mmap_region(m, 0x5000, 0x2000, VM_READ | VM_EXEC)        # C [0x5000, 0x7000) rx, after a gap
'''


def check_access(target, probes):
    """Evaluate access_ok for each (addr, length, flags-expression) on the LAYOUT above."""
    calls = ", ".join("access_ok(m, %#x, %#x, %s)" % p for p in probes)
    return run(target, LAYOUT, "result = [%s]\n" % calls)


def test_access_inside_one_area(target):
    assert check_access(target, [
        (0x1000, 0x1000, "VM_READ"),
        (0x1000, 0x1000, "VM_READ | VM_WRITE"),
        (0x1FFF, 1, "VM_WRITE"),
        (0x5800, 0x100, "VM_EXEC"),
    ]) == [True, True, True, True]


def test_access_straddling_two_adjacent_areas(target):
    assert check_access(target, [
        (0x1800, 0x1000, "VM_READ"),        # both areas readable
        (0x1800, 0x1000, "VM_WRITE"),       # B is not writable
        (0x1000, 0x2000, "VM_READ"),        # exactly A + B
        (0x1000, 0x2001, "VM_READ"),        # one byte into the gap
    ]) == [True, False, True, False]


def test_access_touching_a_gap_is_refused(target):
    assert check_access(target, [
        (0x2800, 0x1000, "VM_READ"),        # runs from B into the gap
        (0x3000, 1, "VM_READ"),             # inside the gap
        (0x4FFF, 2, "VM_READ"),             # from the gap into C
        (0x6FFF, 2, "VM_READ"),             # off the end of C
        (0x0FFF, 1, "VM_READ"),             # just below A
        (0x3000, 1, "0"),                   # unmapped even when no permission is asked
    ]) == [False, False, False, False, False, False]


def test_access_with_a_missing_permission_is_refused(target):
    assert check_access(target, [
        (0x1000, 0x10, "VM_EXEC"),
        (0x2000, 0x10, "VM_WRITE"),
        (0x5000, 0x10, "VM_WRITE"),
        (0x5000, 0x10, "VM_READ | VM_EXEC"),
        (0x5000, 0x10, "VM_SHARED"),
        (0x1000, 0x10, "0"),
    ]) == [False, False, False, True, False, True]


def test_access_of_length_zero_is_always_ok(target):
    assert check_access(target, [
        (0x3000, 0, "VM_READ"),              # in the gap
        (0x1000, 0, "VM_EXEC"),              # missing permission
        (0x90000000, 0, "VM_READ | VM_WRITE"),
    ]) == [True, True, True]


def test_access_on_an_empty_address_space(target):
    got = run(target, '''
        m = mm_create()
        result = (access_ok(m, 0x1000, 1, VM_READ), access_ok(m, 0x1000, 0, VM_READ))
    ''')
    assert got == (False, True)
