"""Resumable download, checksum verification and atomic extraction (cl/data/download.py)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import urllib.error
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cl.data import download as dl
from cl.data.download import Resource, download, ensure_file, extract_archive
from cl.data.registry import ChecksumError, DatasetError, DatasetNotFoundError

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
PIECE = 1000


def _resource(payload: bytes = PAYLOAD, **kw: object) -> Resource:
    defaults = {"md5": hashlib.md5(payload).hexdigest(),
                "sha256": hashlib.sha256(payload).hexdigest()}
    defaults.update(kw)
    return Resource("blob.bin", ("https://example.org/blob.bin",), **defaults)  # type: ignore[arg-type]


class FlakyFetcher:
    """Serves PAYLOAD in pieces, honouring ``start``; the first ``failures`` calls break after
    ``break_after`` pieces."""

    def __init__(self, failures: int = 1, break_after: int = 3, honour_range: bool = True):
        self.failures = failures
        self.break_after = break_after
        self.honour_range = honour_range
        self.starts: list[int] = []

    def __call__(self, url: str, start: int):
        self.starts.append(start)
        offset = start if self.honour_range else 0
        fail = len(self.starts) <= self.failures

        def chunks() -> Iterator[bytes]:
            for i, pos in enumerate(range(offset, len(PAYLOAD), PIECE)):
                if fail and i == self.break_after:
                    raise ConnectionResetError("connection reset by peer")
                yield PAYLOAD[pos:pos + PIECE]

        return offset, len(PAYLOAD), chunks()


def test_download_resumes_within_one_call(tmp_path: Path) -> None:
    fetch = FlakyFetcher(failures=1, break_after=3)
    path = download(_resource(), tmp_path, fetch=fetch, attempts=2, retry_wait=0,
                    progress=False)
    assert path.read_bytes() == PAYLOAD
    assert fetch.starts == [0, 3 * PIECE]  # the retry asked only for the rest
    assert not (tmp_path / "blob.bin.part").exists()


def test_interrupted_run_keeps_part_and_next_run_resumes(tmp_path: Path) -> None:
    broken = FlakyFetcher(failures=10, break_after=2)
    with pytest.raises(DatasetNotFoundError, match="https://example.org/blob.bin"):
        download(_resource(), tmp_path, fetch=broken, attempts=1, retry_wait=0,
                 progress=False)
    part = tmp_path / "blob.bin.part"
    assert part.stat().st_size == 2 * PIECE
    assert not (tmp_path / "blob.bin").exists()  # never a half file under the final name

    fetch = FlakyFetcher(failures=0)
    path = download(_resource(), tmp_path, fetch=fetch, progress=False)
    assert fetch.starts == [2 * PIECE]
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_source_without_range_support_restarts_from_zero(tmp_path: Path) -> None:
    fetch = FlakyFetcher(failures=1, break_after=4, honour_range=False)
    path = download(_resource(), tmp_path, fetch=fetch, attempts=2, retry_wait=0,
                    progress=False)
    assert path.read_bytes() == PAYLOAD  # no duplicated bytes


def test_bad_download_fails_checksum_and_leaves_nothing(tmp_path: Path) -> None:
    resource = _resource(md5="0" * 32, sha256=None)
    with pytest.raises(ChecksumError, match="blob.bin"):
        download(resource, tmp_path, fetch=FlakyFetcher(failures=0), progress=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_offline_gives_clear_error(tmp_path: Path) -> None:
    def offline(url: str, start: int):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(DatasetNotFoundError) as err:
        download(_resource(), tmp_path / "sub", fetch=offline, attempts=2, retry_wait=0,
                 progress=False)
    message = str(err.value)
    assert "offline" in message and "https://example.org/blob.bin" in message
    assert str(tmp_path / "sub" / "blob.bin") in message
    assert not (tmp_path / "sub").exists(), "offline: no empty data folder is left behind"


def test_mirrors_are_tried_in_order(tmp_path: Path) -> None:
    calls: list[str] = []

    def fetch(url: str, start: int):
        calls.append(url)
        if "dead" in url:
            raise urllib.error.URLError("unreachable")
        return 0, len(PAYLOAD), [PAYLOAD]

    resource = Resource("blob.bin", ("https://dead.example/blob.bin", "https://ok.example/b"),
                        md5=hashlib.md5(PAYLOAD).hexdigest())
    download(resource, tmp_path, fetch=fetch, attempts=1, retry_wait=0, progress=False)
    assert calls == ["https://dead.example/blob.bin", "https://ok.example/b"]


def test_user_file_with_wrong_checksum_is_reported_and_kept(tmp_path: Path) -> None:
    user_file = tmp_path / "blob.bin"
    user_file.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(ChecksumError) as err:
        ensure_file(_resource(), tmp_path, allow_download=True, missing_message="missing",
                    fetch=FlakyFetcher(failures=0), progress=False)
    assert str(user_file) in str(err.value)
    assert user_file.read_bytes() == PAYLOAD[:-1] + b"x"


def test_missing_file_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="the layout"):
        ensure_file(_resource(), tmp_path / "none", allow_download=False,
                    missing_message="see the layout")
    assert not (tmp_path / "none").exists()


def test_file_url_fetch_resumes(tmp_path: Path) -> None:
    source = tmp_path / "src" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    offset, total, chunks = dl.urllib_fetch(source.as_uri(), 5000)
    assert (offset, total) == (5000, len(PAYLOAD))
    assert b"".join(chunks) == PAYLOAD[5000:]


# ----------------------------------------------------------------------------- real HTTP


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    requests: list[str | None] = []
    drop_first = True

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        header = self.headers.get("Range")
        type(self).requests.append(header)
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).drop_first and len(type(self).requests) == 1:
            self.wfile.write(body[:4096])  # then hang up mid-transfer
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve_and_download(directory: Path, drop_first: bool) -> Path:
    _RangeHandler.requests = []
    _RangeHandler.drop_first = drop_first
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
        resource = Resource("blob.bin", (url,), sha256=hashlib.sha256(PAYLOAD).hexdigest())
        return download(resource, directory, attempts=2, retry_wait=0, progress=False)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_http_download_resumes_with_range_header(tmp_path: Path) -> None:
    path = _serve_and_download(tmp_path, drop_first=True)
    assert path.read_bytes() == PAYLOAD
    assert _RangeHandler.requests == [None, "bytes=4096-"]


@pytest.mark.slow
def test_http_complete_part_is_not_downloaded_again(tmp_path: Path) -> None:
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)  # finished, but killed before the rename
    path = _serve_and_download(tmp_path, drop_first=False)
    assert path.read_bytes() == PAYLOAD
    assert _RangeHandler.requests == [f"bytes={len(PAYLOAD)}-"]


# ----------------------------------------------------------------------------- extraction


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


FILES = {f"tree/part{i}/file{j}.bin": os.urandom(3000) for i in range(3) for j in range(4)}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p for p in os.listdir(parent) if p.startswith(".tree"))


def test_extract_is_complete_and_marked(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "a.tar.gz", {**FILES, "README": b"outside the tree"})
    out = tmp_path / "out"
    out.mkdir()
    tree = extract_archive(archive, out, "tree", source={"md5": "abc"})
    assert sorted(str(p.relative_to(out)) for p in tree.rglob("*.bin")) == sorted(FILES)
    assert dl.read_marker(tree) == {"archive": "a.tar.gz", "md5": "abc"}
    assert sorted(os.listdir(out)) == ["tree"]  # README and temp dir gone


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_truncated_archive_leaves_no_partial_tree(tmp_path: Path, kind: str) -> None:
    if kind == "zip":
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for name, data in FILES.items():
                zipped.writestr(name, data)
    else:
        archive = _tar_gz(tmp_path / "a.tar.gz", FILES)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumError, match="a\\."):
        extract_archive(archive, out, "tree")
    assert os.listdir(out) == []
    assert archive.exists()  # the user's (broken) archive is not deleted


def test_interrupted_extraction_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    archive = _tar_gz(tmp_path / "a.tar.gz", FILES)
    real_unpack = dl._unpack

    def unpack_then_crash(path: Path, destination: Path) -> None:
        real_unpack(path, destination)  # the files are there ...
        raise KeyboardInterrupt  # ... but the process dies before the rename

    monkeypatch.setattr(dl, "_unpack", unpack_then_crash)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, out, "tree")
    assert os.listdir(out) == []


def test_extract_refuses_to_overwrite_user_tree(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "a.tar.gz", FILES)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="exists"):
        extract_archive(archive, tmp_path, "tree")
    assert (tmp_path / "tree" / "mine.txt").read_text() == "user data"


def test_archive_without_expected_folder(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "a.tar.gz", {"other/x.bin": b"1"})
    with pytest.raises(ChecksumError, match="tree"):
        extract_archive(archive, tmp_path, "tree")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "tree").exists()


def test_content_range_parsing() -> None:
    assert dl._content_range("bytes 4096-10239/10240") == (4096, 10240)
    assert dl._content_range("bytes */10240") == (None, 10240)
    assert dl._content_range("") == (None, None)
