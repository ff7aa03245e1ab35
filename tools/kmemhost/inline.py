"""Inline TLSF's block helpers into kmem's viper hot paths, so that they are written once.

A viper call costs a generic call with boxed arguments, so the hot paths cannot call
helpers; but copies kept in sync by hand drift. The helpers are written once, in
firmware/blocks/tlsf.blocks:

    #@def unlink(B, SIZE)        a block: its parameters are whole-word placeholders
    ...viper lines...
    #@end

and used in firmware/kmem/*.py as

        #@use unlink(b, size)
        ...the expansion, written by this tool...
        #@end

python -m kmemhost.inline rewrites every expansion from the definitions; with --check it
changes nothing and fails if any expansion differs (make test runs the check). Blocks may
use other blocks. Temporaries inside a block are named with the block's prefix (ul_, ln_, ...).
"""
import argparse
import re
import sys

from . import ROOT

BLOCKS = ROOT / "firmware" / "blocks" / "tlsf.blocks"
SOURCES = ROOT / "firmware" / "kmem"
_DEF = re.compile(r"^#@def (\w+)\(([^)]*)\)\s*$")
_USE = re.compile(r"^(\s*)#@use (\w+)\((.*)\)\s*$")
_END = re.compile(r"^\s*#@end\s*$")


class InlineError(Exception):
    pass


def _args(text):
    """Split "a, (b - c), f(x, y)" at the commas outside parentheses."""
    args, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            raise InlineError(f"unbalanced parentheses in {text!r}")
        cur += ch
    if depth:
        raise InlineError(f"unbalanced parentheses in {text!r}")
    return [a for a in args + [cur.strip()] if a]


def definitions(text):
    """{name: (params, body lines)} from a .blocks file."""
    defs, name = {}, None
    for n, line in enumerate(text.splitlines(), 1):
        _strict(line, f"{BLOCKS.name}:{n}")
        m = _DEF.match(line)
        if m:
            name = m.group(1)
            defs[name] = (_args(m.group(2)), [])
        elif _END.match(line) and name:
            name = None
        elif name:
            defs[name][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise InlineError(f"{BLOCKS.name}:{n}: code outside a #@def block")
    return defs


def _atom(arg):
    """A name, a number, or one parenthesized whole: needs no parentheses of its own."""
    if re.fullmatch(r"\w+", arg):
        return True
    if not arg.startswith("("):
        return False
    depth = 0
    for i, ch in enumerate(arg):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i == len(arg) - 1
    return False


def expand(defs, name, args, indent, depth=0):
    if name not in defs:
        raise InlineError(f"unknown block {name!r}")
    params, body = defs[name]
    if len(params) != len(args):
        raise InlineError(f"{name} takes {len(params)} arguments, got {len(args)}")
    if depth > 8:
        raise InlineError(f"blocks nest too deep at {name}")
    # All parameters in one pass (an argument is never rewritten again), each argument that
    # is not a plain name in parentheses (so `b - psize` stays one operand).
    values = {p: a if _atom(a) else f"({a})" for p, a in zip(params, args)}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, params)) + r")\b") if params else None
    out = []
    for line in body:
        if pattern:
            line = pattern.sub(lambda m: values[m.group(1)], line)
        _strict(line, f"block {name}")
        m = _USE.match(line)
        if m:
            out += expand(defs, m.group(2), _args(m.group(3)), indent + m.group(1), depth + 1)
        else:
            out.append(indent + line if line.strip() else "")
    return out


def _strict(line, where):
    # A directive this tool cannot read must not pass for a comment (its expansion would
    # silently go stale).
    head = line.lstrip()
    if ((head.startswith("#@use") and not _USE.match(line))
            or (head.startswith("#@def") and not _DEF.match(line))):
        raise InlineError(f"{where}: unreadable directive: {line.strip()!r}")


def rewrite(text, defs):
    """`text` with every #@use ... #@end region expanded afresh."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        _strict(lines[i], f"line {i + 1}")
        m = _USE.match(lines[i])
        out.append(lines[i])
        i += 1
        if not m:
            continue
        while i < len(lines) and not _END.match(lines[i]):
            i += 1
        if i == len(lines):
            raise InlineError(f"#@use {m.group(2)} has no #@end")
        out += expand(defs, m.group(2), _args(m.group(3)), m.group(1))
        out.append(lines[i])
        i += 1
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kmemhost.inline", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if an expansion is out of date")
    args = ap.parse_args(argv)
    try:
        defs = definitions(BLOCKS.read_text())
        stale = []
        for path in sorted(SOURCES.glob("*.py")):
            old = path.read_text()
            new = rewrite(old, defs)
            if new != old:
                stale.append(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
                if not args.check:
                    path.write_text(new)
    except InlineError as e:
        print(f"inline: {e}", file=sys.stderr)
        return 1
    if args.check and stale:
        print(f"inline: out of date: {', '.join(map(str, stale))}; run `python -m kmemhost.inline`",
              file=sys.stderr)
        return 1
    print(f"inline: {'checked' if args.check else 'rewrote'} "
          f"{', '.join(map(str, stale)) or 'nothing (all up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
