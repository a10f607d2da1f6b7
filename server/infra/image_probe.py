"""What kind of image a byte string starts with, and its width and height, read from the headers
alone (PNG IHDR, JPEG SOFn, WebP VP8/VP8L/VP8X) without decoding anything.

The type is decided by the content's magic bytes only, never by a file name or a claimed type."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic...), which carry the size.
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
JPEG_SOS = 0xDA  # start of scan: the compressed image data follows its header


class NotAnImage(Exception):
    """The bytes are not a JPEG, PNG or WebP image, or its header is broken."""


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def probe_image(head: bytes) -> ImageInfo | None:
    """The image's type and size, or ``None`` if more bytes are needed to tell.

    Raises ``NotAnImage`` as soon as the bytes cannot be one of the accepted types."""
    if not head:
        return None
    for magic, probe in ((PNG_MAGIC, _png), (JPEG_MAGIC, _jpeg), (b"RIFF", _webp)):
        n = min(len(head), len(magic))
        if head[:n] == magic[:n]:
            return probe(head) if len(head) >= len(magic) else None
    raise NotAnImage("not a JPEG, PNG or WebP image")


def _png(head: bytes) -> ImageInfo | None:
    if len(head) < 24:
        return None
    if head[12:16] != b"IHDR":
        raise NotAnImage("PNG without an IHDR header")
    width, height = struct.unpack(">II", head[16:24])
    return _info("image/png", width, height)


def jpeg_segments(head: bytes) -> Iterator[tuple[int, int, int]]:
    """The marker segments of a JPEG's header after SOI, as ``(marker, start, end)`` offsets into ``head``,
    up to and including the start of scan (SOS, whose segment ends where the compressed image data begins).
    Stops where ``head`` ends before the next segment's length; an ``end`` may lie past the bytes given.
    Raises ``NotAnImage`` where the structure is broken."""
    i = 2
    while True:
        if i + 1 >= len(head):
            return
        if head[i] != 0xFF:
            raise NotAnImage("JPEG segment without a marker")
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in JPEG_STANDALONE:
            yield marker, i, i + 2
            i += 2
            continue
        if marker in (0xD8, 0xD9):
            raise NotAnImage("JPEG without a frame header before its data")
        if i + 4 > len(head):
            return
        (length,) = struct.unpack(">H", head[i + 2:i + 4])
        if length < 2:
            raise NotAnImage("JPEG segment with a bad length")
        yield marker, i, i + 2 + length
        if marker == JPEG_SOS:
            return
        i += 2 + length


def _jpeg(head: bytes) -> ImageInfo | None:
    for marker, start, _ in jpeg_segments(head):
        if marker == JPEG_SOS:
            raise NotAnImage("JPEG without a frame header before its data")
        if marker in JPEG_SOF:
            if start + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[start + 5:start + 9])
            return _info("image/jpeg", width, height)
    return None


def _webp(head: bytes) -> ImageInfo | None:
    if len(head) < 30:
        return None
    if head[8:12] != b"WEBP":
        raise NotAnImage("RIFF file that is not WebP")
    chunk = head[12:16]
    if chunk == b"VP8 ":
        if head[23:26] != b"\x9d\x01\x2a":
            raise NotAnImage("WebP (lossy) without its start code")
        width, height = struct.unpack("<HH", head[26:30])
        return _info("image/webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if head[20] != 0x2F:
            raise NotAnImage("WebP (lossless) without its signature")
        (bits,) = struct.unpack("<I", head[21:25])
        return _info("image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return _info("image/webp", width, height)
    raise NotAnImage("WebP with an unknown first chunk")


def _info(content_type: str, width: int, height: int) -> ImageInfo:
    if width <= 0 or height <= 0:
        raise NotAnImage("image with a zero width or height")
    return ImageInfo(content_type, width, height)
