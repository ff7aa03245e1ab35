"""kfree: releasing memory, full coalescing, no leaks across fill/free cycles."""
import pytest

from helpers import run

# Each entry rearranges `blocks` in place: a board's heap has no room for copies.
FREE_ORDERS = {
    "forward": "pass",
    "reverse": "blocks.reverse()",
    "odd_then_even": '''
for i in range(count // 2):                 # odd positions first, then the even ones
    blocks.insert(i, blocks.pop(2 * i + 1))
''',
    "outside_in": '''
for i in range(1, count, 2):                # 0, n-1, 1, n-2, ...
    blocks.insert(i, blocks.pop())
''',
    "shuffled": '''
seed = 12345
for i in range(len(blocks) - 1, 0, -1):     # Fisher-Yates with a fixed LCG
    seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
    j = seed % (i + 1)
    blocks[i], blocks[j] = blocks[j], blocks[i]
''',
}


def test_kfree_of_null_is_a_no_op(target):
    before, after = run(target, '''
        p = kmalloc(40)
        before = stats()
        kfree(None)
        kfree(0)
        result = (before, stats())
    ''')
    assert after == before


def test_kfree_gives_the_memory_back(target):
    baseline, during, after, frees = run(target, '''
        baseline = layout()
        frees = stats()['frees']
        p = kmalloc(100)
        during = layout()
        kfree(p)
        result = (baseline, during, layout(), stats()['frees'] - frees)
    ''')
    assert during != baseline
    assert after == baseline
    assert frees == 1


@pytest.mark.parametrize("order", sorted(FREE_ORDERS))
def test_fill_free_fill_gives_back_everything(target, order):
    r = run(target, '''
        baseline = layout()
        blocks = fill(24)
        full = layout()
        count = len(blocks)
    ''', FREE_ORDERS[order], '''
        for i, p in enumerate(blocks):
            kfree(p)
            if i == count // 2:
                half_ok = check()
        blocks = None
        emptied = layout()
        refill = len(fill(24))
        result = dict(baseline=baseline, full=full, emptied=emptied, count=count,
                      refill=refill, half_ok=half_ok, ok=check())
    ''')
    assert r["count"] > 10
    assert r["full"]["live_blocks"] == r["baseline"]["live_blocks"] + r["count"]
    assert r["half_ok"] is True
    assert r["emptied"] == r["baseline"]
    assert r["emptied"]["free_blocks"] == 1
    assert r["refill"] == r["count"]
    assert r["ok"] is True


def test_fill_free_fill_with_mixed_sizes(target):
    r = run(target, '''
        SIZES = (8, 40, 16, 200, 24, 72, 1000, 8, 96)

        def fill_mixed():
            blocks = []
            i = 0
            while True:
                p = kmalloc(SIZES[i % len(SIZES)])
                if p is None:
                    break
                blocks.append(p)
                i += 1
            return blocks + fill(8)          # top up the gaps with the smallest size

        baseline = layout()
        first = fill_mixed()
        for p in first[0::3] + first[2::3] + first[1::3]:
            kfree(p)
        emptied = layout()
        second = fill_mixed()
        result = dict(baseline=baseline, emptied=emptied, first=len(first),
                      second=len(second), ok=check())
    ''')
    assert r["first"] > 9
    assert r["emptied"] == r["baseline"]
    assert r["emptied"]["free_blocks"] == 1
    assert r["second"] == r["first"]
    assert r["ok"] is True


def test_adjacent_free_blocks_merge(target):
    r = run(target, '''
        blocks = fill(64)
        # Five physically consecutive live blocks, as walk() reports them.
        neighbours = []
        for addr, n, busy in walk():
            neighbours = neighbours + [addr] if busy else []
            if len(neighbours) == 5:
                break
        a, b, c, d, e = neighbours
        start = stats()['free_blocks']
        steps = []
        for p in (b, c, a, e):
            kfree(p)
            steps.append(stats()['free_blocks'] - start)
        largest = stats()['largest_free']
        big = kmalloc(largest)
        result = dict(steps=steps, largest=largest, big=big, a=a, ok=check())
    ''')
    # b alone: +1; c next to b: merged; a before b: merged; e (past live d): +1.
    assert r["steps"] == [1, 1, 1, 2]
    # The merged a+b+c run is the largest free block and is handed out whole at a.
    assert r["largest"] >= 3 * 64
    assert r["big"] == r["a"]
    assert r["ok"] is True


def test_largest_free_after_freeing_everything(target):
    r = run(target, '''
        baseline = layout()
        blocks = fill(48)
        for p in blocks:
            kfree(p)
        largest = stats()['largest_free']
        whole = kmalloc(largest)
        result = dict(baseline=baseline, largest=largest, whole=whole,
                      usable=ksize(whole) if whole else None, ok=check())
    ''')
    assert r["largest"] == r["baseline"]["largest_free"]
    assert r["largest"] > r["baseline"]["size"] // 2
    assert r["whole"] is not None
    assert r["usable"] >= r["largest"]
    assert r["ok"] is True


def test_largest_free_is_the_biggest_request_that_fits(target):
    r = run(target, '''
        blocks = fill(48)
        for p in blocks[::3]:               # isolated holes: nothing can merge
            kfree(p)
        largest = stats()['largest_free']
        fits = kmalloc(largest)
        too_big = kmalloc(largest + 1)
        result = dict(largest=largest, fits=fits, too_big=too_big, ok=check())
    ''')
    assert r["largest"] >= 48
    assert r["fits"] is not None
    assert r["too_big"] is None
    assert r["ok"] is True


def test_freed_block_is_no_longer_live(target):
    before, after, listed = run(target, '''
        p = kmalloc(32)
        q = kmalloc(32)
        before = stats()['live_blocks']
        kfree(p)
        listed = [busy for a, n, busy in walk() if a == p]
        result = (before, stats()['live_blocks'], listed)
    ''')
    assert after == before - 1
    assert listed in ([], [False])


def test_random_workload_keeps_every_block_intact_and_leaks_nothing(target):
    r = run(target, '''
        seed = 2024

        def rnd(n):
            global seed
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            return (seed >> 8) % n

        init(8192)  # fills up (kmalloc says no) at ~80 live blocks: a dict a small board can grow
        baseline = layout()
        live = {}                            # address -> fill byte << 16 | size in use
        problems = []
        full = 0                             # kmalloc calls the full arena refused
        for step in range(3000):
            op = rnd(10)
            if op < 5 or not live:           # allocate and fill
                n = 1 + rnd(200)
                p = kmalloc(n)
                full += p is None
                if p is not None:
                    if p in live:
                        problems.append(('handed out twice', step))
                    memset(p, step & 0xFF, n)
                    live[p] = (step & 0xFF) << 16 | n
            else:
                k = rnd(len(live))           # pick a random live block without
                for p in live:               # copying the keys (boards are small)
                    if k == 0:
                        break
                    k -= 1
                v = live.pop(p)
                tag, n = v >> 16, v & 0xFFFF
                if contents(p, n) != bytes([tag]) * n:
                    problems.append(('overwritten', step))
                if op < 8:                   # free
                    kfree(p)
                else:                        # resize
                    m = 1 + rnd(400)
                    q = krealloc(p, m)
                    if q is None:
                        live[p] = v
                    else:
                        keep = min(n, m)
                        if contents(q, keep) != bytes([tag]) * keep:
                            problems.append(('lost in krealloc', step))
                        memset(q, tag, m)
                        live[q] = tag << 16 | m
            if step % 100 == 0:
                largest = stats()['largest_free']
                if kmalloc(largest + 1) is not None:
                    problems.append(('more than largest_free fits', step))
                whole = kmalloc(largest) if largest else None
                if largest and whole is None:
                    problems.append(('largest_free does not fit', step))
                kfree(whole)
            if step % 500 == 0:
                check()
        for p, v in live.items():
            tag, n = v >> 16, v & 0xFFFF
            if contents(p, n) != bytes([tag]) * n:
                problems.append(('overwritten at the end', p))
            kfree(p)
        result = dict(problems=problems, baseline=baseline, after=layout(), ok=check(), full=full)
    ''', timeout=300)
    assert r["problems"] == []
    assert r["full"] > 0  # the workload ran the arena full, not only half-empty
    assert r["after"] == r["baseline"]
    assert r["ok"] is True
