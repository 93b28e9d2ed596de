"""Downloads (sha256, resume, atomic) against a loopback HTTP server, and safe archive extraction."""
import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile

import pytest

from common.data.archive import extract
from common.data.download import download
from common.errors import InputError, RuntimeFailure

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    cut_after = None  # bytes to send before dropping the connection (simulates an interrupted transfer)
    ranges_seen = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        start = 0
        rng = self.headers.get("Range")
        type(self).ranges_seen.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            self.wfile.write(body[:type(self).cut_after])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop mid-body: the client sees a short read
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.cut_after, _Handler.ranges_seen = None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_renames(server, tmp_path):
    dest = download(server, tmp_path / "f.bin", sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()


def test_checksum_mismatch_names_both_hashes(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(InputError) as ei:
        download(server, tmp_path / "f.bin", sha256=wrong)
    assert wrong in str(ei.value) and SHA in str(ei.value)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_interrupted_download_resumes(server, tmp_path):
    _Handler.cut_after = 100_000
    with pytest.raises(RuntimeFailure, match="rerun to resume"):
        download(server, tmp_path / "f.bin", sha256=SHA)
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == 100_000 and not (tmp_path / "f.bin").exists()
    _Handler.cut_after = None
    download(server, tmp_path / "f.bin", sha256=SHA)
    assert _Handler.ranges_seen[-1] == "bytes=100000-"
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_http_error_is_clear(tmp_path):
    with pytest.raises(RuntimeFailure, match="download"):
        download("http://127.0.0.1:9/none", tmp_path / "x", timeout=2)


def _tar(tmp_path, add):
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        add(tf)
    return path


def _member(tf, name, data=b"x", **kw):
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = len(data) if info.type == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name,kw", [
    ("../evil.txt", {}),
    ("/tmp/evil_abs.txt", {}),
    ("link", {"type": tarfile.SYMTYPE, "linkname": "../../etc/passwd"}),
    ("hard", {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}),
])
def test_tar_escape_refused(tmp_path, name, kw):
    path = _tar(tmp_path, lambda tf: _member(tf, name, **kw))
    with pytest.raises(InputError, match="outside"):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_traversal_refused_and_good_zip_extracts(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escape.txt", "bad")
    with pytest.raises(InputError, match="outside"):
        extract(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()  # nothing written before the check
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("val2017/a.txt", "fine")
    assert (extract(good, tmp_path / "out2") / "val2017" / "a.txt").read_text() == "fine"


def test_truncated_or_foreign_archive(tmp_path):
    good = tmp_path / "g.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("a.txt", "x" * 1000)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(InputError, match="not a zip or tar"):
        extract(junk, tmp_path / "o")
