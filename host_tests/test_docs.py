"""The docs stay true to the firmware: every public name, struct field, flag and debug
message is documented in docs/API.md and in both READMEs' API sections (which list the
same rows), and no doc points outside the repository.

Host only (no target fixture): the firmware is read as source with ast, not imported.
"""
import ast
import re

import pytest

from kmemhost import ROOT

KMEM = ROOT / "firmware" / "kmem"
API = ROOT / "docs" / "API.md"
README = ROOT / "README.md"
README_ZH = ROOT / "README.zh-CN.md"
DOCS = (API, README, README_ZH)
# A path outside the checkout that README.md may name: the optional MicroPython source
# that `make qemu-firmware` falls back on (tools/kmemhost/qemu.py, SHARED_SOURCES).
OUTSIDE_ALLOWED = {"../shared/micropython/*.tar.gz"}


def _module(name):
    return ast.parse((KMEM / name).read_text())


def _assigned(tree, name):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return node.value
    raise AssertionError(f"{name} is not assigned in the module")


def _const(tree, name):
    """The int of `NAME = const(N)` or `NAME = N`."""
    value = _assigned(tree, name)
    if isinstance(value, ast.Call):
        value = value.args[0]
    return ast.literal_eval(value)


def public_names():
    return ast.literal_eval(_assigned(_module("__init__.py"), "__all__"))


def layouts():
    """{'VM_AREA_STRUCT': (size, {field: offset}), 'MM_STRUCT': ...} from structs.py."""
    tree = _module("structs.py")
    out = {}
    for name, size in (("VM_AREA_STRUCT", "VMA_SIZE"), ("MM_STRUCT", "MM_SIZE")):
        d = _assigned(tree, name)
        assert isinstance(d, ast.Dict), name
        fields = {ast.literal_eval(k): v.left.value for k, v in zip(d.keys, d.values)
                  if k is not None and isinstance(v, ast.BinOp) and isinstance(v.left, ast.Constant)}
        out[name] = _const(tree, size), fields
    return out


FLAGS = ("VM_READ", "VM_WRITE", "VM_EXEC", "VM_SHARED", "VM_GROWSUP", "VM_GROWSDOWN",
         "PAGE_SIZE")


def flag_values():
    tree = _module("structs.py")
    return {name: _const(tree, name) for name in FLAGS}


def debug_messages():
    """Every "Memory ..." format string the firmware prints."""
    found = set()
    for name in ("kheap.py", "harden.py"):
        for node in ast.walk(_module(name)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("Memory "):
                found.add(node.value)
    return found


def api_section(path):
    """The README's "## API" section: up to the next second-level heading."""
    text = path.read_text()
    m = re.search(r"^## API\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, f"{path.name}: no '## API' section"
    return m.group(1)


def mentions(text, name):
    # As a name of its own in a code span: `kmalloc(size)`, `VM_READ=0x1 VM_WRITE=0x2`
    # (not the argument in `mm_destroy(mm)`).
    word = re.compile(r"(?:^|\s)%s(?!\w)" % re.escape(name))
    return any(word.search(span) for span in re.findall(r"`([^`]+)`", text))


def test_the_firmware_sources_parse_as_expected():
    # Guards the helpers: if structs.py or __init__.py change shape, say so here.
    assert "kmalloc" in public_names() and len(public_names()) > 30
    assert layouts()["VM_AREA_STRUCT"] == (16, {"start": 0, "end": 4, "flags": 8, "next": 12})
    assert flag_values()["VM_READ"] == 1 and flag_values()["PAGE_SIZE"] == 4096
    assert "Memory allocation failed" in debug_messages()


@pytest.mark.parametrize("doc", [API, README, README_ZH], ids=lambda p: p.name)
def test_every_public_name_is_documented(doc):
    text = API.read_text() if doc is API else api_section(doc)
    missing = [n for n in public_names() if not mentions(text, n)]
    assert not missing, f"{doc.name} does not mention {missing}"


def _first_cells(path):
    rows = [line for line in api_section(path).splitlines() if line.startswith("| `")]
    return [re.findall(r"`([^`]+)`", row.split("|")[1]) for row in rows]


def test_both_readmes_have_the_same_api_rows():
    assert _first_cells(README_ZH) == _first_cells(README)


def test_struct_layouts_are_documented():
    api = API.read_text()
    for struct, (size, fields) in layouts().items():
        heading = next((line for line in api.splitlines()
                        if line.startswith("### ") and f"`{struct}`" in line), "")
        assert f"{size} bytes" in heading, f"API.md: no heading giving {struct}'s size"
        for field, offset in fields.items():
            assert re.search(r"^\| `%s` \| %d \| `UINT32` \|" % (field, offset), api, re.M), \
                f"API.md: {struct}.{field} at offset {offset}"
        for doc in (README, README_ZH):
            section = api_section(doc)
            assert all(f"{f}@{o}" in section for f, o in fields.items()), \
                f"{doc.name}: {struct}'s layout"
            assert re.search(r"`%s`[^`]*?%d" % (struct, size), section), \
                f"{doc.name}: {struct}'s size"


def test_flags_and_page_size_are_documented():
    api = API.read_text()
    for name, value in flag_values().items():
        m = re.search(r"^\| `%s` \| `(\w+)` \|" % name, api, re.M)
        assert m and int(m.group(1), 0) == value, f"API.md: {name} = {value:#x}"
        for doc in (README, README_ZH):
            m = re.search(r"\b%s=(\w+)" % name, api_section(doc))
            assert m and int(m.group(1), 0) == value, f"{doc.name}: {name} = {value:#x}"


def test_debug_messages_are_documented_exactly():
    api = API.read_text()
    for message in debug_messages():
        assert f"`{message}`" in api, f"API.md does not give {message!r}"


def _slug(heading):
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines()
            if line.startswith("#")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository_and_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.is_relative_to(ROOT), f"{doc.name}: {target} is outside the repository"
        assert dest.exists(), f"{doc.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.name}: no heading for {target}"


@pytest.mark.parametrize("doc", [README, README_ZH], ids=lambda p: p.name)
def test_readmes_name_no_path_outside_the_repository(doc):
    text = doc.read_text()
    assert "shared/seed" not in text
    outside = set(re.findall(r"\.\./[\w./*-]*", text)) - OUTSIDE_ALLOWED
    assert not outside, f"{doc.name} names {sorted(outside)}, outside the repository"
