"""Kernel stacks: layout, alignment, canary and freeing."""
import pytest

from helpers import TargetError, hex32, run


def test_kernel_stack_layout_and_alignment(target):
    stacks = run(target, '''
        result = []
        for n in (1, 100, 4095, 4096, 8192):
            s = allocate_kernel_stack(n)
            result.append((n, s, kernel_stack_top(s)))
    ''')
    for size, stack, top in stacks:
        assert stack % 8 == 0, (size, hex(stack))
        assert top % 8 == 0, (size, hex(top))
        assert top - stack >= size + 8          # usable size plus the 8-byte canary
    spans = sorted((s, top) for _, s, top in stacks)
    for (_, top), (start, _) in zip(spans, spans[1:]):
        assert top <= start, "stacks overlap"


def test_whole_stack_above_the_canary_is_usable(target):
    ok = run(target, '''
        s = allocate_kernel_stack(4096)
        top = kernel_stack_top(s)
        memset(s + 8, 0xCC, top - s - 8)
        result = (check(), contents(s + 8, top - s - 8) == bytes([0xCC]) * (top - s - 8))
    ''')
    assert ok == (True, True)


def test_free_kernel_stack_returns_heap_to_baseline(target):
    r = run(target, '''
        baseline = layout()
        s = allocate_kernel_stack(4096)
        during = layout()
        free_kernel_stack(s)
        result = dict(baseline=baseline, during=during, after=layout(), ok=check())
    ''')
    assert r["during"]["live_blocks"] == r["baseline"]["live_blocks"] + 1
    assert r["during"]["used"] >= r["baseline"]["used"] + 4096
    assert r["after"] == r["baseline"]
    assert r["ok"] is True


def test_many_stack_cycles_do_not_leak(target):
    r = run(target, '''
        baseline = layout()
        for i in range(500):
            a = allocate_kernel_stack(4096)
            b = allocate_kernel_stack(512 + i)
            free_kernel_stack(a)
            c = allocate_kernel_stack(100)
            free_kernel_stack(b)
            free_kernel_stack(c)
        result = (baseline, layout(), check())
    ''')
    baseline, after, ok = r
    assert after == baseline
    assert ok is True


def test_free_kernel_stack_of_null_is_a_no_op(target):
    before, after = run(target, '''
        before = stats()
        free_kernel_stack(None)
        free_kernel_stack(0)
        result = (before, stats())
    ''')
    assert after == before


def test_allocate_kernel_stack_returns_none_when_it_does_not_fit(target):
    got, before, after, ok = run(target, '''
        before = layout()
        got = [allocate_kernel_stack(stats()['size']),
               allocate_kernel_stack(2**32 - 4),     # size + canary must not wrap
               allocate_kernel_stack(2**32 + 64)]
        result = (got, before, layout(), check())
    ''')
    assert got == [None, None, None]
    assert after == before
    assert ok is True


def test_damaged_canary_is_reported_as_stack_overflow(target):
    r = run(target, '''
        s = allocate_kernel_stack(4096)
        clean = check()
        canary = view(s, 8)
        canary[7] ^= 0xFF                   # one byte written just below the stack
        try:
            check()
            caught = None
        except CorruptionError as e:
            caught = str(e)
        result = (clean, caught)
    ''')
    clean, caught = r
    assert clean is True
    assert caught is not None
    assert "stack overflow" in caught


def test_damaged_canary_makes_check_raise_corruption_error(target):
    with pytest.raises(TargetError) as exc:
        run(target, '''
            s = allocate_kernel_stack(1024)
            v = view(s, 8)
            for i in range(8):               # an overflow clobbering the whole canary
                v[i] ^= 0xFF
            result = check()
        ''')
    assert exc.value.type == "CorruptionError"
    assert "stack overflow" in exc.value.message


def test_free_kernel_stack_refuses_a_stack_whose_canary_is_damaged(target):
    r = run(target, '''
        s = allocate_kernel_stack(512)
        view(s, 8)[0] ^= 0x01                # the stack grew one byte too deep
        before = layout()
        try:
            free_kernel_stack(s)
            err = None
        except CorruptionError as e:
            err = str(e)
        result = dict(err=err, unchanged=layout() == before, live=stats()['live_blocks'], s=s)
    ''')
    assert r["err"] == "block at %s: kernel stack overflow (canary at %s damaged)" % (
        hex32(r["s"] - 4), hex32(r["s"]))
    assert r["unchanged"] is True and r["live"] == 1  # nothing freed


def test_stack_and_plain_blocks_cannot_be_freed_with_the_wrong_function(target):
    r = run(target, '''
        s = allocate_kernel_stack(4096)
        p = kmalloc(64)
        before = stats()
        result = dict(kfree_stack=raised(kfree, s),
                      free_plain_as_stack=raised(free_kernel_stack, p),
                      free_interior=raised(free_kernel_stack, s + 8),
                      unchanged=stats() == before, ok=check())
        free_kernel_stack(s)
        before = stats()
        result['double'] = raised(free_kernel_stack, s)
        result['double_unchanged'] = stats() == before
        result['addresses'] = dict(kfree_stack=s, free_plain_as_stack=p, free_interior=s + 8,
                                   double=s)
        kfree(p)
    ''')
    for case, addr in r["addresses"].items():
        assert r[case] is not None and r[case][0] == "ValueError", case
        assert hex32(addr) in r[case][1], case
    assert r["unchanged"] is True
    assert r["double_unchanged"] is True
    assert r["ok"] is True
