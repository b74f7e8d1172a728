"""``data fetch`` against a real HTTP server on 127.0.0.1 serving a copy laid out like the data root."""

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from promptintern.paths import data_file
from promptintern.tasks.fetch import FetchError, fetch, file_specs


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def mirror(tmp_path):
    """Serve mbpp/ and nl2bash/ (copied from the data root) over HTTP on loopback."""
    root = tmp_path / "served"
    for spec in file_specs(["mbpp", "nl2bash"]):
        target = root / spec.dataset / spec.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_file(spec.dataset, spec.path), target)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_fetch_downloads_and_verifies(mirror, tmp_path):
    url, _ = mirror
    dest = tmp_path / "dest"
    report = fetch(dest, ["mbpp", "nl2bash"], mirror=url)
    assert sorted(report["fetched"]) == [
        "mbpp/mbpp.jsonl",
        "nl2bash/all.cm",
        "nl2bash/all.nl",
        "nl2bash/random_tokens.txt",
    ]
    assert (dest / "mbpp" / "mbpp.jsonl").read_bytes() == data_file("mbpp", "mbpp.jsonl").read_bytes()
    again = fetch(dest, ["mbpp"], mirror=url)
    assert again == {"fetched": [], "present": ["mbpp/mbpp.jsonl"], "skipped": []}


def test_fetched_root_is_used_by_loaders(mirror, tmp_path, monkeypatch):
    from promptintern.tasks import get_task

    url, _ = mirror
    dest = tmp_path / "dest"
    fetch(dest, ["mbpp"], mirror=url)
    monkeypatch.setenv("PROMPTINTERN_DATA", str(dest))
    assert len(get_task("mbpp").load("test")) == 500


def test_corrupt_download_is_rejected_and_not_kept(mirror, tmp_path):
    url, root = mirror
    (root / "mbpp" / "mbpp.jsonl").write_text("tampered\n")
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match="sha256 .* does not match"):
        fetch(dest, ["mbpp"], mirror=url)
    assert not any((dest / "mbpp").iterdir())


def test_missing_file_and_unknown_dataset(mirror, tmp_path):
    url, root = mirror
    (root / "nl2bash" / "all.cm").unlink()
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(tmp_path / "dest", ["nl2bash"], mirror=url)
    with pytest.raises(FetchError, match="unknown dataset 'imdb'"):
        fetch(tmp_path / "dest", ["imdb"])


def test_spider_without_mirror_is_skipped_not_faked(tmp_path):
    report = fetch(tmp_path / "dest", ["spider"])
    assert report["fetched"] == [] and "spider/dev.json" in report["skipped"]
