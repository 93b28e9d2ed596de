"""The models' sha256 remembered by file identity and change stamps: the same digest as hashing, a changed file
hashed again, a just-written file never remembered, and a memo that cannot be used only costs the hashing; the same
for the engine cache's remembered answers (EngineCache.remembered)."""
import os

import pytest

import common.engine_cache as ec
from common.engine_cache import file_sha256, file_sha256_memo
from common.errors import InputError


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (a test cannot wait two seconds per file)."""
    monkeypatch.setattr(ec, "_MEMO_SETTLED_NS", -10**18)


def _no_hashing(monkeypatch):
    def refuse(path, chunk=1 << 20):
        raise AssertionError("hashed although remembered")
    monkeypatch.setattr(ec, "file_sha256", refuse)


def test_remembered_digest_is_the_files(tmp_path, monkeypatch, settled):
    model = tmp_path / "m.onnx"
    model.write_bytes(os.urandom(3 << 20))
    memo = tmp_path / "memo"
    first = file_sha256_memo(model, memo)
    assert first == file_sha256(model)
    _no_hashing(monkeypatch)
    assert file_sha256_memo(model, memo) == first  # served by the memo


def test_changed_file_is_hashed_again(tmp_path, settled):
    """Planted: the same size, rewritten in place (same inode): the change stamps move, so it is hashed anew."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"a" * 1000)
    memo = tmp_path / "memo"
    first = file_sha256_memo(model, memo)
    st = os.stat(model)
    with open(model, "r+b") as f:
        f.write(b"b")
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with mtime put back, ctime has moved
    assert file_sha256_memo(model, memo) == file_sha256(model) != first


def test_fresh_file_is_not_remembered(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"fresh")
    memo = tmp_path / "memo"
    assert file_sha256_memo(model, memo) == file_sha256(model)
    assert not memo.exists() or not list(memo.iterdir())


@pytest.mark.parametrize("kind", ["file", "none", "garbage"])
def test_unusable_memo_only_costs_the_hashing(tmp_path, settled, kind):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 5000)
    memo = tmp_path / "memo"
    if kind == "file":
        memo.write_text("not a directory")
    elif kind == "garbage":
        file_sha256_memo(model, memo)
        for entry in memo.iterdir():
            entry.write_text("not a digest")
    assert file_sha256_memo(model, None if kind == "none" else memo) == file_sha256(model)


def test_missing_model_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        file_sha256_memo(tmp_path / "absent.onnx", tmp_path / "memo")


def test_a_remembered_answer_is_computed_once_and_never_trusted_when_damaged(tmp_path):
    cache = ec.EngineCache(tmp_path / "c")
    calls = []

    def compute():
        calls.append(1)
        return {"verdict": "fail", "n": len(calls)}
    assert cache.remembered("check", "k1", compute) == ({"verdict": "fail", "n": 1}, False)
    assert cache.remembered("check", "k1", compute) == ({"verdict": "fail", "n": 1}, True)
    assert cache.remembered("check", "k2", compute) == ({"verdict": "fail", "n": 2}, False)   # another key
    (tmp_path / "c" / "check" / "k1.json").write_text('{"verdict": "pa')                  # a torn entry
    assert cache.remembered("check", "k1", compute) == ({"verdict": "fail", "n": 3}, False)
    assert cache.remembered("check", "k1", compute)[1] is True


def test_an_unwritable_cache_only_costs_the_computing(tmp_path):
    (tmp_path / "file").write_text("")
    cache = ec.EngineCache(tmp_path / "file" / "c")     # under a file: nothing can be read or written there
    assert cache.remembered("check", "k", lambda: [1, 2]) == ([1, 2], False)
    assert cache.remembered("check", "k", lambda: [1, 2]) == ([1, 2], False)


def test_a_parsed_file_is_remembered_by_its_bytes_and_a_damaged_entry_is_parsed_again(tmp_path):
    import datetime
    cache = ec.EngineCache(tmp_path / "c")
    calls = []

    def parse(value):
        def run():
            calls.append(1)
            return value
        return run
    doc = {"a": [1, 2.5, None, True], 3: "int key"}
    assert cache.parsed("doc", b"bytes-1", parse(doc), "v1") == doc and len(calls) == 1
    assert cache.parsed("doc", b"bytes-1", parse("unused"), "v1") == doc and len(calls) == 1      # remembered
    assert cache.parsed("doc", b"bytes-2", parse("other"), "v1") == "other" and len(calls) == 2   # other bytes
    assert cache.parsed("doc", b"bytes-1", parse("new"), "v2") == "new" and len(calls) == 3       # parser changed
    fresh = ec.EngineCache(tmp_path / "fresh")
    assert fresh.parsed("doc", b"bytes-1", parse(doc), "v1") == doc
    (entry,) = (tmp_path / "fresh" / "doc").iterdir()
    cache = fresh
    blob = bytearray(entry.read_bytes())
    blob[blob.index(bytes.fromhex("0000000000000440"))] ^= 1
    # planted above: one flipped bit on disk, in the float 2.5 (marshal alone would read it as another number)
    entry.write_bytes(bytes(blob))
    assert cache.parsed("doc", b"bytes-1", parse({"fresh": 1}), "v1") == {"fresh": 1}
    entry.write_bytes(entry.read_bytes()[:5])                                # planted: a torn entry
    assert cache.parsed("doc", b"bytes-1", parse([7]), "v1") == [7]
    assert cache.parsed("doc", b"bytes-1", parse("unused"), "v1") == [7]
    when = {"at": datetime.date(2026, 11, 29)}                               # marshal cannot write it
    assert cache.parsed("doc", b"dated", parse(when), "v1") == when
    assert cache.parsed("doc", b"dated", parse("again"), "v1") == "again"  # so it was never remembered


def test_a_refused_parse_is_never_remembered(tmp_path):
    cache = ec.EngineCache(tmp_path / "c")

    def refuse():
        raise ValueError("bad file")
    for _ in range(2):
        with pytest.raises(ValueError, match="bad file"):
            cache.parsed("doc", b"x", refuse, "v1")
    assert not (tmp_path / "c" / "doc").exists()
    (tmp_path / "file").write_text("")
    unwritable = ec.EngineCache(tmp_path / "file" / "c")
    assert unwritable.parsed("doc", b"x", lambda: [1], "v1") == [1]
