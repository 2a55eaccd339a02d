"""TFRecord framing without TensorFlow: a CRC-checking reader and an atomic writer.

A TFRecord file is a sequence of records, each framed as::

    uint64 length            (8 bytes, little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with `masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)`. The file may be
gzip-compressed as a whole (WikiWeb2M is); offsets reported here are then positions in the
*uncompressed* record stream, which is what identifies a record (the compressed position of a
record is not well defined).

`tfrecord.reader` never checks either CRC, so a bit flip in a 2M-page download would silently
produce a garbled page; this reader checks both and says where the damage is.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Iterator

import crc32c as _crc32c

from processing.errors import MMGLInputError

PathLike = str | os.PathLike

_HEADER = struct.Struct("<QI")  # length, masked crc of the 8 length bytes
_FOOTER = struct.Struct("<I")  # masked crc of the data
_HEADER_SIZE = _HEADER.size  # 12
_FOOTER_SIZE = _FOOTER.size  # 4
_MASK_DELTA = 0xA282EAD8
_GZIP_MAGIC = b"\x1f\x8b"
# Compressed bytes read per step; large enough that zlib, not Python, dominates the cost.
_CHUNK_SIZE = 1 << 20


class TFRecordCorruptError(MMGLInputError, ValueError):
    """A TFRecord file is truncated or a record's length or data CRC does not match.

    Attributes:
        path (`str`): the file.
        offset (`int`): byte offset of the damaged record's header in the (uncompressed) stream.
        reason (`str`): what is wrong.
    """

    def __init__(self, path: PathLike, offset: int, reason: str, compressed: bool = False):
        self.path = str(path)
        self.offset = int(offset)
        self.reason = reason
        self.compressed = compressed
        where = "uncompressed byte offset" if compressed else "byte offset"
        super().__init__(f"corrupt TFRecord at {where} {self.offset}: {reason}", file=self.path)

    def __reduce__(self):
        # `datasets` worker processes pickle errors back to the parent: keep every attribute.
        return type(self), (self.path, self.offset, self.reason, self.compressed)


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum of `data`: crc32c, rotated right by 15 bits, plus a constant.

    Args:
        data (`bytes`): the bytes to checksum.

    Returns:
        `int`: the masked CRC, an unsigned 32-bit integer.
    """
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def is_gzip_file(path: PathLike) -> bool:
    """Whether `path` starts with the gzip magic bytes (so `.gz` naming is not trusted)."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _iter_stream_chunks(path: PathLike, gzip: bool) -> Iterator[bytes]:
    """Yield the file's (decompressed) bytes in chunks; raise `_TruncatedGzip` / `_BadGzip`.

    zlib is driven directly instead of `gzip.GzipFile`, because GzipFile loses already decompressed
    bytes when it hits a truncated stream inside a buffered read, and here every complete record
    before the damage must still come out. Concatenated gzip members are followed, as `gzip` does.
    """
    with open(path, "rb") as f:
        if not gzip:
            while True:
                chunk = f.read(_CHUNK_SIZE)
                if not chunk:
                    return
                yield chunk
        decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
        in_member = False  # True once a member has started and has not reached its end marker
        while True:
            raw = f.read(_CHUNK_SIZE)
            if not raw:
                if in_member and not decomp.eof:
                    raise _TruncatedGzip()
                return
            while raw:
                in_member = True
                try:
                    out = decomp.decompress(raw)
                except zlib.error as exc:  # bad deflate data or gzip trailer CRC / size mismatch
                    raise _BadGzip(str(exc)) from None
                if out:
                    yield out
                if decomp.eof:
                    raw = decomp.unused_data
                    decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    in_member = False
                    # Some writers pad the end of a gzip file with zero bytes; gzip ignores them.
                    if raw.strip(b"\x00") == b"":
                        raw = b""
                else:
                    raw = b""


class _TruncatedGzip(Exception):
    pass


class _BadGzip(Exception):
    pass


@dataclass
class TFRecordReader:
    """Iterate `(offset, data)` over the records of one TFRecord file, checking both CRCs.

    Args:
        path (`str` or `os.PathLike`): the file, gzip-compressed or plain.
        skip_corrupt (`bool`, *optional*, defaults to `False`): count and skip damaged records
            instead of raising `TFRecordCorruptError`. A record whose data CRC is wrong is skipped
            and reading goes on (its length was verified, so the next record's position is known).
            A bad length CRC or a truncated file stops reading: the framing after it is unknown.
        compression (`str`, *optional*, defaults to `"auto"`): `"auto"` (sniff the gzip magic
            bytes), `"gzip"` or `None`.

    Attributes:
        num_records (`int`): valid records yielded so far.
        num_corrupt (`int`): damaged records (or damaged tails) skipped so far.
        errors (`list[TFRecordCorruptError]`): what was skipped, for reports.

    Example::

        reader = TFRecordReader("wikiweb2m-val.tfrecord.gz", skip_corrupt=True)
        for offset, data in reader:
            ...
        print(reader.num_records, reader.num_corrupt)
    """

    path: PathLike
    skip_corrupt: bool = False
    compression: str | None = "auto"
    num_records: int = field(default=0, init=False)
    num_corrupt: int = field(default=0, init=False)
    errors: list[TFRecordCorruptError] = field(default_factory=list, init=False)

    def __post_init__(self):
        if self.compression not in ("auto", "gzip", None):
            raise ValueError(f"compression must be 'auto', 'gzip' or None, got {self.compression!r}")

    def _gzip(self) -> bool:
        if self.compression == "auto":
            return is_gzip_file(self.path)
        return self.compression == "gzip"

    def _fail(self, offset: int, reason: str, gzip: bool) -> None:
        """Raise, or record the damage when skipping."""
        err = TFRecordCorruptError(self.path, offset, reason, compressed=gzip)
        if not self.skip_corrupt:
            raise err
        self.num_corrupt += 1
        self.errors.append(err)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        self.num_records, self.num_corrupt, self.errors = 0, 0, []  # counts are per pass
        gzip = self._gzip()
        buf = bytearray()
        pos = 0  # read position inside buf
        base = 0  # stream offset of buf[0]
        chunks = _iter_stream_chunks(self.path, gzip)
        eof = False
        while True:
            # Parse every complete record in the buffer before reading more.
            while True:
                avail = len(buf) - pos
                if avail < _HEADER_SIZE:
                    break
                length, length_crc = _HEADER.unpack_from(buf, pos)
                offset = base + pos
                if masked_crc32c(bytes(buf[pos : pos + 8])) != length_crc:
                    self._fail(offset, f"length CRC mismatch (length field reads {length})", gzip)
                    return  # framing lost: nothing after this point can be located
                end = pos + _HEADER_SIZE + length + _FOOTER_SIZE
                if len(buf) < end:
                    break
                data = bytes(buf[pos + _HEADER_SIZE : end - _FOOTER_SIZE])
                (data_crc,) = _FOOTER.unpack_from(buf, end - _FOOTER_SIZE)
                pos = end
                if masked_crc32c(data) != data_crc:
                    self._fail(offset, f"data CRC mismatch in a record of {length} bytes", gzip)
                    continue
                self.num_records += 1
                yield offset, data
            if eof:
                break
            # Drop consumed bytes so the buffer stays about one chunk long (no quadratic copying).
            if pos:
                del buf[:pos]
                base += pos
                pos = 0
            try:
                chunk = next(chunks, None)
            except _TruncatedGzip:
                chunk, eof = None, True
                if len(buf) == 0:  # the stream ends on a record boundary, but the gzip is cut
                    self._fail(base, "gzip stream ends before its end-of-stream marker", gzip)
                    return
            except _BadGzip as exc:
                self._fail(base, f"gzip data is corrupt ({exc})", gzip)
                return
            if chunk is None:
                eof = True
            else:
                buf += chunk
        if len(buf) - pos:
            offset = base + pos
            have = len(buf) - pos
            if have < _HEADER_SIZE:
                reason = f"file truncated inside a record header ({have} of {_HEADER_SIZE} bytes)"
            else:
                (length,) = struct.unpack_from("<Q", buf, pos)
                need = _HEADER_SIZE + length + _FOOTER_SIZE
                reason = f"file truncated inside a record ({have} of {need} bytes present)"
            self._fail(offset, reason, gzip)


def iter_tfrecord(
    path: PathLike, skip_corrupt: bool = False, compression: str | None = "auto"
) -> Iterator[tuple[int, bytes]]:
    """Yield `(offset, data)` for each record of a TFRecord file; see `TFRecordReader`.

    Args:
        path (`str` or `os.PathLike`): the file, gzip-compressed or plain.
        skip_corrupt (`bool`, *optional*, defaults to `False`): skip damaged records instead of
            raising `TFRecordCorruptError` (use `TFRecordReader` to read how many were skipped).
        compression (`str`, *optional*, defaults to `"auto"`): `"auto"`, `"gzip"` or `None`.

    Yields:
        `tuple[int, bytes]`: the record's byte offset in the (uncompressed) stream and its data.
    """
    return iter(TFRecordReader(path, skip_corrupt=skip_corrupt, compression=compression))


def frame_record(data: bytes) -> bytes:
    """One record with its TFRecord framing (length, length CRC, data, data CRC)."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (length, struct.pack("<I", masked_crc32c(length)), data, struct.pack("<I", masked_crc32c(data)))
    )


def write_tfrecord(
    path: PathLike, records: Iterable[bytes], gzip: bool = True, compresslevel: int = 6
) -> int:
    """Write `records` to a TFRecord file, atomically.

    The records go to a temporary file beside `path` that is renamed over `path` with
    `os.replace` only once complete and flushed to disk, so a crash (or an exception raised by the
    `records` iterable) never leaves a half-written file under the final name.

    Args:
        path (`str` or `os.PathLike`): the destination; its folder must exist.
        records (`Iterable[bytes]`): serialized records (e.g. `SequenceExample.SerializeToString()`).
        gzip (`bool`, *optional*, defaults to `True`): gzip-compress the whole file, as WikiWeb2M is.
        compresslevel (`int`, *optional*, defaults to 6): zlib level; 6 is ~3x faster than gzip's
            default 9 for a few percent more bytes.

    Returns:
        `int`: the number of records written.
    """
    import gzip as _gzip  # local: the parameter named `gzip` shadows the module

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        # mkstemp creates the file 0600; give the result ordinary permissions.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as raw:
            # filename="" and mtime=0: no temp name or timestamp in the gzip header, so the same
            # records always give the same bytes.
            out = (
                _gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0)
                if gzip
                else raw
            )
            try:
                for data in records:
                    if not isinstance(data, (bytes, bytearray, memoryview)):
                        raise TypeError(f"records must be bytes, got {type(data).__name__}")
                    out.write(frame_record(bytes(data)))
                    count += 1
            finally:
                if gzip:
                    out.close()  # writes the gzip trailer; does not close `raw`
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return count


__all__ = [
    "TFRecordCorruptError",
    "TFRecordReader",
    "frame_record",
    "is_gzip_file",
    "iter_tfrecord",
    "masked_crc32c",
    "write_tfrecord",
]
