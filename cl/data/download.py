"""Download, verify and extract dataset files without ever leaving half a dataset on disk.

Three guarantees, each tested on local fixtures:

* **Resumable downloads.** Bytes go to ``<file>.part``; an interrupted transfer keeps it and the
  next attempt (in the same call or a later run) asks the server for the rest with an HTTP
  ``Range`` header. Only a complete file whose checksum matches is renamed to its final name.
* **Verified files.** Every resource carries the checksum published for it (MD5 and/or SHA-256).
  A file on disk that does not match raises :class:`~cl.data.errors.ChecksumError` naming the
  file; it is never used and never deleted (it may be the user's own copy).
* **Atomic extraction.** Archives are unpacked into a temporary folder next to the target and the
  finished top-level folder is renamed into place, so a crash mid-extraction leaves either nothing
  or the complete tree. A small marker file inside the tree records which archive it came from.

Nothing here knows about a particular dataset; the dataset modules describe their files with
:class:`Resource` and call :func:`ensure_file` and :func:`extract_archive` (or
:func:`ensure_extracted`, which does both for a dataset shipped as one archive).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cl.data.errors import ChecksumError, DatasetError, DatasetNotFoundError

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
MARKER_NAME = ".norga_source.json"
USER_AGENT = "norga-data/0.1 (+https://pypi.org/project/norga)"

# fetch(url, start) -> (offset of the first byte returned, total size or None, byte chunks).
# The offset is ``start`` when the source honoured the range request and 0 when it sends the
# whole file again.
FetchResult = tuple[int, "int | None", Iterable[bytes]]
Fetcher = Callable[[str, int], FetchResult]


@dataclass(frozen=True)
class Resource:
    """One downloadable file and the checksums published for it.

    Attributes
    ----------
    filename:
        Name of the file on disk (inside the dataset's directory).
    urls:
        Download locations, tried in order (official URL first, then mirrors).
    md5, sha256:
        Expected hex digests; ``None`` where no checksum is published. At least one should be set;
        a resource without any is accepted on a structural check only and its SHA-256 is logged.
    """

    filename: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None

    @property
    def url(self) -> str:
        """The primary (official) URL."""
        return self.urls[0]

    @property
    def has_checksum(self) -> bool:
        return self.md5 is not None or self.sha256 is not None

    def describe(self) -> str:
        """``"<url> (md5 ...)"`` for error messages."""
        sums = [f"{kind} {value}" for kind, value in (("md5", self.md5), ("sha256", self.sha256))
                if value]
        return f"{self.url} ({', '.join(sums) if sums else 'no published checksum'})"

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable description for ``Benchmark.info``."""
        return {"file": self.filename, "urls": list(self.urls), "md5": self.md5,
                "sha256": self.sha256}


# ----------------------------------------------------------------------------- checksums


def file_digests(path: str | Path) -> dict[str, str]:
    """MD5 and SHA-256 hex digests of ``path``, computed in one streaming pass."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_SIZE), b""):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _mismatch(resource: Resource, digests: dict[str, str]) -> str | None:
    """Description of the first checksum that does not match, or ``None``."""
    for kind in ("sha256", "md5"):
        expected = getattr(resource, kind)
        if expected is not None and digests[kind] != expected.lower():
            return f"{kind} is {digests[kind]} but {expected.lower()} was expected"
    return None


def verify_file(path: str | Path, resource: Resource) -> dict[str, str]:
    """Check ``path`` against the checksums of ``resource``.

    Returns
    -------
    dict
        The ``md5`` and ``sha256`` of the file (for provenance).

    Raises
    ------
    ChecksumError
        If a published checksum does not match. The file is left where it is.
    """
    path = Path(path)
    digests = file_digests(path)
    problem = _mismatch(resource, digests)
    if problem is not None:
        raise ChecksumError(
            f"checksum mismatch for {path}: {problem} (expected the file from "
            f"{resource.url}). The file was not used and was left in place; it is corrupt, "
            f"truncated or a different version. Move or delete it and run again with "
            f"--download, or replace it with a good copy."
        )
    if not resource.has_checksum:
        log.warning("%s has no published checksum; accepted with sha256 %s", path,
                    digests["sha256"])
    return digests


# ----------------------------------------------------------------------------- fetching


def _file_url_fetch(url: str, start: int) -> FetchResult:
    path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    size = path.stat().st_size
    offset = start if start <= size else 0

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as stream:
            stream.seek(offset)
            yield from iter(lambda: stream.read(CHUNK_SIZE), b"")

    return offset, size, chunks()


def _response_chunks(response: Any) -> Iterator[bytes]:
    with response:
        yield from iter(lambda: response.read(CHUNK_SIZE), b"")


def _content_range(header: str) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of ``Content-Range: bytes <first>-<last>/<total>`` (or
    ``bytes */<total>``); ``None`` for parts that are absent or ``*``."""
    spec = header.strip().removeprefix("bytes").strip()
    span, _, total = spec.partition("/")
    first = span.partition("-")[0]
    return (int(first) if first.isdigit() else None, int(total) if total.isdigit() else None)


def urllib_fetch(url: str, start: int = 0, *, timeout: float = 60.0) -> FetchResult:
    """Default fetcher: ``urllib`` with an HTTP ``Range`` request when resuming.

    ``file://`` URLs are served from disk (with seeking), which is how the tests and users with
    a local mirror point the loaders at a copy without a network.
    """
    if urllib.parse.urlparse(url).scheme == "file":
        return _file_url_fetch(url, start)
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start > 0:  # range not satisfiable
            total = _content_range(err.headers.get("Content-Range", ""))[1]
            if total == start:  # the .part is already complete
                return start, total, iter(())
            return urllib_fetch(url, 0, timeout=timeout)  # not a prefix we can extend
        raise
    if response.status == 206:
        first, total = _content_range(response.headers.get("Content-Range", ""))
        return (start if first is None else first), total, _response_chunks(response)
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None, _response_chunks(response)


# ----------------------------------------------------------------------------- locking


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<target>.lock`` (POSIX), so that concurrent processes (e.g.
    DDP ranks started together) do not download or extract the same file twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    lock_path = target.with_name(target.name + ".lock")
    while True:
        handle = lock_path.open("a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # the holder removed this lock file meanwhile: lock the new one
    try:
        yield
    finally:
        # removed while still held, so nobody can lock a stale file (checked above)
        with contextlib.suppress(OSError):
            lock_path.unlink()
        handle.close()


# ----------------------------------------------------------------------------- download


def _transfer(url: str, part: Path, fetch: Fetcher, progress: bool) -> None:
    """Append the missing bytes of ``url`` to ``part`` (restarting if the source cannot resume)."""
    have = part.stat().st_size if part.exists() else 0
    offset, total, chunks = fetch(url, have)
    if offset not in (0, have):
        raise OSError(f"source answered from byte {offset}, but {have} bytes are on disk")
    if have and offset == 0:
        log.info("%s: the source cannot resume; starting again from byte 0", url)
    mode = "ab" if offset else "wb"
    with part.open(mode) as stream, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         desc=part.name.removesuffix(".part"),
                                         disable=None if progress else True) as bar:
        for chunk in chunks:
            stream.write(chunk)
            bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise OSError(f"transfer ended after {size} of {total} bytes")


def download(resource: Resource, directory: str | Path, *, fetch: Fetcher | None = None,
             attempts: int = 3, retry_wait: float = 2.0, progress: bool = True) -> Path:
    """Download ``resource`` into ``directory``, resuming a previous ``.part`` file.

    Each URL is tried ``attempts`` times (every retry resumes where the last one stopped); the
    complete file is verified before it is renamed to its final name.

    Parameters
    ----------
    resource:
        What to download and the checksums it must match.
    directory:
        Destination directory (created if needed).
    fetch:
        Transfer function ``fetch(url, start) -> (offset, total, chunks)``; defaults to
        :func:`urllib_fetch`. Tests inject failing fetchers here.
    attempts, retry_wait:
        Tries per URL and the pause (seconds, doubled each time) between them.
    progress:
        Show a tqdm progress bar (only on a terminal).

    Returns
    -------
    Path
        The verified file.

    Raises
    ------
    DatasetNotFoundError
        If no URL could be downloaded (offline, HTTP error); the ``.part`` file is kept so that a
        later run resumes.
    ChecksumError
        If the downloaded bytes do not match the published checksum (the bad ``.part`` file,
        which this function created, is removed).
    """
    return _download(resource, directory, fetch=fetch, attempts=attempts,
                     retry_wait=retry_wait, progress=progress)[0]


def _download(resource: Resource, directory: str | Path, *, fetch: Fetcher | None = None,
              attempts: int = 3, retry_wait: float = 2.0,
              progress: bool = True) -> tuple[Path, dict[str, str]]:
    fetch = fetch or urllib_fetch
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / resource.filename
    part = directory / (resource.filename + ".part")
    errors: list[str] = []
    bad_checksum: str | None = None
    with _locked(target):
        if target.exists():  # another process finished it while we waited for the lock
            return target, verify_file(target, resource)
        for url in resource.urls:
            for attempt in range(1, attempts + 1):
                try:
                    log.info("downloading %s (attempt %d/%d)", url, attempt, attempts)
                    _transfer(url, part, fetch, progress)
                except (OSError, http.client.HTTPException) as err:
                    errors.append(f"{url}: {err}")
                    log.warning("download of %s interrupted: %s", url, err)
                    if attempt < attempts and retry_wait > 0:
                        time.sleep(retry_wait * 2 ** (attempt - 1))
                    continue
                digests = file_digests(part)
                problem = _mismatch(resource, digests)
                if problem is None:
                    os.replace(part, target)
                    log.info("downloaded %s (sha256 %s)", target, digests["sha256"])
                    if not resource.has_checksum:
                        log.warning("%s has no published checksum; accepted with sha256 %s",
                                    target, digests["sha256"])
                    return target, digests
                part.unlink()
                bad_checksum = f"{url}: {problem}"
                errors.append(bad_checksum)
                break  # a complete but wrong file: try the next mirror
    if bad_checksum is not None:
        raise ChecksumError(
            f"the download of {resource.filename} does not match its published checksum "
            f"({bad_checksum}); the bad download was removed and nothing was used."
        )
    raise DatasetNotFoundError(
        f"could not download {resource.filename} (is this machine offline?). Tried: "
        + "; ".join(errors)
        + f". Download {resource.describe()} by other means and put it at {target}"
        + (f" (the partial file {part} is kept and will be resumed)." if part.exists() else ".")
    )


def ensure_file(resource: Resource, directory: str | Path, *, allow_download: bool,
                missing_message: str, fetch: Fetcher | None = None,
                progress: bool = True) -> tuple[Path, dict[str, str]]:
    """Return the verified file ``directory / resource.filename``, downloading it if allowed.

    Parameters
    ----------
    missing_message:
        Message of the :class:`DatasetNotFoundError` raised when the file is absent and
        ``allow_download`` is false (the dataset's URL and expected layout).

    Returns
    -------
    (path, digests)
        The file and its ``md5``/``sha256``.
    """
    path = Path(directory) / resource.filename
    if path.exists():
        return path, verify_file(path, resource)
    if not allow_download:
        raise DatasetNotFoundError(missing_message)
    return _download(resource, directory, fetch=fetch, progress=progress)


# ----------------------------------------------------------------------------- extraction


def _unpack(archive: Path, destination: Path) -> None:
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                resolved = (destination / member).resolve()
                if not resolved.is_relative_to(destination.resolve()):
                    raise ChecksumError(f"{archive} contains an unsafe path {member!r}")
            zipped.extractall(destination)
        return
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, filter="data")
            return
        for member in tar.getmembers():  # pragma: no cover - Pythons without extraction filters
            if member.name.startswith(("/", "\\")) or ".." in Path(member.name).parts:
                raise ChecksumError(f"{archive} contains an unsafe path {member.name!r}")
            if member.issym() or member.islnk() or member.isdev():
                raise ChecksumError(f"{archive} contains a link or device {member.name!r}")
        tar.extractall(destination)


def extract_archive(archive: str | Path, parent: str | Path, top: str,
                    source: dict[str, Any] | None = None, *, wrap: bool = False) -> Path:
    """Extract the folder ``top`` of ``archive`` to ``parent / top``, atomically.

    The archive is unpacked into a temporary directory inside ``parent``; only when that
    finished does ``top`` get renamed to its final place (with a marker file recording
    ``source``). Anything else in the archive is discarded with the temporary directory.
    With ``wrap=True`` an archive without a folder ``top`` has its whole content put into
    ``top`` instead (for archives whose exact layout is not published).

    Returns
    -------
    Path
        ``parent / top``.

    Raises
    ------
    ChecksumError
        If the archive is truncated or unreadable, or has no folder ``top``. Nothing is left at
        ``parent / top``.
    DatasetError
        If ``parent / top`` already exists.
    """
    archive, parent = Path(archive), Path(parent)
    final = parent / top
    with _locked(final):
        if final.exists():
            if (final / MARKER_NAME).exists():  # another process extracted it meanwhile
                return final
            raise DatasetError(f"{final} exists already; not extracting {archive} over it")
        workdir = Path(tempfile.mkdtemp(prefix=f".{top}.extracting-", dir=parent))
        try:
            log.info("extracting %s", archive)
            try:
                _unpack(archive, workdir)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error,
                    OSError) as err:
                raise ChecksumError(
                    f"cannot extract {archive}: {err}. The archive is truncated or corrupt; it "
                    f"was left in place and nothing was extracted. Move or delete it and run "
                    f"again with --download."
                ) from err
            produced = workdir / top
            if wrap and not produced.is_dir():
                produced.mkdir()
                for entry in list(workdir.iterdir()):
                    if entry != produced:
                        entry.rename(produced / entry.name)
            if not produced.is_dir():
                raise ChecksumError(f"{archive} has no top-level folder {top}/")
            marker = {"archive": archive.name, **(source or {})}
            (produced / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True))
            os.rename(produced, final)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    log.info("extracted %s", final)
    return final


def read_marker(tree: str | Path) -> dict[str, Any] | None:
    """The provenance written by :func:`extract_archive` into ``tree``, if any."""
    marker = Path(tree) / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def ensure_extracted(archive: Resource, root: str | Path, folder: str, *, allow_download: bool,
                     missing_message: str, fetch: Fetcher | None = None, progress: bool = True,
                     wrap: bool = False) -> tuple[Path, dict[str, str] | None]:
    """The folder ``root / folder``, extracted from ``root / archive.filename`` if it is not there
    yet (the archive is downloaded first if it is missing and ``allow_download`` is true).

    Returns
    -------
    (tree, digests)
        ``root / folder`` and the ``md5``/``sha256`` of the archive it was just extracted from;
        ``digests`` is ``None`` when the folder existed already (nothing was read or written).

    Raises
    ------
    DatasetNotFoundError
        Neither the folder nor the archive is there and ``allow_download`` is false (with
        ``missing_message``), or the download failed.
    ChecksumError
        From :func:`ensure_file` or :func:`extract_archive`.
    """
    root = Path(root)
    tree = root / folder
    if tree.is_dir():
        return tree, None
    if not (root / archive.filename).exists() and not allow_download:
        raise DatasetNotFoundError(missing_message)
    path, digests = ensure_file(archive, root, allow_download=allow_download,
                                missing_message=missing_message, fetch=fetch, progress=progress)
    extract_archive(path, root, folder, source={"url": archive.url, **digests}, wrap=wrap)
    return tree, digests


def extracted_provenance(tree: str | Path, archive: Resource) -> dict[str, Any]:
    """Provenance of a tree extracted from ``archive`` for ``Benchmark.info``: the folder, the
    archive's resource, whether :func:`extract_archive` wrote the tree (its marker is there) and
    the archive's SHA-256 recorded in that marker."""
    marker = read_marker(tree)
    return {"folder": str(Path(tree).resolve()), "archive": archive.provenance(),
            "archive_verified": marker is not None,
            "archive_sha256": (marker or {}).get("sha256")}
