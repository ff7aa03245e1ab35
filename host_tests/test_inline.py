"""The checked generator that inlines firmware/blocks/tlsf.blocks into the viper hot paths."""
import pytest

from kmemhost import inline

BLOCKS = """\
#@def twice(X, Y)
Y = X + X
#@end
#@def quad(X, Y)
#@use twice(X, tw_t)
#@use twice(tw_t, Y)
#@end
"""


def test_uses_are_expanded_with_their_arguments_and_indentation():
    defs = inline.definitions(BLOCKS)
    src = "def f(a):\n    #@use quad(a, r)\n    stale line\n    #@end\n    return r\n"
    assert inline.rewrite(src, defs) == (
        "def f(a):\n    #@use quad(a, r)\n    tw_t = a + a\n    r = tw_t + tw_t\n"
        "    #@end\n    return r\n")


def test_the_firmware_is_up_to_date_and_a_stale_copy_is_caught(monkeypatch, tmp_path, capsys):
    assert inline.main(["--check"]) == 0
    src = tmp_path / "kmem"
    src.mkdir()
    hot = (inline.SOURCES / "hot.py").read_text()
    assert "ln_nxt = a[ln_head]" in hot
    (src / "hot.py").write_text(hot.replace("ln_nxt = a[ln_head]", "ln_nxt = a[ln_head] + 0", 1))
    monkeypatch.setattr(inline, "SOURCES", src)
    assert inline.main(["--check"]) == 1
    assert "out of date: " in capsys.readouterr().err


def test_unknown_blocks_and_wrong_arity_are_errors():
    defs = inline.definitions(BLOCKS)
    with pytest.raises(inline.InlineError, match="unknown block 'nope'"):
        inline.rewrite("#@use nope(a)\n#@end\n", defs)
    with pytest.raises(inline.InlineError, match="twice takes 2 arguments, got 1"):
        inline.rewrite("#@use twice(a)\n#@end\n", defs)


def test_arguments_are_substituted_once_and_parenthesized():
    defs = inline.definitions("#@def add(X, Y)\nX = Y * 2\n#@end\n")
    assert inline.expand(defs, "add", ["Y", "b - c"], "") == ["Y = (b - c) * 2"]


def test_an_unreadable_directive_is_an_error_not_a_comment():
    defs = inline.definitions(BLOCKS)
    with pytest.raises(inline.InlineError, match="unreadable directive"):
        inline.rewrite("    #@use twice(a, b)  # note\n    #@end\n", defs)


def test_nested_uses_take_parenthesized_arguments():
    defs = inline.definitions(BLOCKS)
    assert inline.expand(defs, "quad", ["a + 1", "r"], "") == [
        "tw_t = (a + 1) + (a + 1)", "r = tw_t + tw_t"]
