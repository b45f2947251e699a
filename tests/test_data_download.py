"""Downloads against a local HTTP server: success, zip extraction, truncation, checksum, atomicity,
and the first run of a seed config downloading, preparing and training in one go (or, offline,
one error line)."""

import functools
import http.server
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import zipfile

import gin
import pytest

from conftest import REPO
from core.data.download import DownloadError, download, fetch
from core.dataset_config import DataMissingError, dataset

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
        ("/f.csv", {"rows": 2}, "1 rows, the official file has 2"),
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
           "--url", f"{base}/ratings_Beauty.csv", "--raw", str(tmp_path / "raw.csv"), "--out", str(tmp_path / "out")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "4 users, 3 items, 12 interactions" in result.stdout
    assert (tmp_path / "raw.csv").is_file()
    assert "downloading it from" in result.stderr and "\r" not in result.stderr  # no bar off a terminal


def beauty_log(root, n_users=40):
    """A Beauty-like ratings file (no header, string ids) served by the test server."""
    rows = "".join(f"U{u:03d},B{(u * 3 + k) % 17:02d},5.0,{1000 + 10 * u + k}\n"
                   for u in range(n_users) for k in range(5))
    (root / "ratings_Beauty.csv").write_text(rows)
    return rows


def closed_port() -> int:
    """A local port nothing listens on: connecting fails at once, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_message(err) -> str:
    """The error's own message, without the line gin appends ("In call to configurable ...")."""
    return str(err.value).split("\n  In call to configurable")[0]


def beauty_config(tmp_path, **overrides):
    return dict(name="beauty", fmt="amazon", path=str(tmp_path / "data" / "beauty"),
                raw=str(tmp_path / "data" / "raw" / "ratings_Beauty.csv"), **overrides)


def test_dataset_downloads_prepares_and_loads(server, tmp_path, caplog):
    """Issue 15.11: with dataset.download the configured Beauty data is fetched and prepared."""
    root, base = server
    beauty_log(root)
    caplog.set_level(logging.INFO, logger="core")
    loaded = dataset(**beauty_config(tmp_path, download=True, download_url=f"{base}/ratings_Beauty.csv"))
    assert loaded.source == tmp_path / "data" / "beauty" and loaded.data.n_users == 40
    assert loaded.data.user_ids[0] == "U000" and loaded.data.item_ids[1] == "B00"  # raw ids kept
    assert "downloading it from" in caplog.text and "preparing" in caplog.text  # it says what it does
    again = dataset(**beauty_config(tmp_path, download=True, download_url=f"{base}/nothing-here"))
    assert again.data.n_users == 40  # prepared data is reused: no second download


def test_offline_download_is_one_error_line_naming_source_and_command(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/ratings_Beauty.csv"
    with pytest.raises(DataMissingError) as err:
        dataset(**beauty_config(tmp_path, download=True, download_url=url))
    message = own_message(err)
    assert "\n" not in message and "cannot download" in message
    assert "download http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Beauty.csv to " in message
    assert "python tools/prepare_data.py --format amazon --download --raw " in message
    assert not (tmp_path / "data" / "beauty").exists()
    assert [p.name for p in (tmp_path / "data" / "raw").iterdir()] == []  # no partial download


def test_without_download_a_missing_raw_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataMissingError) as err:
        dataset(**beauty_config(tmp_path))
    message = own_message(err)
    assert "\n" not in message and "dataset.download = True" in message
    assert "python tools/prepare_data.py --format amazon --download" in message
    assert not (tmp_path / "data").exists()


def test_the_seed_configs_download_their_data():
    for name in ("beauty", "ml20m"):
        gin.clear_config()
        gin.parse_config_file(str(REPO / "gin" / "data" / f"{name}.gin"))
        assert gin.query_parameter("dataset.download") is True
        assert gin.query_parameter("dataset.raw").startswith("data/raw/")
    gin.clear_config()


def test_first_command_downloads_prepares_and_trains(server, tmp_path):
    """Issue 15.11: `python experiments/run.py --gin gin/beauty_cce.gin` on a machine with internet."""
    root, base = server
    beauty_log(root, n_users=60)
    c = beauty_config(tmp_path)
    bindings = [f"dataset.path = '{c['path']}'", f"dataset.raw = '{c['raw']}'",
                f"dataset.download_url = '{base}/ratings_Beauty.csv'", "train.epochs = 1", "train.device = 'cpu'"]
    out = tmp_path / "run"
    cmd = [sys.executable, "experiments/run.py", "--gin", "gin/beauty_cce.gin", "--out", str(out)]
    for binding in bindings:
        cmd += ["--gin_bindings", binding]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "downloading it from" in result.stderr and "preparing" in result.stderr
    assert json.loads((out / "metrics.json").read_text())["dataset"]["name"] == "beauty"
    assert (tmp_path / "data" / "raw" / "ratings_Beauty.csv").is_file()

    offline = [b if "download_url" not in b else f"dataset.download_url = 'http://127.0.0.1:{closed_port()}/x'"
               for b in bindings]
    offline[0] = f"dataset.path = '{tmp_path / 'elsewhere'}'"
    offline[1] = f"dataset.raw = '{tmp_path / 'elsewhere.csv'}'"
    cmd = [sys.executable, "experiments/run.py", "--gin", "gin/beauty_cce.gin", "--out", str(tmp_path / "run2")]
    for binding in offline:
        cmd += ["--gin_bindings", binding]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot download" in errors[0], result.stderr
    assert not (tmp_path / "run2").exists()
