"""Where dsm reads and writes: a local path or a URL (``s3://``, ``gs://``, ``http(s)://``, ``file://``).

The one module that touches bytes away from the local disk (docs/design.md section 7,
docs/data.md "Data in a bucket"). :class:`Location` names a file or folder either way;
everything else in dsm asks it to read, list or write. It is built on fsspec, with s3fs and
gcsfs as the extras ``dsm[s3]`` and ``dsm[gcs]``. fsspec rather than pyarrow.fs: pyarrow has
no HTTP file system, and fsspec is what webdataset and Ray Data speak already.

Promises (tested in tests/plumbing/test_store.py against a real S3 server and a real HTTP server):

- **One line naming the URL.** Every failure is a :class:`StoreError`: a missing object, an
  access denied, missing credentials, an unreachable endpoint, a missing client library.
- **Transient failures are retried.** Connection resets and refusals, timeouts and HTTP
  429/5xx are retried with exponential backoff (0.25 s, 0.5 s, 1 s, ... up to 8 s), at most
  ``$DSM_IO_RETRIES`` times (default 4). Each retry is a warning naming the URL and the
  running count; :func:`retry_count` is the count in this process.
- **Writes are atomic.** A local file is written beside its name and renamed
  (:func:`dsm.plumbing.fileio.atomic_path`); an object is written by one upload, which S3 and GCS
  make visible only once complete. A reader never sees half a file under its final name.
- **No secrets.** Credentials and endpoints come the libraries' standard way (for S3:
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``,
  ``AWS_ENDPOINT_URL`` for S3-compatible stores; for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``).
  Nothing here reads or keeps them, and a URL is printed with any ``user:password@`` removed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("dsm.plumbing.store")

RETRIES_ENV = "DSM_IO_RETRIES"
DEFAULT_RETRIES = 4
# The extra that brings each scheme's client library (pyproject.toml).
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
READ_ONLY = ("http", "https")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# Connection-level failures of the clients fsspec drives (aiohttp, botocore, urllib3), by class
# name: importing each library just to name its exception would make them all required.
_TRANSIENT_TYPES = {"ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError",
                    "ClientOSError", "ServerTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
                    "ReadTimeoutError", "ConnectTimeoutError", "ResponseStreamingError", "IncompleteRead",
                    "ProtocolError", "FSTimeoutError"}
_retries_done = 0


class StoreError(ValueError):
    """Reading or writing ``url`` failed; ``message`` says how, in one line."""

    def __init__(self, url: str, message: str):
        self.url, self.message = url, message
        super().__init__(f"{url}: {message}")

    def __reduce__(self):  # carried from Ray workers by pickling (see ShardError)
        return type(self), (self.url, self.message)


def retry_count() -> int:
    """Transient failures retried by this process so far."""
    return _retries_done


def redact(url: str) -> str:
    """``url`` without a ``user:password@`` part."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", url)


def scheme_of(where: str | Path) -> str:
    """The URL scheme in lower case; '' for a plain path (and for a Windows drive letter)."""
    m = re.match(r"^([a-zA-Z][\w+.-]+)://", str(where))
    return m.group(1).lower() if m else ""


def is_remote(where: str | Path | Location) -> bool:
    """True for a URL other than ``file://``."""
    return scheme_of(str(where)) not in ("", "file")


def writable_location(where: str | Path | Location, what: str) -> Location:
    """``where`` as a Location to write outputs to. An HTTP URL is refused in one line naming
    ``what`` (the option that gave it), before anything starts."""
    loc = Location.of(where)
    if scheme_of(loc.url) in READ_ONLY:
        raise StoreError(str(loc), f"{what} cannot be an HTTP URL (read-only); "
                         "give a local folder or an s3:// or gs:// URL")
    return loc


@dataclass(frozen=True)
class Location:
    """A file or folder: ``url`` is an absolute local path, or a URL (no trailing slash).

    Cheap to copy and pickle (to Ray workers, DataLoader workers): the file system is made on
    first use in each process, from the URL.
    """

    url: str

    @classmethod
    def of(cls, where: str | Path | Location) -> Location:
        """A path (``~`` expanded, made absolute), a ``file://`` URL (as its path), or a URL."""
        if isinstance(where, Location):
            return where
        s = str(where)
        if scheme_of(s) == "file":
            s = s[len("file://"):]
        if not is_remote(s):
            return cls(str(Path(s).expanduser().resolve()))
        return cls(s.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return not is_remote(self.url)

    @property
    def path(self) -> Path:
        """The local path (only for a local location)."""
        if not self.is_local:
            raise ValueError(f"{self} is not a local path")
        return Path(self.url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> Location:
        return Location(self.url.rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> Location:
        return Location(f"{self.url}/{name}")

    def __str__(self) -> str:
        return redact(self.url)

    def __fspath__(self) -> str:
        return str(self.path)  # only a local location is a path; a URL raises

    @cached_property
    def _fs(self) -> tuple[Any, str]:
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url, **_client_options(scheme_of(self.url)))
        except ImportError as e:
            scheme = scheme_of(self.url)
            extra = f"pip install 'dsm[{EXTRAS[scheme]}]'" if scheme in EXTRAS else str(e)
            raise StoreError(str(self), f"reading {scheme}:// needs a client library ({extra})") from None
        except ValueError as e:
            raise StoreError(str(self), f"not a URL dsm can open ({e})") from None

    def _call(self, what: str, fn: Callable[[Any, str], T]) -> T:
        """``fn(fs, path)`` with retries of transient failures; any failure becomes a StoreError."""
        global _retries_done
        fs, path = self._fs
        retries = _max_retries()
        for attempt in range(retries + 1):
            try:
                return fn(fs, path)
            except StoreError:
                raise
            except Exception as e:  # noqa: BLE001 - every client's errors are translated below
                if attempt < retries and _is_transient(e):
                    _retries_done += 1
                    delay = min(8.0, 0.25 * 2**attempt)
                    log.warning("%s: %s failed (%s); retry %d of %d in %.2g s (%d retries in this process)",
                                self, what, _first_line(e), attempt + 1, retries, delay, _retries_done)
                    time.sleep(delay)
                    continue
                raise StoreError(str(self), _describe(e, what, self.url, attempt)) from None
        raise AssertionError("unreachable")

    # ---- reading
    def read_bytes(self) -> bytes:
        return self._call("reading", lambda fs, p: fs.cat_file(p))

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def is_file(self) -> bool:
        if self.is_local:
            return self.path.is_file()
        return self._call("looking up", lambda fs, p: _uncached(fs, p).isfile(p))

    def size(self) -> int:
        """Size in bytes; StoreError (no such object) when there is none."""
        return int(self._call("looking up", lambda fs, p: _uncached(fs, p).size(p)))

    @property
    def listable(self) -> bool:
        """False for HTTP, whose servers need not list folders."""
        return scheme_of(self.url) not in READ_ONLY

    def listing(self) -> dict[str, int]:
        """{file name: size in bytes} of the files directly in this folder; {} when there is none."""
        if not self.listable:
            raise StoreError(str(self), "an HTTP folder cannot be listed")

        def ls(fs, p):
            try:
                entries = _uncached(fs, p).ls(p, detail=True)
            except FileNotFoundError:
                return {}
            return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                    for e in entries if e.get("type") == "file"}
        return self._call("listing", ls)

    def subfolders(self) -> list[Location]:
        """The folders directly in this folder, sorted."""
        def ls(fs, p):
            try:
                entries = _uncached(fs, p).ls(p, detail=True)
            except FileNotFoundError:
                return []
            return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
        return [self / n for n in self._call("listing", ls)]

    # ---- writing
    def require_writable(self) -> None:
        """Raise StoreError naming this location if it cannot be written (an HTTP URL)."""
        if scheme_of(self.url) in READ_ONLY:
            raise StoreError(str(self), "HTTP URLs are read-only; write to a local folder or an object store")

    def write_bytes(self, data: bytes) -> None:
        """``data`` as this file, atomically."""
        self.require_writable()
        if self.is_local:
            from dsm.plumbing.fileio import atomic_path

            with atomic_path(self.path) as tmp:
                tmp.write_bytes(data)
            return
        self._call("writing", lambda fs, p: fs.pipe_file(p, data))

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def upload(self, local_file: str | Path) -> None:
        """Copy ``local_file`` here, atomically (one upload; for a local target, copy then rename)."""
        self.require_writable()
        if self.is_local:
            import shutil

            from dsm.plumbing.fileio import atomic_path

            with atomic_path(self.path) as tmp:
                shutil.copyfile(local_file, tmp)
            return
        self._call("uploading", lambda fs, p: fs.put_file(str(local_file), p))

    def remove(self) -> None:
        """Delete this file; nothing when it is already gone."""
        self.require_writable()

        def rm(fs, p):
            try:
                fs.rm_file(p)
            except FileNotFoundError:
                pass
        self._call("deleting", rm)

    def mkdir(self) -> None:
        """Create this folder (local); object stores have no folders, so nothing there."""
        if self.is_local:
            self.path.mkdir(parents=True, exist_ok=True)


def _client_options(scheme: str) -> dict[str, Any]:
    """botocore retries connection errors itself, silently (5 tries by default): hand them all to
    :meth:`Location._call`, which counts and logs them, unless the user set botocore's own
    retry policy (``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE``)."""
    if scheme in ("s3", "s3a") and not ({"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & os.environ.keys()):
        return {"config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}}}
    return {}


def _uncached(fs: Any, path: str) -> Any:
    """``fs`` with its listing cache for ``path`` dropped: another process (a Ray worker) may
    have written there since this one last listed it."""
    fs.invalidate_cache(path)
    return fs


def _max_retries() -> int:
    raw = os.environ.get(RETRIES_ENV, "")
    try:
        return max(0, int(raw)) if raw.strip() else DEFAULT_RETRIES
    except ValueError:
        raise ValueError(f"${RETRIES_ENV} must be a whole number of retries, got {raw!r}") from None


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _status(e: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp's ``status``, botocore's response metadata)."""
    status = getattr(e, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if code else None
    return None


def _is_transient(e: BaseException) -> bool:
    for err in _chain(e):
        if isinstance(err, (FileNotFoundError, PermissionError)):
            return False
        status = _status(err)
        if status is not None:
            return status in _TRANSIENT_STATUS
        if isinstance(err, (ConnectionError, TimeoutError)):
            return True
        if {c.__name__ for c in type(err).__mro__} & _TRANSIENT_TYPES:
            return True
    return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _describe(e: BaseException, what: str, url: str, retried: int) -> str:
    """One line for a failure of ``what`` (reading, writing, ...) on ``url``."""
    names = {c.__name__ for err in _chain(e) for c in type(err).__mro__}
    statuses = [s for s in map(_status, _chain(e)) if s is not None]
    scheme = scheme_of(url)
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        how = ("GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`" if scheme in ("gs", "gcs")
               else "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials")
        return f"no credentials found for {scheme}:// (set {how})"
    if isinstance(e, FileNotFoundError) or 404 in statuses:
        return "no such file or object" + (" (HTTP 404)" if scheme in READ_ONLY else "")
    if isinstance(e, PermissionError) or {401, 403} & set(statuses):
        code = next((s for s in statuses if s in (401, 403)), None)
        return "access denied" + (f" (HTTP {code})" if code else "") + "; check the credentials and the bucket policy"
    after = f" after {retried} retries" if retried else ""
    if _is_transient(e):
        endpoint = " (is AWS_ENDPOINT_URL right?)" if scheme in ("s3", "s3a") else ""
        return f"{what} failed{after}: cannot reach the server{endpoint}: {_first_line(e)}"
    return f"{what} failed{after}: {_first_line(e)}"
