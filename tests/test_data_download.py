"""Downloads against a local HTTP server: success, zip extraction, truncation, checksum, atomicity."""

import functools
import http.server
import io
import subprocess
import sys
import threading
import zipfile

import pytest

from conftest import REPO
from core.data.download import DownloadError, download, fetch

RATINGS = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},4.0,{100 * u + i}\n" for u in range(1, 6) for i in range(1, 6))


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path == "/short":  # announces more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_ml20m_zip_extracts_ratings(server, tmp_path):
    root, base = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-20m/movies.csv", "movieId,title\n")
        zf.writestr("ml-20m/ratings.csv", RATINGS)
    (root / "ml-20m.zip").write_bytes(buf.getvalue())
    dest = fetch("ml20m", tmp_path / "raw" / "ratings.csv", url=f"{base}/ml-20m.zip", progress=False)
    assert dest.read_text() == RATINGS
    assert [p.name for p in dest.parent.iterdir()] == ["ratings.csv"]  # zip and temporaries gone


def test_fetch_beauty_plain_file(server, tmp_path):
    root, base = server
    (root / "ratings_Beauty.csv").write_text("A,B,5.0,1\n")
    dest = fetch("beauty", tmp_path / "b.csv", url=f"{base}/ratings_Beauty.csv", progress=False)
    assert dest.read_text() == "A,B,5.0,1\n"


@pytest.mark.parametrize(
    "path, kwargs, message",
    [
        ("/short", {}, "truncated|failed"),
        ("/missing.csv", {}, "404"),
        ("/f.csv", {"md5": "0" * 32}, "MD5"),
        ("/f.csv", {"size": 3}, "official file has 3"),
    ],
)
def test_download_failures_leave_nothing(server, tmp_path, path, kwargs, message):
    root, base = server
    (root / "f.csv").write_text("A,B,5.0,1\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError, match=message):
        download(base + path, out / "file.csv", progress=False, **kwargs)
    assert list(out.iterdir()) == []


def test_corrupt_zip(server, tmp_path):
    root, base = server
    (root / "bad.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(DownloadError, match="corrupt zip"):
        fetch("ml20m", tmp_path / "raw" / "r.csv", url=f"{base}/bad.zip", progress=False)
    assert list((tmp_path / "raw").iterdir()) == []


def test_cli_download_then_prepare(server, tmp_path):
    root, base = server
    (root / "ratings_Beauty.csv").write_text("".join(f"U{u},I{i},5.0,{u + i}\n" for u in range(4) for i in range(3)))
    cmd = [sys.executable, str(REPO / "tools" / "prepare_data.py"), "--format", "amazon", "--download",
           "--url", f"{base}/ratings_Beauty.csv", "--raw", str(tmp_path / "raw.csv"), "--out", str(tmp_path / "out"),
           "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "4 users, 3 items, 12 interactions" in result.stdout
    assert (tmp_path / "raw.csv").is_file()
