"""Downloads cut in the ways real servers cut them, against a loopback HTTP server started (and stopped) here:
a chunked body cut mid-chunk, a body without Content-Length (`Connection: close`) cut short, with and without a
sha256, and servers that ignore Range. A half-downloaded file never sits under the final name, the bytes received
are kept in `.part`, and the rerun resumes from them (docs/robustness.md)."""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest

from common.data.archive import archive_is_complete
from common.data.download import download
from common.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, InputError, RuntimeFailure

PAYLOAD = np.random.default_rng(20).integers(0, 256, 200_000, dtype=np.uint8).tobytes()  # fixed: test ids
SHA = hashlib.sha256(PAYLOAD).hexdigest()
CUT = 70_000          # bytes of the body sent before the first response is dropped


class _Server(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "chunked"          # chunked | close (no Content-Length) ; with honour_range False: Range is ignored
    honour_range = True
    cuts_left = 1             # responses still to cut short
    payload = PAYLOAD
    requests: list = []

    def log_message(self, *args):
        pass

    def _send_chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def do_GET(self):
        cls = type(self)
        rng = self.headers.get("Range") if cls.honour_range else None
        cls.requests.append(self.headers.get("Range"))
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(cls.payload) and rng:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.send_header("Content-Range", f"bytes */{len(cls.payload)}")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        body = cls.payload[start:]
        cut = cls.cuts_left > 0
        cls.cuts_left -= 1
        if cls.mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            for i in range(0, len(body), 16_384):
                piece = body[i:i + 16_384]
                if cut and sent + len(piece) > CUT:      # drop the connection in the middle of this chunk
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece[:CUT - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send_chunk(piece)
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        else:                                             # close-delimited: no length at all
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[:CUT] if cut else body)
            self.close_connection = True
        self.wfile.flush()


@pytest.fixture
def server():
    _Server.mode, _Server.honour_range, _Server.cuts_left, _Server.payload = "chunked", True, 1, PAYLOAD
    _Server.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/val2017.zip"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=10)


def _get(url, dest, **kw):
    return download(url, dest, timeout=10, chunk=1 << 16, **kw)


def test_chunked_download_cut_mid_chunk_keeps_the_bytes_and_resumes(server, tmp_path):
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    with pytest.raises(RuntimeFailure, match="rerun to resume") as ei:
        _get(server, dest, sha256=SHA)
    assert ei.value.exit_code == EXIT_RUNTIME
    assert not dest.exists()
    kept = part.read_bytes()
    assert len(kept) > 16_384 and kept == PAYLOAD[:len(kept)]        # received bytes kept, in order
    assert _get(server, dest, sha256=SHA).read_bytes() == PAYLOAD
    assert _Server.requests[-1] == f"bytes={len(kept)}-"             # resumed, not restarted
    assert not part.exists()


@pytest.mark.parametrize("sha", [None, SHA], ids=["no-sha", "sha"])
def test_download_without_length_cut_short_is_never_renamed(server, tmp_path, sha):
    _Server.mode = "close"
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    with pytest.raises(RuntimeFailure, match="incomplete") as ei:
        _get(server, dest, sha256=sha)
    assert ei.value.exit_code == EXIT_RUNTIME
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:CUT]   # kept for the resume
    assert _get(server, dest, sha256=sha).read_bytes() == PAYLOAD      # resumed to the end, then renamed
    assert not part.exists()


def test_complete_file_of_unknown_length_with_a_wrong_sha_is_bad_input(server, tmp_path):
    _Server.mode, _Server.cuts_left = "close", 0
    with pytest.raises(InputError, match="checksum mismatch") as ei:
        _get(server, tmp_path / "f.bin", sha256="0" * 64)
    assert ei.value.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_no_length_and_range_ignored_needs_a_sha_or_a_completeness_check(server, tmp_path):
    _Server.mode, _Server.honour_range, _Server.cuts_left = "close", False, 0
    dest = tmp_path / "f.bin"
    with pytest.raises(RuntimeFailure, match="give its sha256"):
        _get(server, dest)
    assert not dest.exists()
    assert _get(server, dest, sha256=SHA).read_bytes() == PAYLOAD


def test_archive_structure_decides_where_nothing_else_can(server, tmp_path):
    """datasets/prepare.py's case: a zip from a server with no length and no Range support."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("val2017/a.jpg", PAYLOAD)
    _Server.payload = buf.getvalue()
    _Server.mode, _Server.honour_range, _Server.cuts_left = "close", False, 1
    dest = tmp_path / "val2017.zip"
    with pytest.raises(RuntimeFailure, match="not complete"):
        _get(server, dest, complete=archive_is_complete)             # the cut copy has no central directory
    assert not dest.exists()
    assert _get(server, dest, complete=archive_is_complete).read_bytes() == _Server.payload


def test_a_resume_answered_from_the_wrong_offset_or_a_too_long_part_starts_over(server, tmp_path):
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    part.write_bytes(PAYLOAD[:1000] + b"x" * (len(PAYLOAD) + 10))       # longer than the file: not its prefix
    _Server.cuts_left = 0
    with pytest.raises(RuntimeFailure, match="rerun to start over"):
        _get(server, dest, sha256=SHA)
    assert not part.exists() and not dest.exists()
    assert _get(server, dest, sha256=SHA).read_bytes() == PAYLOAD


def test_never_downloads_through_a_link(server, tmp_path):
    theirs = tmp_path / "theirs.bin"
    theirs.write_bytes(b"user data")
    (tmp_path / "f.bin.part").symlink_to(theirs)
    with pytest.raises(InputError, match="is a link"):
        _get(server, tmp_path / "f.bin", sha256=SHA)
    assert theirs.read_bytes() == b"user data"
