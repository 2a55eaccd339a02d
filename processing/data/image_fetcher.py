"""Download image URLs into a content-addressed, resumable cache.

Layout of a cache directory::

    <cache>/manifest.jsonl            append-only JSON lines, one outcome per line; the last line
                                      for a URL wins
    <cache>/<sha256[:2]>/<sha256>.<ext>
                                      verified image files; `ext` comes from the format PIL sniffed
                                      in the bytes, never from the URL
    <cache>/tmp/*.part                downloads in flight; removed at the start of every `fetch`

No path is ever derived from a URL, so nothing can be written outside the cache whatever a URL
holds; `tmp/` and the `<sha256[:2]>/` folders must be real folders inside the cache (a symbolic
link there, or a `manifest.jsonl` that links elsewhere, is refused with `UnsafeCacheError`), and a
manifest path that leads outside the cache is never looked up. A file only gets its final name
through `os.replace` after it was fully received and verified, so an interrupted run never leaves a
partial file under a finished name, and a rerun fetches only the URLs that have no successful record
yet.

Each attempt has one wall-clock deadline (`download_timeout`) covering the connection, the
response headers and the body, whatever the server's `Connection` header: a server dripping
headers or body one byte at a time is cut at the deadline.

Exit status of the command: 0 when every URL ended `ok` (fetched now or before), `EXIT_FAILED_URLS`
(3) when some did not (`--allow_failed` makes that 0), 2 on bad input (one `error:` line).

Manifest records::

    {"url": ..., "status": "ok", "sha256": ..., "path": "ab/ab12....jpg", "bytes": 1234,
     "width": 220, "height": 190, "format": "JPEG", "attempts": 1, "time": 1700000000.0}
    {"url": ..., "status": "error", "reason": "http_404", "detail": "...", "attempts": 1, "time": ...}

Failure reasons: `invalid_url`, `http_<status>`, `timeout`, `connection_error`,
`too_many_redirects`, `request_error`, `too_large`, `undecodable`, `decompression_bomb`,
`io_error`.
"""
from __future__ import annotations

import argparse
import email.utils
import functools
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from PIL import Image

# The one manifest format and the one containment rule, shared with the resolver.
from processing.image_source import MANIFEST_NAME, ImageManifest, file_inside
from processing.errors import MMGLInputError

if TYPE_CHECKING:  # annotations only: requests is imported where a download happens
    import requests

logger = logging.getLogger(__name__)

USER_AGENT = "mmgl-image-fetcher/0.1 (+https://github.com/mmgl; research use)"
TMP_DIR_NAME = "tmp"

# Formats PIL may try when sniffing a download. Restricting `Image.open(formats=...)` keeps
# plugins that shell out (EPS runs Ghostscript) or parse exotic containers away from untrusted
# bytes.
SNIFF_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# File extension per format PIL reports; the JPEG plugin reports some camera JPEGs as MPO.
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}

# Statuses worth retrying: rate limiting and server-side failures. Other 4xx (403, 404, 410, ...)
# will not change on a retry, so they are recorded at once.
_RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_CHUNK_SIZE = 64 * 1024


#: Exit status of the command when some URLs did not end `ok` (see the module docstring).
EXIT_FAILED_URLS = 3


class InvalidURLError(MMGLInputError, ValueError):
    """A URL the fetcher refuses to request (not http(s), no host, control characters)."""


class UnsafeCacheError(MMGLInputError, ValueError):
    """A working folder or file of the cache that is a symbolic link or lies outside the cache."""


def _real_folder_inside(cache_dir: Path, name: str) -> Path:
    """`cache_dir / name` as a real folder inside the cache (created when missing); a symbolic link or a
    non-folder there raises `UnsafeCacheError`: the fetcher deletes and renames files in its working folders."""
    path = cache_dir / name
    try:
        path.mkdir(exist_ok=True)
    except FileExistsError:
        pass
    if path.is_symlink() or not path.is_dir():
        raise UnsafeCacheError(
            f"{path}: expected a real folder inside the image cache {cache_dir}, found "
            f"{'a symbolic link to ' + os.path.realpath(path) if path.is_symlink() else 'a file'}; remove it (the "
            "fetcher deletes and stages files there)"
        )
    return path


class _FetchFailure(Exception):
    """A failed URL with a manifest reason; `retryable` says whether another attempt may help."""

    def __init__(self, reason: str, detail: str, retryable: bool = False, delay: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        # Seconds the server asked us to wait (Retry-After); None means "use the backoff".
        self.delay = delay
        self.attempts = 0  # requests made for this URL, set by `ImageFetcher._download`


@dataclass
class FetchResult:
    """Outcome of one URL.

    Args:
        url (`str`): the URL as given.
        status (`str`): `"fetched"` (downloaded now), `"cached"` (already in the cache),
            `"failed"` or `"skipped"` (a recorded failure, with `retry_failed=False`).
        path (`Path`, *optional*): absolute path of the cached file when it exists.
        reason (`str`, *optional*): failure reason (see the module docstring).
        detail (`str`, *optional*): human-readable failure detail.
        record (`dict`, *optional*): the manifest record behind this result.
    """

    url: str
    status: str
    path: Path | None = None
    reason: str | None = None
    detail: str | None = None
    record: dict | None = None


def validate_url(url: str) -> str:
    """Return `url` if the fetcher may request it, else raise `InvalidURLError` naming the URL.

    Only `http` and `https` URLs with a host are accepted; `file://`, `ftp://`,
    `data:` and relative paths are refused so a URL list can never read local files.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidURLError(f"invalid image URL {url!r}: expected a non-empty http(s) URL string")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidURLError(f"invalid image URL {url!r}: it contains control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as err:  # e.g. malformed IPv6 brackets or port
        raise InvalidURLError(f"invalid image URL {url!r}: {err}") from err
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidURLError(
            f"invalid image URL {url!r}: scheme {parts.scheme or '(none)'!r} is not supported; "
            "only http:// and https:// URLs are fetched"
        )
    if not host:
        raise InvalidURLError(f"invalid image URL {url!r}: it has no host")
    return url


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _HostThrottle:
    """Per-host "not before" times, so a 429 with Retry-After pauses every worker on that host."""

    def __init__(self):
        self._lock = threading.Lock()
        self._not_before: dict = {}

    def pause(self, host: str, seconds: float) -> None:
        with self._lock:
            until = time.monotonic() + seconds
            self._not_before[host] = max(self._not_before.get(host, 0.0), until)

    def wait(self, host: str) -> None:
        with self._lock:
            until = self._not_before.get(host, 0.0)
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# The deadline of the attempt running in this thread: the connection registers its socket with it as soon as
# the request is sent, so the deadline can cut the response headers too (requests has no handle on them).
_current_attempt = threading.local()


class _Deadline:
    """One attempt's wall-clock deadline: at `seconds` it shuts the attempt's socket down, which wakes a read
    blocked on the response headers or body whatever the timeouts per read, and the attempt fails as `timeout`.

    The socket is registered by `_DeadlineConnectionMixin` when the request has been sent; the object itself is
    kept, so the deadline still reaches it after http.client dropped its own reference (`Connection: close`).
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False
        self._sock = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock) -> None:
        with self._lock:
            self._sock = sock
            fired = self.fired
        if fired:  # the deadline passed before the request was even sent
            self._shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sock = self._sock
        self._shutdown(sock)

    @staticmethod
    def _shutdown(sock) -> None:
        if sock is None:
            return
        import socket

        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def cancel(self) -> None:
        self._timer.cancel()


class _DeadlineConnectionMixin:
    """Registers the socket of each request with the deadline of the attempt running in this thread."""

    def getresponse(self, *args, **kwargs):
        deadline = getattr(_current_attempt, "deadline", None)
        if deadline is not None:
            deadline.watch(self.sock)
        return super().getresponse(*args, **kwargs)


@functools.cache
def _deadline_adapter_class():
    """A `requests` adapter whose connections register with `_Deadline` (built once, on the first session)."""
    import requests
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = type("_DeadlineHTTPConnection", (_DeadlineConnectionMixin, HTTPConnection), {})

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = type("_DeadlineHTTPSConnection", (_DeadlineConnectionMixin, HTTPSConnection), {})

    pools = {"http": _HTTPPool, "https": _HTTPSPool}

    class _DeadlineAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, *args, **kwargs):
            manager = super().proxy_manager_for(*args, **kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    return _DeadlineAdapter


class ImageFetcher:
    """Fetch image URLs into a content-addressed cache, concurrently, politely and resumably.

    Args:
        cache_dir (`str` or `Path`): cache directory (created if missing).
        max_workers (`int`, *optional*, defaults to 8): concurrent downloads.
        retries (`int`, *optional*, defaults to 3): extra attempts after a 429, 408, 5xx, timeout or
            connection error. 403, 404 and other 4xx are never retried.
        connect_timeout (`float`, *optional*, defaults to 10): seconds to establish a connection.
        read_timeout (`float`, *optional*, defaults to 30): seconds without a byte from the server.
        download_timeout (`float`, *optional*, defaults to 300): wall-clock cap of one attempt, from the
            connection to the last byte of the body, so a server dripping headers or body just under
            `read_timeout` cannot hold a worker: at the deadline the connection is shut down (even
            inside a blocked read) and the attempt fails as `timeout`.
        backoff_base (`float`, *optional*, defaults to 1.0): first retry delay in seconds; doubles
            per attempt, with jitter (half fixed, half random) so workers do not retry in lockstep.
        backoff_max (`float`, *optional*, defaults to 60): cap of one backoff delay.
        max_retry_after (`float`, *optional*, defaults to 300): longest `Retry-After` honoured;
            a server asking for more gets the URL recorded as failed instead of a stalled worker.
        max_bytes (`int`, *optional*, defaults to 20 MB): larger bodies are aborted mid-stream.
        max_pixels (`int`, *optional*, defaults to 50M): larger images are rejected as
            decompression bombs before they are decoded.
        retry_failed (`bool`, *optional*, defaults to True): whether URLs recorded as failed by an
            earlier run are attempted again (successful ones never are).
        user_agent (`str`, *optional*): the `User-Agent` header; identify yourself to the host.
    """

    def __init__(
        self,
        cache_dir,
        max_workers: int = 8,
        retries: int = 3,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        download_timeout: float = 300.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retry_after: float = 300.0,
        max_bytes: int = 20 * 1024 * 1024,
        max_pixels: int = 50_000_000,
        retry_failed: bool = True,
        user_agent: str = USER_AGENT,
    ):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.cache_dir = Path(cache_dir).resolve()
        self.max_workers = max_workers
        self.retries = retries
        self.timeout = (connect_timeout, read_timeout)
        self.download_timeout = download_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.retry_failed = retry_failed
        self.user_agent = user_agent
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = _real_folder_inside(self.cache_dir, TMP_DIR_NAME)
        manifest = self.cache_dir / MANIFEST_NAME
        if manifest.is_symlink():
            raise UnsafeCacheError(f"{manifest}: the manifest is a symbolic link to {os.path.realpath(manifest)}; "
                                   "expected a file of the image cache (the fetcher appends to it)")
        self.manifest = ImageManifest(manifest)
        self._throttle = _HostThrottle()
        # requests.Session is not documented as thread-safe: one per worker thread.
        self._local = threading.local()

    # ----------------------------------------------------------------------------------- lookup
    def lookup(self, url: str) -> Path | None:
        """Path of the cached image for `url`, or None (not fetched, failed, file missing, or a recorded path
        outside the cache: the resolver's containment, `file_inside`)."""
        record = self.manifest.get(url)
        if record is None or record.get("status") != "ok":
            return None
        path = file_inside(str(self.cache_dir), record["path"])
        return None if path is None else Path(path)

    # ------------------------------------------------------------------------------------ fetch
    def fetch(self, urls: Iterable[str], progress: bool = False) -> dict:
        """Fetch every URL not yet cached; return a summary.

        Duplicate URLs are fetched once. At most `max_workers` downloads run at a time and only
        a small window of work is queued, so a list of millions of URLs is fine.

        Returns:
            `dict`: `total` (unique URLs), `fetched`, `cached`, `failed`, `skipped`,
            `failed_by_reason` (reason -> count) and `bytes_downloaded`.
        """
        self._remove_stale_parts()
        unique = list(dict.fromkeys(urls))
        summary = {"total": len(unique), "fetched": 0, "cached": 0, "failed": 0, "skipped": 0,
                   "failed_by_reason": {}, "bytes_downloaded": 0}
        reasons: Counter = Counter()

        def account(result: FetchResult) -> None:
            summary[result.status] += 1
            if result.status == "failed":
                reasons[result.reason] += 1
            elif result.status == "fetched":
                summary["bytes_downloaded"] += result.record["bytes"]

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(unique), desc="fetch images", unit="img")
        try:
            with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="fetch") as pool:
                pending = set()
                for url in unique:
                    pending.add(pool.submit(self.fetch_one, url))
                    # Keep a bounded window of futures instead of one per URL of a huge list.
                    if len(pending) >= 4 * self.max_workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            account(future.result())
                        if bar is not None:
                            bar.update(len(done))
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        account(future.result())
                    if bar is not None:
                        bar.update(len(done))
        finally:
            if bar is not None:
                bar.close()
        summary["failed_by_reason"] = dict(sorted(reasons.items()))
        return summary

    def fetch_one(self, url: str) -> FetchResult:
        """Fetch one URL (or find it in the cache); failures are recorded, not raised."""
        record = self.manifest.get(url)
        if record is not None:
            if record.get("status") == "ok":
                path = self.lookup(url)
                if path is not None:
                    return FetchResult(url, "cached", path=path, record=record)
                logger.warning("cached file %s for %s is missing or outside the cache; fetching again",
                               record["path"], url)
            elif not self.retry_failed:
                return FetchResult(url, "skipped", reason=record.get("reason"),
                                   detail=record.get("detail"), record=record)
        attempts = 0
        try:
            validate_url(url)
            part, sha256, size, attempts = self._download(url)
            try:
                fmt, width, height = self._verify(part, url)
                path = self._commit(part, sha256, fmt)
            finally:
                if part.exists():
                    part.unlink()
        except InvalidURLError as err:
            return self._record_failure(url, "invalid_url", str(err), attempts)
        except _FetchFailure as err:
            return self._record_failure(url, err.reason, err.detail, err.attempts or attempts)
        except OSError as err:  # disk full, permissions: record and keep going with the rest
            return self._record_failure(url, "io_error", f"{type(err).__name__}: {err}", attempts)
        record = {
            "url": url, "status": "ok", "sha256": sha256,
            "path": path.relative_to(self.cache_dir).as_posix(), "bytes": size,
            "width": width, "height": height, "format": fmt, "attempts": attempts,
            "time": round(time.time(), 3),
        }
        self.manifest.append(record)
        return FetchResult(url, "fetched", path=path, record=record)

    # --------------------------------------------------------------------------------- internals
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests  # lazily: the first fetch pays for it, not every import of this module (tests, manifest reads)

            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            session.max_redirects = 5
            # Retries are ours (with backoff and Retry-After); the adapter must not add its own.
            adapter = _deadline_adapter_class()(max_retries=0, pool_connections=4, pool_maxsize=4)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return delay / 2 + random.uniform(0, delay / 2)

    def _download(self, url: str):
        """GET `url` with retries; return (part file, sha256, size, attempts)."""
        host = urlsplit(url).hostname
        failure = None
        for attempt in range(self.retries + 1):
            if failure is not None:
                time.sleep(failure.delay if failure.delay is not None else self._backoff(attempt - 1))
            self._throttle.wait(host)
            try:
                return (*self._attempt(url, host), attempt + 1)
            except _FetchFailure as err:
                err.attempts = attempt + 1
                if not err.retryable:
                    raise
                failure = err
                logger.debug("attempt %d for %s failed: %s", attempt + 1, url, err)
        failure.detail = f"gave up after {failure.attempts} attempts: {failure.detail}"
        raise failure

    def _attempt(self, url: str, host: str):
        session = self._session()
        deadline = _current_attempt.deadline = _Deadline(self.download_timeout)
        try:
            return self._request(session, url, host, deadline)
        except _FetchFailure as err:
            if deadline.fired and err.reason != "too_large":
                raise self._too_slow(url) from None
            raise
        finally:
            deadline.cancel()
            _current_attempt.deadline = None

    def _too_slow(self, url: str) -> _FetchFailure:
        return _FetchFailure("timeout", f"{url}: download exceeded {self.download_timeout} s (connection, headers "
                             "and body)", retryable=True)

    def _request(self, session, url: str, host: str, deadline: _Deadline):
        import requests  # lazily, as in `_session` (already imported there: a dict lookup)

        connect_timeout, read_timeout = self.timeout
        timeout = (min(connect_timeout, self.download_timeout), read_timeout)
        try:
            with session.get(url, stream=True, timeout=timeout) as response:
                status = response.status_code
                if status in (200, 203):
                    return self._stream_to_part(response, url, deadline)
                detail = f"HTTP {status} {response.reason or ''} for {url}".replace("  ", " ")
                if status not in _RETRY_STATUSES:
                    raise _FetchFailure(f"http_{status}", detail)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if retry_after is not None:
                    if retry_after > self.max_retry_after:
                        raise _FetchFailure(
                            f"http_{status}",
                            f"{detail}: Retry-After {retry_after:.0f} s exceeds max_retry_after "
                            f"{self.max_retry_after:.0f} s",
                        )
                    self._throttle.pause(host, retry_after)
                raise _FetchFailure(f"http_{status}", detail, retryable=True, delay=retry_after)
        except requests.TooManyRedirects as err:
            raise _FetchFailure("too_many_redirects", f"{url}: {err}") from err
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema) as err:
            # Reached only through a redirect: the original URL was validated.
            raise _FetchFailure("invalid_url", f"{url}: {err}") from err
        except requests.Timeout as err:
            raise _FetchFailure("timeout", f"{url}: {err}", retryable=True) from err
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as err:
            # requests reports a read timeout mid-body as a ConnectionError.
            reason = "timeout" if "timed out" in str(err).lower() else "connection_error"
            raise _FetchFailure(reason, f"{url}: {err}", retryable=True) from err
        except requests.RequestException as err:  # malformed headers and the like: not transient
            raise _FetchFailure("request_error", f"{url}: {type(err).__name__}: {err}") from err
        except (ValueError, UnicodeError) as err:  # URL parsing deep in urllib3 / idna
            raise _FetchFailure("invalid_url", f"{url}: {type(err).__name__}: {err}") from err

    def _stream_to_part(self, response: "requests.Response", url: str, deadline: _Deadline):
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise _FetchFailure("too_large", f"{url}: Content-Length {declared} exceeds max_bytes {self.max_bytes}")
        fd, name = tempfile.mkstemp(suffix=".part", dir=self.tmp_dir)
        part = Path(name)
        digest = hashlib.sha256()
        size = 0
        # A read blocks until a whole chunk has arrived, and every byte restarts the read timeout:
        # a server dripping one byte per second would hold the worker for days. The deadline shuts
        # the socket down, which wakes the blocked read.
        try:
            with os.fdopen(fd, "wb") as f:
                # iter_content decodes gzip/deflate, so max_bytes also bounds a compressed body.
                try:
                    for chunk in response.iter_content(_CHUNK_SIZE):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise _FetchFailure("too_large", f"{url}: body exceeds max_bytes {self.max_bytes}")
                        if deadline.fired:
                            raise self._too_slow(url)
                        digest.update(chunk)
                        f.write(chunk)
                except _FetchFailure:
                    raise
                except Exception:
                    if deadline.fired:  # the read failed because the deadline closed the socket
                        raise self._too_slow(url) from None
                    raise
                if deadline.fired:  # a body without Content-Length ends at the shutdown: not complete
                    raise self._too_slow(url)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if size == 0:
            part.unlink(missing_ok=True)
            raise _FetchFailure("undecodable", f"{url}: empty body")
        return part, digest.hexdigest(), size

    def _verify(self, part: Path, url: str):
        """Check the bytes decode as an image of at most `max_pixels`; return (format, w, h)."""
        try:
            with Image.open(part, formats=SNIFF_FORMATS) as image:
                fmt = image.format
                width, height = image.size
                # Checked from the header, before any pixel is decoded.
                if width * height > self.max_pixels:
                    raise _FetchFailure(
                        "decompression_bomb",
                        f"{url}: {width}x{height} = {width * height} pixels exceeds max_pixels {self.max_pixels}")
                image.verify()
            # verify() leaves the image unusable and skips pixel data; decode it for real.
            with Image.open(part, formats=SNIFF_FORMATS) as image:
                image.load()
        except _FetchFailure:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            # PIL's own global guard (Image.MAX_IMAGE_PIXELS) fired before ours could.
            raise _FetchFailure("decompression_bomb", f"{url}: {err}") from err
        except Exception as err:  # PIL raises many types for bad data (OSError, SyntaxError, ...)
            raise _FetchFailure("undecodable", f"{url}: not a decodable image ({type(err).__name__}: {err})") from err
        return fmt, width, height

    def _commit(self, part: Path, sha256: str, fmt: str) -> Path:
        # The final name derives only from the content hash and the sniffed format.
        final = _real_folder_inside(self.cache_dir, sha256[:2]) / f"{sha256}.{FORMAT_EXTENSIONS[fmt]}"
        if final.is_file() and final.stat().st_size == part.stat().st_size:
            return final  # same bytes already stored (another URL); the caller drops the part
        os.replace(part, final)
        return final

    def _record_failure(self, url, reason: str, detail: str, attempts: int) -> FetchResult:
        record = {"url": url, "status": "error", "reason": reason, "detail": detail,
                  "attempts": attempts, "time": round(time.time(), 3)}
        if isinstance(url, str):
            self.manifest.append(record)
        logger.info("failed %s: %s", url, detail)
        return FetchResult(url if isinstance(url, str) else repr(url), "failed",
                           reason=reason, detail=detail, record=record)

    def _remove_stale_parts(self) -> None:
        # Left by a killed run; no other fetcher may share this cache at the same time.
        for part in self.tmp_dir.glob("*.part"):
            part.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ URL sources
class URLListError(MMGLInputError, ValueError):
    """A URL list file that is not UTF-8 text (e.g. a binary file given by mistake)."""


def urls_from_file(path) -> list:
    """URLs from a UTF-8 text file, one per line; blank lines and `#` comments are skipped.

    Raises:
        URLListError: the file is binary or not UTF-8 (the message names the file and line).
    """
    urls = []
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data[:65536]:
        raise URLListError(f"{path}: not a text file of URLs (it holds NUL bytes); expected one URL per line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise URLListError(
            f"{path}: line {line_no} is not valid UTF-8 ({err.reason} at byte {err.start}); expected a text "
            f"file with one URL per line"
        ) from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            urls.append(line)
    return urls


def _flatten(value) -> Iterator[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, str) and value:
        yield value


def urls_from_dataset(dataset_dir, column: str = "section_image_url") -> list:
    """Unique URLs from an Arrow data set saved with `save_to_disk` (a `Dataset` or every split
    of a `DatasetDict`), flattening the list-of-lists `column`."""
    import datasets

    loaded = datasets.load_from_disk(str(dataset_dir))
    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    urls: dict = {}
    for split in splits:
        if column not in split.column_names:
            raise KeyError(f"{dataset_dir}: column {column!r} not found; columns are {split.column_names}")
        for batch in split.select_columns([column]).iter(batch_size=1000):
            for url in _flatten(batch[column]):
                urls[url] = None
    return list(urls)


# -------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    """`python -m processing.data.image_fetcher URL_LIST_OR_DATASET CACHE_DIR` or
    `python -m processing.data.image_fetcher --from_dataset DATASET_DIR CACHE_DIR`."""
    from .cli import add_debug_argument

    parser = argparse.ArgumentParser(
        prog="python -m processing.data.image_fetcher",
        description="Download image URLs into a content-addressed cache (resumable).",
        epilog=f"Exit status: 0 when every URL ended ok (fetched now or before); {EXIT_FAILED_URLS} when some did not "
        "(their reasons are in the printed summary and manifest.jsonl), unless --allow_failed; 2 on bad input.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="URL_LIST_OR_DATASET CACHE_DIR, or only CACHE_DIR with --from_dataset. "
                             "A directory as URL_LIST_OR_DATASET is read as an Arrow data set.")
    parser.add_argument("--from_dataset", metavar="DIR", help="take URLs from this Arrow data set")
    parser.add_argument("--column", default="section_image_url",
                        help="data set column of URLs (a list of lists per page; default: %(default)s)")
    parser.add_argument("--max_workers", type=int, default=8, help="concurrent downloads (default: %(default)s)")
    parser.add_argument("--retries", type=int, default=3,
                        help="extra attempts after a 429, 408, 5xx, timeout or connection error (default: %(default)s)")
    parser.add_argument("--connect_timeout", type=float, default=10.0,
                        help="seconds to establish a connection (default: %(default)s)")
    parser.add_argument("--read_timeout", type=float, default=30.0,
                        help="seconds without a byte from the server (default: %(default)s)")
    parser.add_argument("--download_timeout", type=float, default=300.0,
                        help="wall-clock seconds for one attempt: connection, headers and body, however the server "
                             "drips them (default: %(default)s)")
    parser.add_argument("--max_bytes", type=int, default=20 * 1024 * 1024,
                        help="larger bodies are aborted as too_large (default: %(default)s)")
    parser.add_argument("--max_pixels", type=int, default=50_000_000,
                        help="larger images are refused as decompression bombs (default: %(default)s)")
    parser.add_argument("--no_retry_failed", action="store_true",
                        help="skip URLs an earlier run recorded as failed")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--allow_failed", action="store_true",
                        help=f"exit 0 even when some URLs failed (default: exit {EXIT_FAILED_URLS})")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    for name, low in (("max_workers", 1), ("retries", 0), ("max_bytes", 1), ("max_pixels", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    for name in ("connect_timeout", "read_timeout", "download_timeout"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be > 0 seconds, got {getattr(args, name)}")

    if args.from_dataset:
        if len(args.paths) != 1:
            parser.error("with --from_dataset give only CACHE_DIR")
        source, cache_dir, is_dataset = args.from_dataset, args.paths[0], True
    else:
        if len(args.paths) != 2:
            parser.error("expected URL_LIST_OR_DATASET CACHE_DIR")
        source, cache_dir = args.paths
        is_dataset = Path(source).is_dir()
    urls = urls_from_dataset(source, args.column) if is_dataset else urls_from_file(source)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # This process is ours: let PIL's own guard agree with ours for every decoder in it. The
    # library leaves the process-wide limit alone and checks the header size itself.
    Image.MAX_IMAGE_PIXELS = args.max_pixels
    fetcher = ImageFetcher(
        cache_dir, max_workers=args.max_workers, retries=args.retries,
        connect_timeout=args.connect_timeout, read_timeout=args.read_timeout,
        download_timeout=args.download_timeout, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        retry_failed=not args.no_retry_failed,
    )
    summary = fetcher.fetch(urls, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    not_ok = summary["failed"] + summary["skipped"]
    if not_ok and not args.allow_failed:
        print(f"{not_ok} of {summary['total']} URLs did not end ok ({summary['failed']} failed now, "
              f"{summary['skipped']} skipped as failed before); exit status {EXIT_FAILED_URLS} "
              "(--allow_failed to accept)", file=sys.stderr)
        return EXIT_FAILED_URLS
    return 0


__all__ = [
    "EXIT_FAILED_URLS",
    "FORMAT_EXTENSIONS",
    "FetchResult",
    "ImageFetcher",
    "ImageManifest",
    "InvalidURLError",
    "SNIFF_FORMATS",
    "URLListError",
    "USER_AGENT",
    "UnsafeCacheError",
    "main",
    "parse_retry_after",
    "urls_from_dataset",
    "urls_from_file",
    "validate_url",
]


if __name__ == "__main__":
    # The imported module's `main`, not this `__main__` copy's: its error classes are the ones
    # `processing.data.cli` reports in one line.
    from processing.data.cli import run_command
    from processing.data.image_fetcher import main as _main

    sys.exit(run_command(_main))
