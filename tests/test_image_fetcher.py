"""ImageFetcher against a local HTTP server on 127.0.0.1 (ephemeral port, one thread per request)."""
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from processing.data.image_fetcher import (
    USER_AGENT,
    ImageFetcher,
    InvalidURLError,
    main,
    parse_retry_after,
    urls_from_dataset,
    validate_url,
)

pytestmark = pytest.mark.timeout(60)


def make_image(fmt="PNG", size=(32, 24), color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


class Route:
    """What the server answers on one path: `responses` are used in order, the last one repeats."""

    def __init__(self, *responses):
        self.responses = list(responses)

    def next(self, n):
        return self.responses[min(n, len(self.responses) - 1)]


class Server:
    """A bounded local HTTP server counting requests per path."""

    def __init__(self):
        self.routes = {}
        self.default = None  # Route for paths without their own; None answers 404
        self.counts = Counter()
        self.active = self.max_active = 0  # requests in flight, and the most seen at once
        self.user_agents = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with server.lock:
                    n = server.counts[self.path]
                    server.counts[self.path] += 1
                server.user_agents.append(self.headers.get("User-Agent"))
                route = server.routes.get(self.path, server.default)
                if route is None:
                    return self._send(404, b"not found")
                kind, *args = route.next(n)
                if kind == "ok":
                    return self._send(200, args[0])
                if kind == "slow":
                    with server.lock:
                        server.active += 1
                        server.max_active = max(server.max_active, server.active)
                    time.sleep(0.02)
                    with server.lock:
                        server.active -= 1
                    return self._send(200, args[0])
                if kind == "status":
                    status, headers = args[0], (args[1] if len(args) > 1 else {})
                    return self._send(status, b"error", headers)
                if kind == "hang":
                    server.stop.wait(args[0])  # bounded; released at teardown
                    return
                if kind == "cut":  # promise the whole body, send part of it, drop the connection
                    body = args[0]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if kind == "drip":  # promise a body, then send one byte every `interval` seconds
                    body, interval = args
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        for i in range(len(body)):
                            if server.stop.wait(interval):  # bounded; released at teardown
                                break
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                    except OSError:  # the client gave up
                        pass
                    self.close_connection = True
                    return
                if kind == "drip_headers":  # the status line and headers one byte every `interval` seconds
                    body, interval = args
                    head = (f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n"
                            "X-Padding: " + "x" * 200 + "\r\n\r\n").encode()
                    try:
                        for i in range(len(head)):
                            if server.stop.wait(interval):
                                break
                            self.wfile.write(head[i : i + 1])
                            self.wfile.flush()
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                if kind == "drip_close":  # Connection: close, no Content-Length, the body one byte per `interval`
                    body, interval = args
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for i in range(len(body)):
                            if server.stop.wait(interval):
                                break
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                if kind == "stream":  # no Content-Length, many bytes
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for _ in range(args[0]):
                            self.wfile.write(b"\0" * 65536)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                raise AssertionError(kind)

            def _send(self, status, body, headers=None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path, *responses):
        self.routes[path] = Route(*responses)
        return self.base + path

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def keep_pil_limit(monkeypatch):
    # Nothing here may leave PIL's process-wide decompression-bomb limit changed for other tests.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def fast_fetcher(cache, **kwargs):
    options = dict(max_workers=4, retries=2, backoff_base=0.01, backoff_max=0.05,
                   connect_timeout=2, read_timeout=2)
    options.update(kwargs)
    return ImageFetcher(cache, **options)


def manifest_lines(cache):
    return [json.loads(line) for line in (Path(cache) / "manifest.jsonl").read_text().splitlines() if line]


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------


def test_success_and_manifest(server, tmp_path):
    png, jpg = make_image("PNG"), make_image("JPEG", size=(40, 30))
    # The URL's extension lies: the stored name must follow the sniffed format.
    url_png = server.add("/a/photo.jpg", ("ok", png))
    url_jpg = server.add("/b/pic", ("ok", jpg))
    fetcher = fast_fetcher(tmp_path / "cache")
    summary = fetcher.fetch([url_png, url_jpg, url_png])
    assert summary == {"total": 2, "fetched": 2, "cached": 0, "failed": 0, "skipped": 0,
                       "failed_by_reason": {}, "bytes_downloaded": len(png) + len(jpg)}

    import hashlib

    sha = hashlib.sha256(png).hexdigest()
    path = fetcher.lookup(url_png)
    assert path == (tmp_path / "cache" / sha[:2] / f"{sha}.png").resolve()
    assert path.read_bytes() == png
    assert fetcher.lookup(url_jpg).suffix == ".jpg"
    assert fetcher.lookup(server.base + "/never") is None

    records = {r["url"]: r for r in manifest_lines(tmp_path / "cache")}
    rec = records[url_jpg]
    assert rec["status"] == "ok" and (rec["width"], rec["height"]) == (40, 30)
    assert rec["bytes"] == len(jpg) and rec["format"] == "JPEG"
    assert set(server.user_agents) == {USER_AGENT}

    # A fresh fetcher finds everything through the manifest alone.
    again = ImageFetcher(tmp_path / "cache")
    assert again.lookup(url_png) == path
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_concurrency_is_bounded(server, tmp_path):
    urls = [server.add(f"/many/{i}.png", ("slow", make_image(color=(i, i, i)))) for i in range(60)]
    summary = fast_fetcher(tmp_path / "c", max_workers=3).fetch(urls, progress=True)
    assert summary["fetched"] == 60
    assert 1 <= server.max_active <= 3, server.max_active


def test_retry_on_503_then_success(server, tmp_path):
    url = server.add("/flaky.png", ("status", 503), ("status", 503), ("ok", make_image()))
    summary = fast_fetcher(tmp_path / "c").fetch([url])
    assert summary["fetched"] == 1 and server.counts["/flaky.png"] == 3
    assert manifest_lines(tmp_path / "c")[-1]["attempts"] == 3


def test_gives_up_after_retries(server, tmp_path):
    url = server.add("/down.png", ("status", 500))
    summary = fast_fetcher(tmp_path / "c", retries=2).fetch([url])
    assert summary["failed_by_reason"] == {"http_500": 1}
    assert server.counts["/down.png"] == 3
    rec = manifest_lines(tmp_path / "c")[-1]
    assert rec["status"] == "error" and "gave up after 3 attempts" in rec["detail"]


def test_429_honours_retry_after(server, tmp_path):
    url = server.add("/slow-down.png", ("status", 429, {"Retry-After": "1"}), ("ok", make_image()))
    start = time.monotonic()
    # backoff alone would wait ~0.01 s: a ~1 s wait can only come from Retry-After
    summary = fast_fetcher(tmp_path / "c").fetch([url])
    assert summary["fetched"] == 1
    assert time.monotonic() - start >= 0.95
    assert server.counts["/slow-down.png"] == 2


def test_retry_after_beyond_limit_is_recorded_not_waited(server, tmp_path):
    url = server.add("/later.png", ("status", 429, {"Retry-After": "3600"}))
    start = time.monotonic()
    summary = fast_fetcher(tmp_path / "c", max_retry_after=5).fetch([url])
    assert time.monotonic() - start < 2
    assert summary["failed_by_reason"] == {"http_429": 1}
    assert "Retry-After 3600" in manifest_lines(tmp_path / "c")[-1]["detail"]


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


@pytest.mark.parametrize("status", [404, 403])
def test_client_errors_not_retried(server, tmp_path, status):
    url = server.add("/gone.png", ("status", status))
    summary = fast_fetcher(tmp_path / "c", retries=3).fetch([url])
    assert summary["failed"] == 1 and summary["failed_by_reason"] == {f"http_{status}": 1}
    assert server.counts["/gone.png"] == 1
    rec = manifest_lines(tmp_path / "c")[-1]
    assert rec["url"] == url and rec["reason"] == f"http_{status}" and rec["attempts"] == 1


def test_hanging_endpoint_times_out(server, tmp_path):
    url = server.add("/hang.png", ("hang", 10))
    start = time.monotonic()
    summary = fast_fetcher(tmp_path / "c", retries=1, read_timeout=0.3).fetch([url])
    assert time.monotonic() - start < 5
    assert summary["failed_by_reason"] == {"timeout": 1}
    assert server.counts["/hang.png"] == 2


def test_resume_makes_no_requests_for_done_urls(server, tmp_path):
    urls = [server.add(f"/img{i}.png", ("ok", make_image(color=(i, 0, 0)))) for i in range(5)]
    bad = server.add("/missing.png", ("status", 404))
    first = fast_fetcher(tmp_path / "c").fetch(urls + [bad])
    assert first["fetched"] == 5 and first["failed"] == 1
    before = sum(server.counts.values())

    second = fast_fetcher(tmp_path / "c", retry_failed=False).fetch(urls + [bad])
    assert second["cached"] == 5 and second["skipped"] == 1 and second["fetched"] == 0
    assert sum(server.counts.values()) == before  # zero requests

    third = fast_fetcher(tmp_path / "c").fetch(urls + [bad])  # failed URLs are retried by default
    assert third["cached"] == 5 and third["failed"] == 1
    assert sum(server.counts.values()) == before + 1 and server.counts["/missing.png"] == 2


def test_cut_download_leaves_no_file_and_rerun_completes(server, tmp_path):
    body = make_image("BMP", size=(120, 120))  # uncompressed: large enough to cut in half
    url = server.add("/cut.bmp", ("cut", body), ("ok", body))
    cache = tmp_path / "c"
    summary = fast_fetcher(cache, retries=0).fetch([url])
    assert summary["failed_by_reason"] == {"connection_error": 1}
    assert [f for f in files_under(cache) if f != "manifest.jsonl"] == []  # no image, no .part

    # The same bytes already cached under another URL survive a cut download of them.
    twin = server.add("/twin.bmp", ("ok", body))
    server.counts["/cut.bmp"] = 0  # cut once more
    fast_fetcher(cache, retries=0).fetch([twin])
    assert fast_fetcher(cache, retries=0).fetch([url])["failed"] == 1
    assert ImageFetcher(cache).lookup(twin).read_bytes() == body

    summary = fast_fetcher(cache, retries=0).fetch([url])
    assert summary["fetched"] == 1
    assert ImageFetcher(cache).lookup(url).read_bytes() == body


def test_cut_download_is_retried_within_a_run(server, tmp_path):
    body = make_image("BMP", size=(120, 120))
    url = server.add("/cut2.bmp", ("cut", body), ("ok", body))
    summary = fast_fetcher(tmp_path / "c", retries=1).fetch([url])
    assert summary["fetched"] == 1 and server.counts["/cut2.bmp"] == 2


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_rejects_undecodable_oversize_and_bombs(server, tmp_path):
    undecodable = server.add("/fake.jpg", ("ok", b"<html>this is not an image</html>"))
    noisy = io.BytesIO()
    Image.effect_noise((30, 30), 60).save(noisy, format="PNG")  # 900 px, incompressible
    truncated = server.add("/trunc.png", ("ok", noisy.getvalue()[: len(noisy.getvalue()) // 2]))
    big = server.add("/big.bin", ("stream", 40))  # 2.5 MB, no Content-Length
    # 40x40 = 1600 px: above max_pixels but below PIL's own 2x error threshold;
    # 100x100 = 10000 px: PIL itself raises DecompressionBombError at open.
    mid_bomb = server.add("/mid.png", ("ok", make_image("PNG", size=(40, 40))))
    bomb = server.add("/bomb.png", ("ok", make_image("PNG", size=(100, 100))))
    ok = server.add("/fine.png", ("ok", make_image("PNG", size=(20, 20))))
    cache = tmp_path / "c"
    fetcher = fast_fetcher(cache, max_bytes=1_000_000, max_pixels=1000)
    Image.MAX_IMAGE_PIXELS = 1000  # as if the process had set PIL's limit to the same value
    summary = fetcher.fetch([undecodable, truncated, big, mid_bomb, bomb, ok])
    assert summary["fetched"] == 1
    assert summary["failed_by_reason"] == {"decompression_bomb": 2, "too_large": 1, "undecodable": 2}
    by_url = {r["url"]: r for r in manifest_lines(cache)}
    assert "max_pixels 1000" in by_url[mid_bomb]["detail"]
    assert "max_bytes" in by_url[big]["detail"]
    assert server.counts["/fake.jpg"] == 1  # verification failures are not retried
    assert [f for f in files_under(cache) if f != "manifest.jsonl"] == [fetcher.lookup(ok).relative_to(cache.resolve()).as_posix()]


def test_content_length_over_limit_aborts_before_body(server, tmp_path):
    url = server.add("/huge.png", ("ok", make_image("BMP", size=(200, 200))))
    summary = fast_fetcher(tmp_path / "c", max_bytes=10_000).fetch([url])
    assert summary["failed_by_reason"] == {"too_large": 1}
    assert "Content-Length" in manifest_lines(tmp_path / "c")[-1]["detail"]


def test_unsafe_urls_never_write_outside_cache(server, tmp_path):
    # Serve an image on every path, whatever the client made of the dot segments, so each
    # http URL below really stores a file and we can check where it lands.
    server.default = Route(("ok", make_image()))
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    urls = [
        server.base + "/../../etc/passwd",
        server.base + "/%2e%2e/%2e%2e/evil.png",
        server.base + "/x.png?name=../../../../tmp/evil.png&path=/etc/passwd",
        server.base + "/..%2F..%2Fescape.png",
        f"file://{outside}",
        "file:///etc/passwd",
        "ftp://127.0.0.1/x.png",
        "data:image/png;base64,AAAA",
        "../../etc/passwd",
        "/etc/passwd",
        "http:///no-host.png",
        "http://127.0.0.1:1/\nInjected: header",
    ]
    cache = tmp_path / "deep" / "cache"
    before = set(files_under(tmp_path))
    summary = fast_fetcher(cache, retries=0).fetch(urls)
    assert summary["total"] == len(urls)
    after = set(files_under(tmp_path))
    new = after - before
    assert all(name.startswith("deep/cache/") for name in new), new
    assert outside.read_text() == "precious"
    by_url = {r["url"]: r for r in manifest_lines(cache)}
    assert [by_url[url]["status"] for url in urls[:4]] == ["ok"] * 4
    for url in urls[4:]:
        assert by_url[url]["status"] == "error" and by_url[url]["reason"] == "invalid_url", url
    assert "only http:// and https://" in by_url["file:///etc/passwd"]["detail"]
    # Stored images are named by content hash only.
    for name in new - {"deep/cache/manifest.jsonl"}:
        stem = Path(name).stem
        assert len(stem) == 64 and name == f"deep/cache/{stem[:2]}/{Path(name).name}"


def test_validate_url_errors_name_the_url():
    with pytest.raises(InvalidURLError, match=r"file:///etc/passwd.*scheme 'file'"):
        validate_url("file:///etc/passwd")
    with pytest.raises(InvalidURLError, match="no host"):
        validate_url("https:///x.png")
    assert validate_url("https://upload.wikimedia.org/a/b/c.jpg")


def test_partial_manifest_line_and_stale_part_are_survived(server, tmp_path):
    url = server.add("/p.png", ("ok", make_image()))
    cache = tmp_path / "c"
    fast_fetcher(cache).fetch([url])
    # A crash mid-append leaves half a line; a killed download leaves a .part file.
    with open(cache / "manifest.jsonl", "a") as f:
        f.write('{"url": "http://x/y.png", "sta')
    (cache / "tmp" / "dead.part").write_bytes(b"partial")
    other = server.add("/q.png", ("ok", make_image(color=(9, 9, 9))))
    fetcher = fast_fetcher(cache)
    assert fetcher.fetch([url, other])["fetched"] == 1
    assert not (cache / "tmp" / "dead.part").exists()
    assert ImageFetcher(cache).lookup(other) is not None and ImageFetcher(cache).lookup(url) is not None


def test_real_wikipedia_images(server, tmp_path, realwiki_dir):
    images = sorted((realwiki_dir / "images").iterdir())
    urls = []
    for i, path in enumerate(images):
        urls.append(server.add(f"/wikipedia/commons/{i}/{path.name}", ("ok", path.read_bytes())))
    fetcher = fast_fetcher(tmp_path / "c")
    summary = fetcher.fetch(urls)
    assert summary["fetched"] == len(images) and summary["failed"] == 0
    for url, path in zip(urls, images):
        cached = fetcher.lookup(url)
        assert cached.read_bytes() == path.read_bytes()
        with Image.open(path) as im:
            rec = fetcher.manifest.get(url)
            assert (rec["width"], rec["height"]) == im.size
            assert cached.suffix == {"JPEG": ".jpg", "PNG": ".png"}[im.format]


def test_cli_with_url_list_and_dataset(server, tmp_path, capsys):
    urls = [server.add(f"/cli{i}.png", ("ok", make_image(color=(0, i, 0)))) for i in range(3)]
    url_file = tmp_path / "urls.txt"
    url_file.write_text("# image list\n" + "\n".join(urls[:2]) + "\n\n")
    assert main([str(url_file), str(tmp_path / "c"), "--max_workers", "2", "--retries", "0"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["fetched"] == 2

    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"section_image_url": [[[urls[0]], []], [[urls[1], urls[2]]]]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert urls_from_dataset(tmp_path / "ds") == urls
    assert main(["--from_dataset", str(tmp_path / "ds"), str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["cached"] == 2 and summary["fetched"] == 1


# ------------------------------------------------------------------------------------- faults, second pass


def test_header_and_body_drips_end_at_the_one_deadline(server, tmp_path):
    # Each would run 10+ s if waited out: bytes arrive well within read_timeout, so only the wall-clock
    # deadline of the whole attempt (connection, headers, body) can end them. Eight of them on four workers
    # must not stall the fetch: two rounds of one deadline each.
    body = make_image()
    urls = [server.add(f"/headers{i}.png", ("drip_headers", body, 0.05)) for i in range(6)]
    urls += [server.add(f"/close{i}.png", ("drip_close", body, 0.1)) for i in range(2)]
    fetcher = fast_fetcher(tmp_path / "c", retries=0, max_workers=4, read_timeout=5, download_timeout=0.5)
    start = time.monotonic()
    summary = fetcher.fetch(urls)
    elapsed = time.monotonic() - start
    assert summary["failed_by_reason"] == {"timeout": 8}, summary
    assert elapsed < 2 * 0.5 + 1.5, elapsed
    details = [r["detail"] for r in manifest_lines(tmp_path / "c")]
    assert all("download exceeded 0.5 s" in d for d in details), details
    assert list((tmp_path / "c" / "tmp").iterdir()) == []


def test_working_folders_linked_out_of_the_cache_are_refused(server, tmp_path):
    from processing.data.image_fetcher import UnsafeCacheError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.part").write_bytes(b"keep")
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "tmp").symlink_to(outside)
    with pytest.raises(UnsafeCacheError, match=r"c/tmp: expected a real folder inside the image cache .*symbolic link"):
        fast_fetcher(cache)
    assert (outside / "precious.part").read_bytes() == b"keep"

    # A content folder linked out: the download is refused before anything is renamed there.
    (cache / "tmp").unlink()
    png = make_image()
    import hashlib

    (cache / hashlib.sha256(png).hexdigest()[:2]).symlink_to(outside)
    url = server.add("/x.png", ("ok", png))
    with pytest.raises(UnsafeCacheError, match="symbolic link"):
        fast_fetcher(cache).fetch([url])
    assert sorted(p.name for p in outside.iterdir()) == ["precious.part"]
    assert list((cache / "tmp").iterdir()) == []

    link = tmp_path / "m"
    (outside / "manifest.jsonl").write_text("")
    (link / "manifest.jsonl").parent.mkdir()
    (link / "manifest.jsonl").symlink_to(outside / "manifest.jsonl")
    with pytest.raises(UnsafeCacheError, match="manifest is a symbolic link"):
        fast_fetcher(link)


def test_manifest_paths_outside_the_cache_and_bad_records_are_never_served(server, tmp_path, caplog):
    from processing.image_source import ImageFolder

    cache = tmp_path / "deep" / "c"
    cache.mkdir(parents=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(make_image())
    good = server.add("/good.png", ("ok", make_image(color=(1, 2, 3))))
    lines = [
        {"url": "http://h/escape.png", "status": "ok", "sha256": "0" * 64, "path": "../../secret.png"},
        {"url": "http://h/abs.png", "status": "ok", "sha256": "0" * 64, "path": str(secret)},
        {"url": 12345, "status": "ok", "sha256": "0" * 64, "path": "ab/x.png"},
        {"url": good, "status": "ok", "sha256": "0" * 64},  # no path: fetched again
    ]
    (cache / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with caplog.at_level("WARNING"):
        fetcher = fast_fetcher(cache)
    assert "manifest.jsonl:3: skipping a manifest line: field 'url' is int" in caplog.text
    assert "manifest.jsonl:4: skipping a manifest line: status 'ok' without a 'path' string" in caplog.text
    assert fetcher.lookup("http://h/escape.png") is None and fetcher.lookup("http://h/abs.png") is None
    folder = ImageFolder(cache)
    assert folder.resolve("http://h/escape.png") is None and folder.resolve("http://h/abs.png") is None
    summary = fetcher.fetch([good])
    assert summary["fetched"] == 1 and fetcher.lookup(good).read_bytes() == make_image(color=(1, 2, 3))
