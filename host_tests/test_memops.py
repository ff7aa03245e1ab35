"""memset, memcpy and view: bounds are the live block the pointer points into."""
from helpers import hex32, run


def test_memset_fills_and_returns_the_pointer(target):
    r = run(target, '''
        p = kmalloc(32)
        q = kmalloc(32)
        memset(q, 0x11, 32)
        got = memset(p, 0xAB, 32)
        part = memset(p + 8, 0x00, 4)         # interior pointers are fine
        result = (got == p, part == p + 8, contents(p, 32), contents(q, 32))
    ''')
    same, same_interior, data, neighbour = r
    assert same is True and same_interior is True
    assert data == b"\xab" * 8 + b"\x00" * 4 + b"\xab" * 20
    assert neighbour == b"\x11" * 32


def test_memset_up_to_the_end_of_the_block_but_not_past_it(target):
    r = run(target, '''
        p = kmalloc(40)
        after_p = kmalloc(40)
        memset(after_p, 0x33, 40)
        n = ksize(p)
        before = stats()
        result = dict(p=p, whole=raised(memset, p, 1, n),
                      interior_whole=raised(memset, p + 8, 1, n - 8),
                      last_byte=raised(memset, p + n - 1, 1, 1),
                      past=raised(memset, p, 9, n + 1),
                      interior_past=raised(memset, p + 8, 9, n - 7),
                      one_past=raised(memset, p + n, 9, 1),
                      data=contents(p, n) == bytes([1]) * n,
                      neighbour=contents(after_p, 40) == bytes([0x33]) * 40,
                      unchanged=stats() == before, ok=check())
    ''')
    assert r["whole"] is None
    assert r["interior_whole"] is None
    assert r["last_byte"] is None
    assert r["past"][0] == "ValueError"
    assert r["interior_past"][0] == "ValueError"
    assert r["one_past"][0] == "ValueError"
    assert hex32(r["p"]) in r["past"][1]
    assert r["data"] is True                       # the refused calls wrote nothing
    assert r["neighbour"] is True
    assert r["unchanged"] is True
    assert r["ok"] is True


def test_memset_value_must_be_a_byte(target):
    r = run(target, '''
        p = kmalloc(8)
        memset(p, 0x5A, 8)
        result = dict(big=raised(memset, p, 256, 8), negative=raised(memset, p, -1, 8),
                      data=contents(p, 8), edge=raised(memset, p, 255, 8))
    ''')
    assert r["big"][0] == "ValueError"
    assert r["negative"][0] == "ValueError"
    assert r["data"] == b"\x5a" * 8
    assert r["edge"] is None


def test_memset_outside_any_live_block_is_refused(target):
    r = run(target, '''
        p = kmalloc(16)
        q = kmalloc(16)
        kfree(q)
        h = heap()
        result = dict(freed=raised(memset, q, 0, 1), below=raised(memset, h.base - 8, 0, 1),
                      above=raised(memset, h.base + h.size, 0, 1), ok=check())
    ''')
    for case in ("freed", "below", "above"):
        assert r[case] is not None and r[case][0] == "ValueError", case
    assert r["ok"] is True


def test_memcpy_copies_and_returns_the_destination(target):
    r = run(target, '''
        src = kmalloc(64)
        dst = kmalloc(64)
        data = scribble(src, 64)
        memset(dst, 0, 64)
        got = memcpy(dst, src, 64)
        part = memcpy(dst + 8, src + 40, 8)   # interior pointers at both ends
        result = (got == dst, part == dst + 8, contents(dst, 64), data, contents(src, 64) == data)
    ''')
    same, same_interior, copied, data, source_kept = r
    assert same is True and same_interior is True
    assert copied == data[:8] + data[40:48] + data[16:]
    assert source_kept is True


def test_memcpy_bounds_apply_to_source_and_destination(target):
    r = run(target, '''
        small = kmalloc(16)
        big = kmalloc(256)
        n = ksize(small)
        memset(big, 0x77, 256)
        before = stats()
        result = dict(fits=raised(memcpy, big, small, n),
                      src_past=raised(memcpy, big, small, n + 1),
                      dst_past=raised(memcpy, small, big, n + 1),
                      interior_past=raised(memcpy, small + 8, big, n - 7),
                      freed=None, big_tail=contents(big + n, 8),
                      unchanged=stats() == before, ok=check())
        other = kmalloc(16)
        kfree(other)
        result['freed'] = raised(memcpy, big, other, 4)
    ''')
    assert r["fits"] is None
    for case in ("src_past", "dst_past", "interior_past", "freed"):
        assert r[case] is not None and r[case][0] == "ValueError", case
    assert r["big_tail"] == b"\x77" * 8
    assert r["unchanged"] is True
    assert r["ok"] is True


def test_overlapping_memcpy_behaves_like_memmove(target):
    forward, backward = run(target, '''
        p = kmalloc(64)
        for i in range(64):
            view(p, 64)[i] = i
        memcpy(p + 8, p, 32)                  # destination above source
        forward = contents(p, 64)
        for i in range(64):
            view(p, 64)[i] = i
        memcpy(p, p + 8, 32)                  # destination below source
        result = (forward, contents(p, 64))
    ''')
    original = bytes(range(64))
    assert forward == original[:8] + original[0:32] + original[40:]
    assert backward == original[8:40] + original[32:]


MOVES = ((0, 40, 33), (40, 0, 33), (8, 0, 40), (0, 8, 40), (3, 17, 29), (17, 3, 29),
         (4, 8, 7), (8, 4, 7), (0, 0, 12), (12, 16, 0))
FILLS = ((0, 13), (4, 8), (3, 30), (8, 0), (1, 3))


def test_copies_are_memmove_at_every_alignment_and_overlap(target):
    # memcpy and tlsf.move (krealloc's copy) move whole words when both ends are aligned,
    # bytes otherwise; memset fills words from an aligned start. The expected bytes come
    # from Python's slices here; the board names the cases that differ (a small answer).
    moves = []
    for dst, src, n in MOVES:
        expect = bytearray(range(96))
        expect[dst:dst + n] = bytes(range(96))[src:src + n]
        moves.append((dst, src, n, bytes(expect)))
    fills = [(start, n, bytes(start) + b"\xa5" * n + bytes(96 - start - n))
             for start, n in FILLS]
    wrong = run(target, '''
        from kmem import tlsf
        buf = bytearray(96)
        p = kmalloc(96)
        wrong = []
        for dst, src, n, expect in %r:
            for i in range(96):
                buf[i] = i
                view(p, 96)[i] = i
            tlsf.move(buf, dst, src, n)
            memcpy(p + dst, p + src, n)
            if bytes(buf) != expect:
                wrong.append(('move', dst, src, n))
            if contents(p, 96) != expect:
                wrong.append(('memcpy', dst, src, n))
        for start, n, expect in %r:
            memset(p, 0, 96)
            memset(p + start, 0xA5, n)
            if contents(p, 96) != expect:
                wrong.append(('memset', start, n))
        result = wrong
    ''' % (moves, fills))
    assert wrong == []


def test_view_covers_the_block_from_the_pointer(target):
    r = run(target, '''
        p = kmalloc(40)
        n = ksize(p)
        whole = view(p)
        inner = view(p + 16)
        inner[0] = 0x42
        result = dict(n=n, whole=len(whole), inner=len(inner), seen=whole[16],
                      explicit=len(view(p, 10)), zero=len(view(p, 0)),
                      past=raised(view, p, n + 1), inner_past=raised(view, p + 16, n - 15),
                      negative=raised(view, p, -1),
                      outside=raised(view, heap().base + heap().size + 16))
    ''')
    assert r["whole"] == r["n"]
    assert r["inner"] == r["n"] - 16
    assert r["seen"] == 0x42
    assert r["explicit"] == 10
    assert r["zero"] == 0
    for case in ("past", "inner_past", "negative", "outside"):
        assert r[case] is not None and r[case][0] == "ValueError", case


def test_interior_pointers_work_in_blocks_of_every_size_and_position(target):
    count, bad, ok = run(target, '''
        blocks = []
        while True:
            p = kmalloc(1 + (len(blocks) * 13) % 300)
            if p is None:
                break
            blocks.append(p)
        for k, p in enumerate(blocks):
            memset(p, k & 0xFF, ksize(p))
        bad = []
        for k, p in enumerate(blocks):
            n = ksize(p)
            for q in (p, p + n // 2, p + n - 1):
                if len(view(q)) != p + n - q or addressof(q) != addressof(p) + (q - p):
                    bad.append(('view', k, q - p))
            if contents(p, n) != bytes([k & 0xFF]) * n:
                bad.append(('contents', k, n))
            if raised(view, p + n - 1, 2) is None:
                bad.append(('past the end', k, n))
        result = (len(blocks), bad, check())
    ''')
    assert count > 20
    assert bad == []
    assert ok is True
