"""Where a neighbour image comes from and how it becomes pixels: the ONE image resolver and the ONE
image preprocessing that the processor, the pipeline, the embedding-cache builder and the training
script all use.

Resolving (`ImageFolder.resolve`): an image node's reference is a URL (WikiWeb2M), a relative path or
an absolute path. Against an image folder it is, in this order:

1. a URL recorded as fetched in the folder's `manifest.jsonl` (the image fetcher's content-addressed
   folder, `<sha256[:2]>/<sha256>.<ext>`): that file;
2. a URL: the file named like the URL's last path component, as is or percent-decoded (a plain folder
   of WikiWeb2M images);
3. a path: the path under the folder (an absolute path only when it lies inside the folder).

Nothing outside the folder is ever returned, whatever a reference holds: `..`, percent-encoded
`%2e%2e%2f`, absolute paths and symbolic links that leave the folder all resolve to `None` (the image
is then masked). Without a folder, URLs resolve to nothing and a path is the caller's own file, used as
given.

Preprocessing (`clip_image_processor`, `load_rgb_image`, `pixel_values`): decode to RGB (a file that
cannot be decoded, including decompression bombs, raises `ImageDecodeError` naming it, which callers
turn into a masked slot and one warning), then CLIP's resize / centre crop / normalise with the
encoder's image size and statistics. The cache builder embeds exactly these pixels, so a cached image
embedding equals the in-model encoder's embedding of the same file.

This file is Hub-loadable: it imports installed packages and same-folder files only.
"""
from __future__ import annotations

import array
import hashlib
import io
import json
import logging
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np

from .page_graph import has_control_characters, is_in_memory_image
from .errors import MMGLInputError
from .sorted_digests import find_one, unique_order

if TYPE_CHECKING:  # imported where pixels are made: the image fetcher and the resolver need neither
    import torch
    from transformers import CLIPImageProcessor

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
# open_clip's default preprocessing statistics (OPENAI_DATASET_MEAN / _STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageDecodeError(MMGLInputError, ValueError):
    """An image file or in-memory image that cannot be decoded (corrupt, unsupported, too many pixels)."""


# ------------------------------------------------------------------------------------------ manifest
class ImageManifest:
    """The image fetcher's append-only JSON-lines manifest, loaded into a dict for O(1) lookups.

    Records (the last line for a URL wins)::

        {"url": ..., "status": "ok", "sha256": ..., "path": "ab/ab12....jpg", "bytes": 1234, ...}
        {"url": ..., "status": "error", "reason": "http_404", "detail": "...", ...}

    Args:
        path (`str` or `Path`): the `manifest.jsonl` file (created on the first `append`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._needs_newline = False
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        # A crash can cut the last line; start the next append on a fresh line so it survives.
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for _, url, record in _manifest_records(io.BytesIO(data), self.path):
            self._records[url] = record

    def get(self, url: str) -> dict | None:
        """The latest record for `url`, or None."""
        return self._records.get(url)

    def append(self, record: dict) -> None:
        """Append `record` (must hold `url`) and make it the latest for its URL."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                if self._needs_newline:
                    f.write("\n")
                    self._needs_newline = False
                f.write(line)
                f.flush()
            self._records[record["url"]] = record

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict]:
        return iter(list(self._records.values()))


class ManifestIndex:
    """A read-only view of a `manifest.jsonl` for lookups by URL, at 24 bytes per URL: the sorted 128-bit
    BLAKE2b digests of the URLs and the byte offset of each URL's latest line (the file is memory-mapped; a
    lookup parses that one line). The resolver reads a fetched folder through it, so a process (and each
    DataLoader worker) holds ~0.3 GiB for WikiWeb2M's 3.8M images (measured ~75 B per image) instead of ~5 GiB
    for a dict of records (`ImageManifest`, which the fetcher keeps for appending). Lines are read as `ImageManifest` reads them (the last line of a URL
    wins; unreadable lines are skipped with a warning naming the line: `_manifest_records`).

    Args:
        path (`str` or `Path`): the `manifest.jsonl` file.
    """

    RECENT = 4096  # records kept after a lookup

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        digests, offsets = bytearray(), array.array("q")
        with open(self.path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        lines = iter(self._map.readline, b"") if size else iter(())  # line by line, never a copy of the file
        for start, url, _ in _manifest_records(lines, self.path):
            digests += _url_digest(url)
            offsets.append(start)
        keys = np.frombuffer(bytes(digests), dtype="V16")
        order = unique_order(keys, keep="last")  # a URL recorded twice: its last record wins
        self._keys, self._offsets = keys[order], np.asarray(offsets, dtype=np.int64)[order]
        # The latest records looked up (a sample's images are resolved, then their hashes read): bounded.
        self._recent: OrderedDict[str, dict | None] = OrderedDict()

    def __reduce__(self):  # a spawned worker maps the file again
        return (type(self), (self.path,))

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, url: str) -> dict | None:
        """The latest record for `url`, or None."""
        if not isinstance(url, str) or not len(self._keys):
            return None
        if url in self._recent:
            self._recent.move_to_end(url)
            return self._recent[url]
        key = np.frombuffer(_url_digest(url), dtype="V16")[0]
        row = find_one(self._keys, key)
        record = None
        if row >= 0:
            start = int(self._offsets[row])
            end = self._map.find(b"\n", start)
            record = json.loads(self._map[start : end if end >= 0 else len(self._map)])
            record = record if record.get("url") == url else None  # a digest collision is not a match
        self._recent[url] = record
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return record


def _manifest_records(lines: Iterable[bytes], path) -> Iterator[tuple[int, str, dict]]:
    """`(byte offset, url, record)` of each readable line of a manifest, in file order (lines end at `\\n`);
    an unreadable line is skipped with a warning naming it. Both manifest readers read it through this."""
    offset = 0
    for line_no, line in enumerate(lines, start=1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            url = record["url"]
        except (ValueError, KeyError, TypeError):
            logger.warning("%s:%d: skipping an unreadable manifest line", path, line_no)
            continue
        problem = _manifest_record_problem(record)
        if problem is not None:
            logger.warning("%s:%d: skipping a manifest line: %s", path, line_no, problem)
            continue
        yield start, url, record


def _manifest_record_problem(record: dict) -> str | None:
    """What makes a parsed manifest line unusable (a URL that is not text, an `ok` record without the path or
    hash of its file), or `None`."""
    if not isinstance(record.get("url"), str):
        return f"field 'url' is {type(record.get('url')).__name__}, expected a string"
    if record.get("status") == "ok":
        for field in ("path", "sha256"):
            if not isinstance(record.get(field), str) or not record[field]:
                return f"status 'ok' without a '{field}' string (expected the fetched file's {field})"
    return None


def _url_digest(url: str) -> bytes:
    return hashlib.blake2b(url.encode("utf-8"), digest_size=16).digest()


# ------------------------------------------------------------------------------------------ resolver
def file_inside(root: str, path: str | os.PathLike) -> str | None:
    """The real path of `path` when it is a regular file inside the folder `root` (itself a real path), after
    following every symbolic link; else `None`. The one containment rule of image folders: the resolver and the
    image fetcher's `lookup` both use it."""
    path = os.fspath(path)
    if "\0" in path:
        return None
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([real, root]) != root or not os.path.isfile(real):
        return None
    return real


class ImageFolder:
    """An image folder: a plain folder of files named by URL basename, or the image fetcher's
    content-addressed folder with its `manifest.jsonl` (see the module docstring for the rules).

    Args:
        root (`str` or `os.PathLike`, *optional*): the folder; `None` for no folder.

    Raises:
        `FileNotFoundError` / `NotADirectoryError` naming `root` when it is given but is not a folder (a mistyped
        path would otherwise mask every image without a word).
    """

    def __init__(self, root: str | os.PathLike | None):
        if root is not None and not os.path.isdir(root):
            error = NotADirectoryError if os.path.exists(root) else FileNotFoundError
            raise error(f"image folder {os.fspath(root)}: {'not a folder' if os.path.exists(root) else 'no such folder'}; "
                        "expected the folder of page images (files named by URL basename, or the image fetcher's folder "
                        "with manifest.jsonl)")
        self.root = None if root is None else os.path.realpath(os.fspath(root))
        manifest_path = None if self.root is None else os.path.join(self.root, MANIFEST_NAME)
        self.manifest = ManifestIndex(manifest_path) if manifest_path and os.path.isfile(manifest_path) else None

    @classmethod
    def coerce(cls, folder: ImageFolder | str | os.PathLike | None) -> ImageFolder:
        """An `ImageFolder` from a folder path (or `None`), or the folder itself."""
        return folder if isinstance(folder, ImageFolder) else cls(folder)

    def __repr__(self) -> str:
        kind = "fetched, with manifest" if self.manifest is not None else "plain"
        return f"ImageFolder({self.root!r}, {kind})"

    def _inside(self, path: str) -> str | None:
        """`path` as a real path when it is a file inside the folder, else None."""
        return file_inside(self.root, path)

    def resolve(self, ref: Any) -> str | None:
        """The file of an image reference, or `None` (no such file, or outside the folder)."""
        if not ref or not isinstance(ref, (str, os.PathLike)):
            return None
        ref = os.fspath(ref)
        if has_control_characters(ref):  # masked (the page graph warns about it), never handed to the OS
            return None
        is_url = "://" in ref
        if self.root is None:
            return None if is_url or not os.path.isfile(ref) else ref
        if is_url and self.manifest is not None:
            record = self.manifest.get(ref)
            if record is not None and record.get("status") == "ok" and isinstance(record.get("path"), str):
                return self._inside(os.path.join(self.root, record["path"]))
        if is_url:
            name = urlsplit(ref).path.rsplit("/", 1)[-1]
            candidates = [name, unquote(name)]
            # A URL's file name is one path component: a decoded "/" or ".." is never a file of the folder.
            candidates = [c for c in candidates if c not in ("", ".", "..") and "/" not in c and "\\" not in c]
        else:
            candidates = [ref]
        for candidate in dict.fromkeys(candidates):
            found = self._inside(os.path.join(self.root, candidate))
            if found is not None:
                return found
        return None

    def sha256(self, ref: Any) -> str | None:
        """The content hash the fetcher recorded for a URL, when it did (no need to read the file)."""
        if self.manifest is None or not isinstance(ref, str):
            return None
        record = self.manifest.get(ref)
        if record is None or record.get("status") != "ok":
            return None
        return record.get("sha256")


class MissingImagesError(MMGLInputError, ValueError):
    """An image folder that resolves none of the image references a command needs."""


def check_image_coverage(resolved: int, missing: int, image_dir, allow_missing: bool = False,
                         flag: str = "--allow_missing_images") -> None:
    """The one rule for image references without a file, after a command counted them: a given folder that
    resolves none of them is an error (`MissingImagesError`) unless `allow_missing` (the images are absent on
    purpose); some unresolved, or no folder given at all, is a warning with the counts (those slots are masked).

    Args:
        resolved (`int`), missing (`int`): image references that resolve to a file, and those that do not.
        image_dir: the folder given (or `None`).
        allow_missing (`bool`, *optional*, defaults to `False`): accept a folder that resolves nothing.
        flag (`str`, *optional*): the option that sets `allow_missing`, named in the error.
    """
    total = resolved + missing
    if not missing:
        return
    if image_dir is None:
        logger.warning("no image folder given: the %d image reference(s) are masked", total)
    elif not resolved and not allow_missing:
        raise MissingImagesError(
            f"image folder {os.fspath(image_dir)} resolves none of the {total} image reference(s) needed (expected files "
            f"named by URL basename, paths relative to the folder, or the image fetcher's folder with manifest.jsonl); "
            f"pass {flag} if the images are absent on purpose (their slots are then masked)"
        )
    else:
        logger.warning("image folder %s resolves %d of %d image reference(s); the %d others have no file and are masked",
                       os.fspath(image_dir), resolved, total, missing)


# ------------------------------------------------------------------------------------ preprocessing
def clip_image_processor(model_name: str = "ViT-B-32", model_config: dict | None = None) -> CLIPImageProcessor:
    """The ONE preprocessing of neighbour images: a `CLIPImageProcessor` with open_clip's eval settings
    for the encoder (shortest edge to `image_size`, bicubic, centre crop, the model's mean / std).

    Args:
        model_name (`str`, *optional*, defaults to `"ViT-B-32"`): an open_clip model name (its bundled
            config is read; works offline).
        model_config (`dict`, *optional*): a custom open_clip config (`vision_cfg` gives the size and
            statistics); takes precedence over `model_name`.
    """
    from transformers import CLIPImageProcessor

    if model_config is None:
        import open_clip

        model_config = open_clip.get_model_config(model_name)
        if model_config is None:
            raise ValueError(f"open_clip has no model config named {model_name!r}")
    vision = model_config.get("vision_cfg", {})
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    mean = tuple(vision.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(vision.get("image_std", OPENAI_CLIP_STD))
    return CLIPImageProcessor(
        size={"shortest_edge": int(image_size)},
        crop_size={"height": int(image_size), "width": int(image_size)},
        do_center_crop=True,
        resample=3,  # PIL.Image.BICUBIC, as open_clip
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


def image_bytes(image: Any) -> bytes:
    """The bytes an embedding cache keys an in-memory image by: encoded bytes as given, a PIL image as
    lossless PNG (so the cache sees the same pixels)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def describe_image(source: Any) -> str:
    """A name for an image in messages: its path, or its kind for an in-memory image."""
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else f"in-memory {type(source).__name__} image"


def load_rgb_image(source: Any):
    """An RGB PIL image from a file path, encoded bytes or a PIL image.

    Raises:
        `ImageDecodeError`: naming the file, when it cannot be read or decoded, including images over
        PIL's pixel limit (decompression bombs).
    """
    from PIL import Image

    try:
        if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
            opened = source if isinstance(source, (str, os.PathLike)) else io.BytesIO(bytes(source))
            with Image.open(opened) as image:
                return image.convert("RGB")
        return source.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"cannot decode image {describe_image(source)} ({type(err).__name__}: {err})") from err


def pixel_values(image_processor, images: list) -> torch.Tensor:
    """`(n, 3, H, W)` float32 pixels of RGB PIL images, through `image_processor`."""
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


__all__ = [
    "MANIFEST_NAME",
    "ImageDecodeError",
    "ImageFolder",
    "ImageManifest",
    "ManifestIndex",
    "MissingImagesError",
    "check_image_coverage",
    "file_inside",
    "clip_image_processor",
    "describe_image",
    "image_bytes",
    "is_in_memory_image",
    "load_rgb_image",
    "pixel_values",
]
