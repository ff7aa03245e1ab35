"""Inline the helpers of firmware/blocks/tlsf.blocks into firmware/kmem/*.py (make test checks).

A viper call costs a generic call with boxed arguments, so the hot paths cannot call helpers,
and copies kept by hand drift. A `#@def name(P, Q)` ... `#@end` block (whole-word
placeholders; it may `#@use` others) is written out between each `#@use name(a, b)` and its
`#@end`; --check changes nothing and fails if an expansion is out of date.
"""
import argparse
import re
import sys
from itertools import accumulate

from . import ROOT

BLOCKS = ROOT / "firmware" / "blocks" / "tlsf.blocks"
SOURCES = ROOT / "firmware" / "kmem"
_DEF = re.compile(r"^#@def (\w+)\(([^)]*)\)\s*$")
_USE = re.compile(r"^(\s*)#@use (\w+)\((.*)\)\s*$")
_END = re.compile(r"^\s*#@end\s*$")


class InlineError(Exception):
    pass


def _depths(text):
    """The parenthesis depth after each character of `text`."""
    return list(accumulate((ch == "(") - (ch == ")") for ch in text))


def _args(text):
    """Split "a, (b - c), f(x, y)" at the commas outside parentheses."""
    depths = _depths(text)
    if min(depths, default=0) < 0 or depths and depths[-1]:
        raise InlineError(f"unbalanced parentheses in {text!r}")
    cuts = [i for i, ch in enumerate(text) if ch == "," and not depths[i]]
    parts = (text[a + 1:b].strip() for a, b in zip([-1, *cuts], [*cuts, len(text)]))
    return [a for a in parts if a]


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
    """A name, a number, or one parenthesized whole (arguments are balanced: _args checked):
    needs no parentheses of its own."""
    return bool(re.fullmatch(r"\w+", arg)) or arg.startswith("(") and 0 not in _depths(arg)[:-1]


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
    out, lines = [], enumerate(text.splitlines(), 1)
    for n, line in lines:
        _strict(line, f"line {n}")
        out.append(line)
        if m := _USE.match(line):  # the old expansion is skipped up to its #@end
            end = next((end for _, end in lines if _END.match(end)), None)
            if end is None:
                raise InlineError(f"#@use {m.group(2)} has no #@end")
            out += [*expand(defs, m.group(2), _args(m.group(3)), m.group(1)), end]
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
