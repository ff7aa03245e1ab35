"""kmemctl map: the target's heap as a picture (PNG, SVG) or in the terminal.

The block list is read from the target in one round trip (kmem.tlsf.blocks: the same walk
check() makes) and drawn here: a cell per slice of the arena, coloured by the kind that
holds most of its bytes (as the board's own heap_map() does), a legend and the figures."""
import ast
import subprocess
import tempfile
import threading
from dataclasses import dataclass

from . import targets

KINDS = ("free", "kmalloc block", "kernel stack", "mm_struct", "vm_area_struct",
         "control area")
CHARS = ".#SMv="  # as heap_map() on the board
COLOURS = ((224, 224, 224), (76, 120, 168), (245, 133, 24), (84, 162, 75), (178, 121, 162),
           (96, 96, 96))
_ANSI = (250, 67, 208, 71, 139, 240)  # the same colours in the 256-colour palette
CONTROL = 5
CELL = 10  # pixels per cell (PNG, SVG)
MARGIN = 8
LINE = 14  # pixels per text line under the map

# Run on the target: the default heap's block list (and stats()), left in `result`.
SNIPPET = """
from kmem import tlsf
_h = heap()
result = (_h.base, _h.size, tlsf.load32(_h.arena, 40), tlsf.load32(_h.arena, 44),
          [(o - 4, n + 4, k if not f else -1) for o, n, k, f in tlsf.blocks(_h.arena)],
          stats())
_h = None
"""


@dataclass
class HeapPicture:
    base: int
    size: int
    spans: list  # (start, end, kind index into KINDS) in address order, covering the arena
    stats: dict

    def slices(self, width, rows=32):
        """(bytes per cell, [kind index per cell]): cells of a power of two bytes, at most
        `rows` rows of `width`; each the kind with most bytes in it (a tie: not free)."""
        piece = 8
        while piece * width * rows < self.size:
            piece *= 2
        cells, counts, at = [], [0] * len(KINDS), 0
        for s, e, what in self.spans:
            while s < e:
                take = min(e, at + piece) - s
                counts[what] += take
                s += take
                if s == at + piece or s == self.size:
                    cells.append(max(range(len(KINDS)), key=lambda i: (counts[i], i)))
                    counts = [0] * len(KINDS)
                    at += piece
        return piece, cells

    def figures(self):
        st = self.stats
        free = st["free"]
        frag = 1 - st["largest_free"] / free if free else 0.0
        return (f"used {st['used']}  free {free}  largest free {st['largest_free']}  "
                f"free blocks {st['free_blocks']}  live blocks {st['live_blocks']}  "
                f"fragmentation {frag:.2f}")


def fetch(target, setup=""):
    """The default heap of the target (after running `setup` there) as a HeapPicture."""
    return picture(target.eval("result", setup=setup + SNIPPET))


def picture(value):
    """A HeapPicture from what SNIPPET leaves in `result` on the target."""
    base, size, first, end, blocks, stats = value
    spans = [(0, first, CONTROL)]
    spans += [(start, start + n, 0 if kind < 0 else 1 + kind) for start, n, kind in blocks]
    spans.append((end, size, CONTROL))
    return HeapPicture(base, size, spans, stats)


def text(pic, width=64, colour=False):
    """The map as lines of text, the board's heap_map() exactly (16 rows at most), in colour
    if asked."""
    piece, cells = pic.slices(width, rows=16)
    paint = (lambda c: f"\x1b[38;5;{_ANSI[c]}m{CHARS[c]}") if colour else CHARS.__getitem__
    lines = [f"{pic.base + r * piece:08x} " + "".join(map(paint, cells[r:r + width]))
             + ("\x1b[0m" if colour else "") for r in range(0, len(cells), width)]
    lines.append("  ".join(f"{CHARS[i]} {k}" for i, k in enumerate(KINDS))
                 + f"  (1 char = {piece} bytes)")
    lines.append(pic.figures())
    return lines


def _layout(pic, width, textlength):
    """What png() and svg() draw: the size, squares (x, y, side, colour, tooltip or "") and
    texts (x, y of their top left, text); textlength(text) is its width in pixels."""
    piece, cells = pic.slices(width)
    rows = -(-len(cells) // width)
    w, h = 2 * MARGIN + width * CELL, 2 * MARGIN + rows * CELL + 4 * LINE
    squares = [(MARGIN + n % width * CELL, MARGIN + n // width * CELL, CELL - 1, COLOURS[c],
                f"{KINDS[c]} at 0x{pic.base + n * piece:08x}") for n, c in enumerate(cells)]
    texts, x, y = [], MARGIN, MARGIN + rows * CELL + 4
    for colour, name in zip(COLOURS, KINDS):  # the legend, wrapped to the picture's width
        squares.append((x, y + 2, 9, colour, ""))
        texts.append((x + 11, y, name))
        x += 22 + int(textlength(name))
        if x > w - 100:
            x, y = MARGIN, y + LINE
    texts += [(MARGIN, y + LINE, f"1 cell = {piece} bytes"), (MARGIN, y + 2 * LINE, pic.figures())]
    return (w, h), squares, texts


def png(pic, path, width=64):
    """Write the map as a PNG: cells, then the legend and the figures under them."""
    from PIL import Image, ImageDraw, ImageFont  # imported here: only `map -o x.png` needs Pillow

    size, squares, texts = _layout(pic, width, ImageFont.load_default().getlength)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x, y, side, colour, _ in squares:
        draw.rectangle((x, y, x + side - 1, y + side - 1), fill=colour)
    for x, y, line in texts:
        draw.text((x, y), line, fill=(0, 0, 0))
    img.save(path)


def svg(pic, path, width=64):
    """Write the map as an SVG: png()'s picture, each cell's tooltip its kind and address."""
    (w, h), squares, texts = _layout(pic, width, lambda line: 6.6 * len(line))  # 11px monospace
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family='
           f'"monospace" font-size="11">\n<rect width="{w}" height="{h}" fill="white"/>']
    for x, y, side, colour, tip in squares:
        out.append(f'<rect x="{x}" y="{y}" width="{side}" height="{side}" fill="rgb{colour}">'
                   + (f"<title>{tip}</title>" if tip else "") + "</rect>")
    out += [f'<text x="{x}" y="{y + 10}">{line}</text>' for x, y, line in texts]
    with open(path, "w") as f:
        f.write("\n".join(out + ["</svg>"]) + "\n")


# ---- an address space (map --mm) ---------------------------------------------------------

RIGHTS_COLOURS = {"x": (228, 87, 86), "w": (76, 120, 168), "r": (84, 162, 75),
                  "-": (160, 160, 160)}


def fetch_areas(target, mm, setup=""):
    """[(start, end, flags)] of the mm_struct that the expression `mm` names on the target."""
    return target.eval("vma_list(%s)" % mm, setup=setup)


def areas_png(areas, path, width=64):
    """Write an address space as a PNG: one bar, an area per coloured run (by its
    strongest right: x, w, r, -), each with its /proc/<pid>/maps line under the bar."""
    from PIL import Image, ImageDraw

    lines = [maps_line(*a) for a in areas] or ["(no areas)"]
    w = 2 * MARGIN + width * CELL
    h = 2 * MARGIN + 2 * CELL + LINE * (len(lines) + 1)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for col, (s, e, f) in _columns(areas, width):
        x = MARGIN + col * CELL
        right = "x" if f & 4 else "w" if f & 2 else "r" if f & 1 else "-"  # the strongest
        draw.rectangle((x, MARGIN, x + CELL - 2, MARGIN + 2 * CELL), fill=RIGHTS_COLOURS[right])
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + 2 * CELL + 6 + i * LINE), line, fill=(0, 0, 0))
    img.save(path)


def _columns(areas, width):
    # (column, area) for each column an area covers, as the board's mm_map() lays them out:
    # from the lowest to the highest address, PAGE_SIZE * 2**k a column, every area at least
    # one column of its own.
    if not areas:
        return []
    lo, hi = areas[0][0], areas[-1][1]
    piece = 4096
    while piece * width < hi - lo:
        piece *= 2
    out, used = [], 0
    for s, e, f in areas:
        a = max(used, (s - lo) // piece)
        used = max(a + 1, (e - lo + piece - 1) // piece)
        out += [(c, (s, e, f)) for c in range(a, used)]
    return out


def maps_line(s, e, f):
    return "%08x-%08x %s%s%s%s" % (s, e, "r" if f & 1 else "-", "w" if f & 2 else "-",
                                   "x" if f & 4 else "-", "s" if f & 8 else "p")


# ---- map --watch: the map redrawn while a program runs on the target --------------------

WATCH_MARK = "\x1ekmem-map "
FAILED_MARK = "\x1ekmem-failed"  # then the program's exception, as print_exception gives it


def watch_script(program, interval_ms):
    """`program` under kmem.watch() (the program needs no change): a heap-changing call
    `interval_ms` after the last picture, the start and the end print one (SNIPPET's value
    after WATCH_MARK). The program runs by exec(), so its tracebacks count its own lines, and
    its exception (SystemExit too) is printed after FAILED_MARK on every target alike."""
    body = "\n".join("    " + line for line in SNIPPET.strip().splitlines())
    return f"""
import sys, kmem
def _kmem_picture():
{body}
    print({WATCH_MARK!r} + repr(result))
_kmem_picture()
kmem.watch({int(interval_ms)}, _kmem_picture)
_kmem_failed = None
try:
    exec({program!r}, globals())
except BaseException as e:
    _kmem_failed = e
kmem.unwatch()
_kmem_picture()
if isinstance(_kmem_failed, SystemExit) and _kmem_failed.args and _kmem_failed.args[0]:
    print({FAILED_MARK!r})
    print("SystemExit: exit status %s" % (_kmem_failed.args[0],))
elif _kmem_failed is not None and not isinstance(_kmem_failed, SystemExit):
    print({FAILED_MARK!r})
    sys.print_exception(_kmem_failed, sys.stdout)
"""


def watch(target, program, on_picture, on_output, interval_ms=200, timeout=600):
    """Run `program` on `target` (after its prelude), calling on_picture(HeapPicture) for
    each picture as it arrives and on_output(line) for the program's own output. Its
    exception is raised here as a TargetError."""
    failed = []

    def line(text):
        if failed or text == FAILED_MARK:
            failed.append(text)
        elif text.startswith(WATCH_MARK):
            on_picture(picture(ast.literal_eval(text[len(WATCH_MARK):])))
        else:
            on_output(text)

    script = target.prelude + watch_script(program, interval_ms)
    stream = _stream_unix if isinstance(target, targets.UnixTarget) else _stream_board
    ended = stream(target, script, timeout, line)
    if err := "\n".join(failed[1:]) or ended:
        raise targets.TargetError(*targets.parse_traceback(err), script=program)


def _stream_unix(target, script, timeout, line):
    """Run `script` on the unix port, line(text) for each line it prints; "" or why it
    ended otherwise than by finishing."""
    with tempfile.TemporaryDirectory(prefix="kmem-watch-") as tmp:
        proc = target.spawn(script, tmp, stderr=subprocess.STDOUT)
        expired = threading.Event()
        watchdog = threading.Timer(timeout, lambda: (expired.set(), target.kill(proc)))
        watchdog.daemon = True
        watchdog.start()
        try:
            for text in proc.stdout:  # pyright: ignore[reportOptionalIterable]
                line(text.rstrip("\n"))
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                target.kill(proc)
            proc.wait()
            proc.stdout.close()  # pyright: ignore[reportOptionalMemberAccess]
    if expired.is_set():
        raise targets.TargetTimeout(target.name, timeout)
    return f"Crash: exit status {proc.returncode}" if proc.returncode else ""


def _stream_board(target, script, timeout, line):
    """_stream_unix() on a board, over mpremote's raw REPL."""
    board = target.board
    board.prepare()
    t = board.transport
    text = bytearray()
    board.fresh = False
    with board.step(timeout, text):
        t.exec_raw_no_follow(script.encode())
        try:
            while not text.endswith(b"\x04"):
                text.extend(t.serial.read(1))
                if text.endswith(b"\n"):
                    line(text.decode("utf-8", "replace").rstrip("\r\n"))
                    text.clear()
        except KeyboardInterrupt:  # Ctrl-C here stops the program there too
            t.serial.write(b"\x03")
            raise
        err = t.read_until(1, b"\x04", timeout=None)  # pyright: ignore[reportArgumentType]
    if text[:-1]:
        line(text[:-1].decode("utf-8", "replace"))
    return err[:-1].decode("utf-8", "replace")
