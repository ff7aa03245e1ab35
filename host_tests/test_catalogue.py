"""The bad-input catalogue: every public function times every kind of bad input gets the
documented exception, with a message that names the problem, and leaves the arena
byte-identical (a checksum of the whole arena before and after each call)."""
import pytest

from helpers import run

# Each public function with the kind of each parameter. Kinds: ptr (the start of a live
# kmalloc block), stack, mm (an mm_struct), inside (any address inside a live block),
# size, count, value (a byte), start, length, flags, addr, end.
FUNCTIONS = {
    "kmalloc": ("size",), "kzalloc": ("size",), "kcalloc": ("count", "size"),
    "krealloc": ("ptr", "size"), "kfree": ("ptr",), "ksize": ("ptr",),
    "allocate_kernel_stack": ("size",), "kernel_stack_top": ("stack",),
    "free_kernel_stack": ("stack",),
    "memset": ("inside", "value", "length"), "memcpy": ("inside", "inside", "length"),
    "view": ("inside", "length"), "addressof": ("inside",), "vma": ("vmaptr",),
    "mm": ("mm",),
    "mm_destroy": ("mm",), "mmap_region": ("mm", "start", "length", "flags"),
    "munmap": ("mm", "start", "length"), "mprotect": ("mm", "start", "length", "flags"),
    "find_vma": ("mm", "addr"), "brk": ("mm", "end"),
    "access_ok": ("mm", "addr", "length", "flags"), "vma_list": ("mm",), "mm_dump": ("mm",),
}
# The valid value of each kind (names bound on the board), used for the other arguments.
VALID = {"ptr": "p", "stack": "s", "mm": "m", "inside": "p", "vmaptr": "v", "size": "16",
         "count": "2", "value": "7", "start": "0x20000", "length": "16", "flags": "1",
         "addr": "0x10000", "end": "0x40000"}
BAD = {  # name: the expression on the board
    "str": "'7'", "float": "1.5", "list": "[7]", "bool": "True", "negative": "-8",
    "2**31": "2**31", "2**32": "2**32", "2**64": "2**64", "unaligned": "p + 1",
    "foreign": "0x1234", "interior": "p + 8", "freed": "gone", "freed mm": "gone_mm",
    "stack": "s", "kmalloc block": "p", "mm_struct": "m", "other heap": "q",
}
POINTERS = ("ptr", "stack", "mm", "inside", "vmaptr")
BLOCK = {"ptr": "p", "stack": "s", "mm": "m", "vmaptr": "v"}  # what each pointer kind is


def expected(fn, kind, bad):
    """The documented outcome: an exception class, 'None' (an allocation that fails), or
    'ok' (not bad for this parameter); None: the case does not apply."""
    if bad in ("str", "float", "list", "bool"):
        return "TypeError"
    if kind in POINTERS:
        if bad in ("kmalloc block", "stack", "mm_struct") and BAD[bad] == BLOCK.get(kind):
            return None  # the right kind: not a bad input
        if kind == "inside" and bad in ("unaligned", "interior", "kmalloc block", "stack",
                                         "mm_struct"):
            return None  # inside a live block: fine for memset and friends
        return "ValueError"
    if bad in ("unaligned", "interior", "freed", "freed mm", "stack", "kmalloc block",
               "mm_struct", "other heap", "foreign"):
        return None  # addresses given as a size: just numbers, tried below
    if bad == "negative":
        if kind == "end" or (fn, kind) == ("access_ok", "addr"):
            return "ok"  # brk: a query; access_ok: False, as for any unmapped address
        return "ValueError"
    # 2**31, 2**32, 2**64 as a number
    if kind in ("size", "count"):
        return "None"  # too big for any arena: the allocation fails, it is no error
    if kind in ("value", "flags"):
        return "ValueError"
    if kind == "length" and fn in ("memset", "memcpy", "view"):
        return "ValueError"  # past the end of the block
    if bad == "2**31" and kind in ("start", "length", "addr"):
        return None  # a 32-bit address space holds it: not a bad input
    if fn == "access_ok" or kind == "end":
        return "ok"  # access_ok: False; brk: the current break (a query)
    return "ValueError"  # start / length / address past 32 bits


def cases():
    out = []
    for fn, kinds in FUNCTIONS.items():
        for i, kind in enumerate(kinds):
            for bad, expr in BAD.items():
                want = expected(fn, kind, bad)
                if want is None:
                    continue
                args = [VALID[k] for k in kinds]
                args[i] = expr
                out.append(("%s(%s) %s=%s" % (fn, ", ".join(args), kind, bad), fn, kind,
                            "%s(%s)" % (fn, ", ".join(args)), want))
    return out


SETUP = '''
import micropython
@micropython.viper
def checksum(a: ptr32, n: int) -> int:
    s = 0
    i = 0
    while i < n:
        s = (s * 31 + a[i]) & 0x3FFFFFFF
        i += 1
    return s
h = init(8192, hardened=True) if HARDENED else heap()  # 8 KiB: room beside the prelude's
words = len(h.arena) // 4
p = kmalloc(64)
s = allocate_kernel_stack(256)
m = mm_create()
mmap_region(m, 0x10000, 0x2000, VM_READ | VM_WRITE)
v = mm(m).mmap
gone = kmalloc(64)
kfree(gone)
gone_mm = mm_create()
mm_destroy(gone_mm)
q = Heap(2048).kmalloc(64)
def attempt(code):
    before = checksum(h.arena, words)
    try:
        got = eval(code)
        out = ('ok', 'None' if got is None else type(got).__name__)
    except Exception as e:
        out = (type(e).__name__, str(e)[:100])
    return out + (checksum(h.arena, words) != before,)
'''


@pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
def test_every_public_function_rejects_every_kind_of_bad_input(target, hardened):
    all_cases = cases()
    results = []
    batch = 12  # one round trip per batch: small answers for a small board
    for i in range(0, len(all_cases), batch):
        part = all_cases[i:i + batch]
        # A board keeps its globals from one snippet to the next: drop the heaps'.
        results += run(target, "HARDENED = %r\n" % hardened, SETUP,
                       "result = [attempt(c) for c in %r]\n"
                       "h = p = s = m = v = gone = gone_mm = q = None" % [c[3] for c in part])
    wrong = []
    for (name, fn, kind, code, want), (got, detail, changed) in zip(all_cases, results):
        if want == "None":
            ok = got == "ok" and detail == "None"
        elif want == "ok":
            ok = got == "ok"
        else:
            ok = got == want
            # The message starts with the call made (kzalloc's, not the kmalloc it calls),
            # then names the problem: the parameter, or the value.
            param = "n" if kind in ("count", "length") else kind  # the API's own names
            if ok and not (detail.startswith(fn + ": ") and (
                    kind in detail or "pointer" in detail or "address" in detail
                    or "flags" in detail or "0x" in detail or param + " " in detail)):
                ok = False
        if changed and got != "ok":
            ok = False
        if not ok:
            wrong.append((name, want, got, detail, changed))
    print("bad-input catalogue (%s heap): %d cases, %d as documented"
          % ("hardened" if hardened else "default", len(all_cases), len(all_cases) - len(wrong)))
    for w in wrong:
        print(w)
    assert wrong == []
