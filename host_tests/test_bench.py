"""make bench's tool: it runs on a target and reports every figure (never asserting a
timing); the deterministic ones (occupancy, header bytes) are kmem's design and are checked."""
import json

from kmemhost import bench


def test_quick_bench_on_the_unix_port_reports_every_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    code = bench.main(["--target", "unix", "--quick", "--rounds", "1"])
    out = capsys.readouterr().out
    assert code in (0, 1)  # 1: a speed target is not met yet; reported, not asserted here
    [written] = tmp_path.glob("unix-*.json")
    r = json.loads(written.read_text())
    assert set(r["pair_ns"]) == {"16", "256", "4096"} and r["bytearray_ns"]["median"] > 0
    assert {"kmalloc", "kfree", "krealloc", "all"} <= set(r["trace_us"])
    assert r["header_bytes_per_live_block"] == 4      # one header word per block
    assert r["occupancy"] >= 0.90                     # seeded: the same fill every run
    assert 0 < r["import_bytes"] < r["heap"]
    for what in ("pair(L=16) / bytearray(32)", "occupancy at first failure", "header bytes"):
        assert what in out
    assert ("PASS" in out) or ("FAIL" in out)


def test_a_board_too_small_for_4096_live_blocks_says_so():
    r = {"bytearray_ns": {"median": 100}, "pair_ns": {16: {"median": 150}, 256: {"median": 160}},
         "pair_ratio": {16: {"median": 1.5}, 256: {"median": 1.6}},
         "occupancy": 0.95, "small_arena": 65536, "header_bytes_per_live_block": 4, "arch": "armv6m",
         "import_bytes": 20000}
    rows = {what: ok for what, _, _, ok in bench.verdicts(r)}
    assert rows == {"pair(L=16) / bytearray(32)": True, "occupancy at first failure (64 KiB)": True,
                    "header bytes per live block": True, "import kmem, KiB of heap": False}


def test_fewer_live_blocks_on_a_small_heap_and_it_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.main(["--target", "unix:esp32_generic", "--quick", "--rounds", "1"])
    r = json.loads(next(tmp_path.glob("unix-esp32_generic-*.json")).read_text())
    assert "16" in r["pair_ns"] and "4096" not in r["pair_ns"]
    assert "needs a" in r["skipped_live"]["4096"]
    out = capsys.readouterr().out
    assert "L=4096: skipped, needs a" in out
    assert r["small_arena"] < 65536 and "a 64 KiB one does not fit" in out


def _have_revision(rev):
    import subprocess
    from kmemhost import ROOT
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", rev + "^{commit}"],
                          capture_output=True).returncode == 0


def test_the_previous_core_is_measured_the_same_way(tmp_path, monkeypatch, capsys):
    if not _have_revision(bench.REFERENCE):
        import pytest
        pytest.skip(f"this checkout has no git history back to {bench.REFERENCE}")
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.main(["--target", "unix", "--quick", "--rounds", "1", "--reference"])
    r = json.loads(next(tmp_path.glob("unix-*.json")).read_text())
    ref = r["reference"]
    assert ref["revision"] == bench.REFERENCE and ref["header_bytes_per_live_block"] == 4
    assert set(ref["pair_ns"]) == set(r["pair_ns"])
    out = capsys.readouterr().out
    assert f"reference: kmem at {bench.REFERENCE}" in out and "gain: pair(L=16)" in out
