"""Where a photo was taken is not kept: a JPEG's header loses its location before it is stored, and
nothing else changes (no re-encoding: the compressed image data, from the start of scan on, is kept
byte for byte).

- The Exif segment (APP1 ``Exif``) loses its GPS IFD (``piexif`` reads and rewrites the Exif block); the
  rest of it (orientation, camera, time) is kept. An Exif block ``piexif`` cannot read or rewrite is
  dropped whole: another reader might find a location in it.
- XMP packets (APP1 ``http://ns.adobe.com/xap/1.0/`` and extended XMP) are dropped: they can hold the same
  location (``exif:GPSLatitude``) as text.

Only the header before the first start of scan is looked at, which is where cameras and phones put it.
"""

from __future__ import annotations

import struct

import piexif

from server.infra.image_probe import JPEG_SOS, jpeg_segments

APP1 = 0xE1
EXIF = b"Exif\x00\x00"
XMP = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
MAX_SEGMENT = 0xFFFF - 2  # payload bytes a segment's 16-bit length allows


def header_end(head: bytes) -> int | None:
    """Where a JPEG's header ends (the start of scan's offset), or ``None`` if ``head`` stops before it."""
    for marker, start, _ in jpeg_segments(head):
        if marker == JPEG_SOS:
            return start
    return None


def strip_location(head: bytes) -> bytes | None:
    """``head`` (a JPEG's first bytes) without its location metadata, the bytes from the start of scan on
    unchanged; ``None`` if ``head`` does not reach the start of scan yet."""
    end = header_end(head)
    if end is None:
        return None
    out = [head[:2]]
    for marker, start, stop in jpeg_segments(head):
        if marker == JPEG_SOS:
            break
        segment = head[start:stop]
        if marker == APP1:
            payload = segment[4:]
            if payload.startswith(XMP):
                continue
            if payload.startswith(EXIF):
                segment = _exif_without_gps(segment)
        out.append(segment)
    out.append(head[end:])
    return b"".join(out)


def _exif_without_gps(segment: bytes) -> bytes:
    """This Exif segment without its GPS IFD: the same bytes if it has none, nothing if it cannot be read
    or rewritten."""
    try:
        exif = piexif.load(segment[4:])
        if not exif.get("GPS") and piexif.ImageIFD.GPSTag not in exif.get("0th", {}):
            return segment
        exif["GPS"] = {}
        exif.get("0th", {}).pop(piexif.ImageIFD.GPSTag, None)
        rewritten = piexif.dump(exif)
    except Exception:  # piexif raises many kinds (struct.error, ValueError, KeyError...) on odd blocks
        return b""
    if len(rewritten) > MAX_SEGMENT:
        return b""
    return struct.pack(">BBH", 0xFF, APP1, len(rewritten) + 2) + rewritten
