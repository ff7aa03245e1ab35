"""Bad input: exact exception types, addresses in messages, and the heap left untouched."""
import pytest

from helpers import TargetError, hex32, run

REJECTED = '''
def rejected(calls):
    # Run every call of `calls` ({name: (f, args...)}) and report what it raised,
    # plus whether the heap was left exactly as it was.
    before = stats()
    got = dict((name, raised(*call)) for name, call in calls.items())
    return dict(got=got, unchanged=stats() == before, ok=check())

def unnamed(got):
    # The calls ({"f(args)": raised}) whose message does not start with "f: ", the name of
    # the call made (kzalloc, say, and not the kmalloc it calls).
    return sorted(name for name, g in got.items()
                  if g and not g[1].startswith(name[:name.index('(')] + ': '))
'''


def exception_types(r):
    return dict((name, got[0] if got else "no error") for name, got in r["got"].items())


@pytest.mark.parametrize("half", [0, 1])  # halves: the answers fit a small board's heap
def test_non_int_sizes_raise_type_error(target, half):
    r = run(target, REJECTED, "HALF = %d" % half, '''
        p = kmalloc(16)
        m = mm_create()
        calls = {
            "kmalloc('12')": (kmalloc, '12'), 'kmalloc(12.0)': (kmalloc, 12.0),
            'kmalloc(None)': (kmalloc, None), 'kzalloc(1.5)': (kzalloc, 1.5),
            "kzalloc('8')": (kzalloc, '8'), 'kzalloc(None)': (kzalloc, None),
            "kcalloc('2', 4)": (kcalloc, '2', 4), 'kcalloc(2, 4.0)': (kcalloc, 2, 4.0),
            "krealloc(p, '8')": (krealloc, p, '8'), "krealloc(None, '8')": (krealloc, None, '8'),
            'krealloc(0, 8.0)': (krealloc, 0, 8.0),
            'allocate_kernel_stack(4096.0)': (allocate_kernel_stack, 4096.0),
            "memset(p, 0, '4')": (memset, p, 0, '4'), "memset(p, 'a', 4)": (memset, p, 'a', 4),
            'memcpy(p, p, 1.0)': (memcpy, p, p, 1.0), "view(p, '4')": (view, p, '4'),
            "mmap_region(m, '0', 4096, 1)": (mmap_region, m, '0', 4096, 1),
            'mmap_region(m, 0, 4096.0, 1)': (mmap_region, m, 0, 4096.0, 1),
            'mmap_region(m, 0, 4096, None)': (mmap_region, m, 0, 4096, None),
            'munmap(m, 0, [1])': (munmap, m, 0, [1]),
            "mprotect(m, 0, 4096, '1')": (mprotect, m, 0, 4096, '1'),
            "brk(m, '0')": (brk, m, '0'),
            "find_vma(m, 1.0)": (find_vma, m, 1.0),
            "access_ok(m, 0, '1', 1)": (access_ok, m, 0, '1', 1),
        }
        names = sorted(calls)[HALF::2]
        result = rejected(dict((n, calls[n]) for n in names))
        result['unnamed'] = unnamed(result['got'])
        calls = None
        for name in result['got']:  # the types only: a short answer (a small heap)
            result['got'][name] = result['got'][name] and result['got'][name][:1]
    ''')
    assert exception_types(r) == dict.fromkeys(r["got"], "TypeError")
    assert r["unnamed"] == []
    assert r["unchanged"] is True
    assert r["ok"] is True


def test_non_int_pointers_raise_type_error(target):
    r = run(target, REJECTED, '''
        p = kmalloc(16)
        result = rejected({
            "kfree('p')": (kfree, 'p'), 'kfree(1.5)': (kfree, 1.5), 'kfree([p])': (kfree, [p]),
            "ksize('p')": (ksize, 'p'), "krealloc('p', 8)": (krealloc, 'p', 8),
            "memset('p', 0, 1)": (memset, 'p', 0, 1), "memcpy(p, 'p', 1)": (memcpy, p, 'p', 1),
            "memcpy(b'', p, 1)": (memcpy, b'', p, 1), "view('p')": (view, 'p'),
            "free_kernel_stack('s')": (free_kernel_stack, 's'),
            "kernel_stack_top('s')": (kernel_stack_top, 's'),
            'mm_destroy(1.0)': (mm_destroy, 1.0), "vma_list('m')": (vma_list, 'm'),
            "mmap_region('m', 0, 4096, 1)": (mmap_region, 'm', 0, 4096, 1),
            "mm_dump('m')": (mm_dump, 'm'), "addressof('p')": (addressof, 'p'),
        })
        result['unnamed'] = unnamed(result['got'])
    ''')
    assert exception_types(r) == dict.fromkeys(r["got"], "TypeError")
    assert r["unnamed"] == []
    assert r["unchanged"] is True
    assert r["ok"] is True


@pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
def test_negative_sizes_raise_value_error(target, hardened):
    # (A hardened heap's kzalloc and krealloc are Python around the hot paths: named too.)
    r = run(target, REJECTED, "if %r:\n    init(8192, hardened=True)" % hardened, '''
        p = kmalloc(16)
        q = kmalloc(16)
        m = mm_create()
        result = rejected({
            'kmalloc(-1)': (kmalloc, -1), 'kzalloc(-8)': (kzalloc, -8),
            'kzalloc(-1)': (kzalloc, -1), 'krealloc(None, -1)': (krealloc, None, -1),
            'krealloc(0, -8)': (krealloc, 0, -8),
            'kcalloc(-1, 4)': (kcalloc, -1, 4), 'kcalloc(4, -1)': (kcalloc, 4, -1),
            'krealloc(p, -1)': (krealloc, p, -1),
            'allocate_kernel_stack(-4096)': (allocate_kernel_stack, -4096),
            'memset(p, 0, -1)': (memset, p, 0, -1), 'memcpy(q, p, -1)': (memcpy, q, p, -1),
            'view(p, -1)': (view, p, -1),
            'mmap_region(m, 0x1000, -4096, 1)': (mmap_region, m, 0x1000, -4096, 1),
            'munmap(m, 0x1000, -1)': (munmap, m, 0x1000, -1),
            'mprotect(m, 0x1000, -1, 1)': (mprotect, m, 0x1000, -1, 1),
        })
        result['unnamed'] = unnamed(result['got'])
    ''')
    assert exception_types(r) == dict.fromkeys(r["got"], "ValueError")
    assert r["unnamed"] == []
    assert r["unchanged"] is True
    assert r["ok"] is True


def test_kfree_of_a_pointer_that_is_not_a_live_block_start(target):
    r = run(target, REJECTED, '''
        h = heap()
        p = kmalloc(32)
        q = kmalloc(32)
        gone = kmalloc(32)
        guard = kmalloc(32)
        kfree(gone)
        bad = {'foreign low': 0x1234, 'below the arena': h.base - 8,
               'past the arena': h.base + h.size + 8, 'interior': p + 8, 'unaligned': p + 1,
               'double free': gone, 'alias above 4 GiB': p + 2**32}
        result = rejected(dict((k, (kfree, a)) for k, a in bad.items()))
        result['addresses'] = bad
        # A refused double free must not have put the block on a free list twice.
        a, b = kmalloc(32), kmalloc(32)
        result['distinct'] = a != b and a is not None and b is not None
        result['p_alive'] = ksize(p) >= 32
    ''')
    assert exception_types(r) == dict.fromkeys(r["got"], "ValueError")
    for name, addr in r["addresses"].items():
        if addr < 2**32:
            assert hex32(addr) in r["got"][name][1], name
    assert r["unchanged"] is True
    assert r["ok"] is True
    assert r["distinct"] is True
    assert r["p_alive"] is True


@pytest.mark.parametrize("call", ["krealloc(%s, 64)", "ksize(%s)"])
def test_other_block_functions_reject_pointers_that_are_not_block_starts(target, call):
    r = run(target, REJECTED, '''
        p = kmalloc(32)
        gone = kmalloc(32)
        kfree(gone)
        bad = {'foreign': 0x1234, 'interior': p + 8, 'freed': gone}
        result = rejected(dict((k, (lambda a=a: %s,)) for k, a in bad.items()))
        result['addresses'] = bad
    ''' % (call % "a"))
    assert exception_types(r) == dict.fromkeys(r["got"], "ValueError")
    for name, addr in r["addresses"].items():
        assert hex32(addr) in r["got"][name][1], name
    assert r["unchanged"] is True
    assert r["ok"] is True


def test_uncaught_errors_reach_the_host_with_type_and_address(target):
    with pytest.raises(TargetError) as exc:
        run(target, '''
            kfree(0x1234)
        ''', expr="None")
    assert exc.value.type == "ValueError"
    assert "0x00001234" in exc.value.message
    assert str(exc.value).startswith("ValueError: ")

    with pytest.raises(TargetError) as exc:
        run(target, "kmalloc('12')", expr="None")
    assert exc.value.type == "TypeError"


def test_messages_name_the_problem(target):
    r = run(target, REJECTED, '''
        p = kmalloc(16)
        s = allocate_kernel_stack(256)
        m = mm_create()
        mmap_region(m, 0x1000, 0x2000, VM_READ)
        def message(f, *args):
            got = raised(f, *args)
            return got and got[1]
        result = dict(
            negative=message(kfree, -1), bool_ptr=message(kfree, True),
            float_ptr=message(ksize, 1.5), bool_size=message(kmalloc, True),
            kzalloc_negative=message(kzalloc, -1), kzalloc_str=message(kzalloc, '8'),
            krealloc_null=message(krealloc, None, -1),
            vm_wrong_kind=message(mmap_region, p, 0x8000, 0x1000, VM_READ),
            free_wrong_kind=message(mm_destroy, s), vma_of_block=message(vma, p),
            mm_of_stack=message(mm, s), negative_flags=message(mmap_region, m, 0x8000, 0x1000, -1),
            overlap=message(mmap_region, m, 0x2000, 0x1000, VM_READ), p=p, s=s)
    ''')
    p, s = r["p"], r["s"]
    assert r["negative"] == "kfree: -0x00000001 is not the start of a live kmalloc block"
    assert r["bool_ptr"] == "kfree: pointer must be an int or None, not bool"
    assert r["float_ptr"] == "ksize: pointer must be an int or None, not float"
    assert r["bool_size"] == "kmalloc: size must be an int, not bool"
    # The call made, not the kmalloc it calls.
    assert r["kzalloc_negative"] == "kzalloc: size must be >= 0, got -1"
    assert r["kzalloc_str"] == "kzalloc: size must be an int, not str"
    assert r["krealloc_null"] == "krealloc: size must be >= 0, got -1"
    assert r["vm_wrong_kind"] == "mmap_region: %s is a kmalloc block, not an mm_struct" % hex32(p)
    assert r["free_wrong_kind"] == "mm_destroy: %s is a kernel stack; free it with " \
        "free_kernel_stack()" % hex32(s)
    assert r["vma_of_block"] == "vma: %s is a kmalloc block, not a vm_area_struct" % hex32(p)
    assert r["mm_of_stack"] == "mm: %s is a kernel stack, not an mm_struct" % hex32(s)
    assert r["negative_flags"] == "mmap_region: invalid flags -1 (allowed bits 0x3f)"
    assert r["overlap"] == "[Errno 17] EEXIST: mmap_region: [0x00002000, 0x00003000) " \
        "overlaps the area [0x00001000, 0x00003000)"


def test_an_init_that_cannot_be_met_keeps_the_old_heap(target):
    r = run(target, '''
        old = heap()
        p = kmalloc(100)
        errs = []
        for args in ((4 << 20,), (1000, 3), (-1,)):
            try:
                init(*args)
            except (MemoryError, ValueError) as e:
                errs.append((type(e).__name__, str(e)))
        kept = heap() is old
        kfree(p)
        result = dict(errs=errs, kept=kept, ok=check())
    ''')
    assert [e[0] for e in r["errs"]] == ["MemoryError", "ValueError", "ValueError"]
    assert "the current heap is kept" in r["errs"][0][1]
    assert r["kept"] is True and r["ok"] is True


def test_init_replaces_a_heap_that_leaves_no_room_beside_it(target):
    # Two arenas of over half the free memory cannot be side by side: the second init()
    # takes the first one's place.
    r = run(target, '''
        import gc
        def first(size):  # in functions: no stale reference to a heap stays in this frame
            try:
                kmem.init(size).marked = True
                return True
            except MemoryError:
                return False
        kmem.init(4096)
        gc.collect()
        free = gc.mem_free()
        size = 0
        for percent in (62, 58, 54):  # the largest that fits in one piece of the heap
            if first(free * percent // 100 & ~7):
                size = free * percent // 100 & ~7
                break
        result = dict(size=size)
        if size:
            second = kmem.init(size)
            result.update(replaced=heap() is second and not hasattr(second, 'marked'),
                          p=kmalloc(64) is not None, ok=check())
    ''')
    if not r["size"]:
        pytest.skip("no piece of this target's heap holds over half of its free memory")
    assert (r["replaced"], r["p"], r["ok"]) == (True, True, True)
