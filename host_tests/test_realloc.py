"""krealloc, ksize, kzalloc and kcalloc."""
from helpers import run

DIRTY_THE_ARENA = '''
# Fill the whole arena with 0xA5 and free it again, so that any later
# allocation lands on dirty memory.
for p in fill(64):
    memset(p, 0xA5, ksize(p))
    kfree(p)
'''


def test_ksize_is_at_least_the_requested_size(target):
    pairs = run(target, '''
        result = [(n, ksize(kmalloc(n))) for n in (1, 3, 8, 9, 16, 24, 25, 100, 129, 777)]
    ''')
    for requested, usable in pairs:
        assert usable >= requested


def test_ksize_bytes_are_all_usable(target):
    ok = run(target, '''
        p = kmalloc(13)
        q = kmalloc(13)
        memset(q, 0x11, ksize(q))
        memset(p, 0x77, ksize(p))          # the whole usable size, not just 13
        result = (contents(q, ksize(q)) == bytes([0x11]) * ksize(q), check())
    ''')
    assert ok == (True, True)


def test_krealloc_grows_in_place_when_the_next_block_is_free(target):
    r = run(target, '''
        p = kmalloc(32)                    # fresh heap: free space follows p
        data = scribble(p, 32)
        q = krealloc(p, 200)
        result = dict(p=p, q=q, kept=contents(q, 32) == data, usable=ksize(q), ok=check())
    ''')
    assert r["q"] == r["p"]
    assert r["kept"] is True
    assert r["usable"] >= 200
    assert r["ok"] is True


def test_krealloc_grows_in_place_into_a_freed_neighbour(target):
    r = run(target, '''
        p = kmalloc(32)
        neighbour = kmalloc(32)
        guard = kmalloc(32)
        data = scribble(p, 32)
        guard_data = scribble(guard, 32, seed=99)
        kfree(neighbour)
        q = krealloc(p, 64)
        result = dict(p=p, q=q, kept=contents(q, 32) == data,
                      guard=contents(guard, 32) == guard_data, ok=check())
    ''')
    assert r["q"] == r["p"]
    assert r["kept"] is True
    assert r["guard"] is True
    assert r["ok"] is True


def test_krealloc_shrinks_in_place_and_releases_the_tail(target):
    r = run(target, '''
        p = kmalloc(512)
        guard = kmalloc(16)
        data = scribble(p, 512)
        free_before = stats()['free']
        q = krealloc(p, 16)
        result = dict(p=p, q=q, kept=contents(q, 16) == data[:16], usable=ksize(q),
                      gained=stats()['free'] - free_before, ok=check())
    ''')
    assert r["q"] == r["p"]
    assert r["kept"] is True
    assert 16 <= r["usable"] < 512
    assert r["gained"] > 0
    assert r["ok"] is True


def test_krealloc_moves_when_it_cannot_grow_in_place(target):
    r = run(target, '''
        p = kmalloc(32)
        blocker = kmalloc(32)
        data = scribble(p, 32)
        blocker_data = scribble(blocker, 32, seed=5)
        live = stats()['live_blocks']
        q = krealloc(p, 256)
        result = dict(p=p, q=q, kept=contents(q, 32) == data, usable=ksize(q),
                      blocker=contents(blocker, 32) == blocker_data,
                      live=stats()['live_blocks'] - live,
                      old_freed=raised(kfree, p), ok=check())
    ''')
    assert r["q"] not in (None, r["p"])
    assert r["kept"] is True
    assert r["usable"] >= 256
    assert r["blocker"] is True
    assert r["live"] == 0                       # the old block went away
    assert r["old_freed"][0] == "ValueError"    # ... so freeing it again is refused
    assert r["ok"] is True


def test_krealloc_of_null_allocates(target):
    r = run(target, '''
        before = stats()
        a = krealloc(None, 24)
        b = krealloc(0, 24)
        after = stats()
        result = dict(a=a, b=b, sizes=(ksize(a), ksize(b)),
                      live=after['live_blocks'] - before['live_blocks'])
    ''')
    assert r["a"] is not None and r["b"] is not None and r["a"] != r["b"]
    assert min(r["sizes"]) >= 24
    assert r["live"] == 2


def test_krealloc_to_zero_frees(target):
    r = run(target, '''
        baseline = layout()
        p = kmalloc(40)
        q = krealloc(p, 0)
        result = dict(q=q, baseline=baseline, after=layout(), again=raised(kfree, p))
    ''')
    assert r["q"] is None
    assert r["after"] == r["baseline"]
    assert r["again"][0] == "ValueError"


def test_krealloc_failure_keeps_the_old_block(target):
    r = run(target, '''
        p = kmalloc(32)
        data = scribble(p, 32)
        before = layout()
        huge = krealloc(p, stats()['size'])
        wrapped = krealloc(p, 2**32 + 8)   # must not wrap around to 8 bytes
        result = dict(huge=huge, wrapped=wrapped, kept=contents(p, 32) == data,
                      before=before, after=layout(), usable=ksize(p), ok=check())
        kfree(p)                            # still a live block
    ''')
    assert r["huge"] is None
    assert r["wrapped"] is None
    assert r["kept"] is True
    assert r["after"] == r["before"]
    assert r["usable"] >= 32
    assert r["ok"] is True


def test_krealloc_preserves_contents_through_repeated_resizing(target):
    lost, ok = run(target, '''
        p = kmalloc(8)
        data = scribble(p, 8)
        lost = []
        blockers = []
        for n in (24, 100, 300, 64, 700, 16):
            p = krealloc(p, n)
            blockers.append(kmalloc(8))    # keep the neighbourhood busy so some calls move
            keep = min(len(data), n)
            if contents(p, keep) != data[:keep]:
                lost.append(n)
            data = scribble(p, n, seed=n)
        result = (lost, check())
    ''')
    assert lost == []
    assert ok is True


def test_kzalloc_returns_zeroed_memory_even_over_dirty_memory(target):
    r = run(target, DIRTY_THE_ARENA, '''
        blocks = [(n, kzalloc(n)) for n in (1, 7, 64, 200, 1000)]
        result = [(n, p is not None and contents(p, n) == bytes(n)) for n, p in blocks]
    ''')
    assert r == [(1, True), (7, True), (64, True), (200, True), (1000, True)]


def test_kzalloc_reusing_a_freed_dirty_block_is_zeroed(target):
    zeroed = run(target, '''
        p = kmalloc(48)
        memset(p, 0xFF, 48)
        kfree(p)
        q = kzalloc(48)
        result = contents(q, 48) == bytes(48)
    ''')
    assert zeroed is True


def test_kcalloc_returns_zeroed_array(target):
    r = run(target, DIRTY_THE_ARENA, '''
        p = kcalloc(10, 12)
        result = (ksize(p), contents(p, 120) == bytes(120))
    ''')
    assert r[0] >= 120
    assert r[1] is True


def test_kcalloc_overflow_returns_none_and_changes_nothing(target):
    r = run(target, '''
        before = layout()
        got = [kcalloc(0x10000, 0x10000), kcalloc(0xFFFFFFFF, 2), kcalloc(2, 2**31),
               kcalloc(2**32 + 1, 1),
               kcalloc(0x80000001, 2),     # 2 bytes if the product wrapped at 32 bits
               kcalloc(4, 0x40000002)]     # 8 bytes if it wrapped
        result = (got, before, layout(), check())
    ''')
    got, before, after, ok = r
    assert got == [None] * 6
    assert after == before
    assert ok is True
