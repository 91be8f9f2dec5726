"""Read what an upload's headers promise (sizes, scans, frames, metadata) without decoding a pixel.

Each reader walks the container's own length fields in pure Python, so its cost grows with the
number of segments, not with the pixels; it stops quietly at the first thing it cannot parse and
leaves judging broken files to the decoder. What it returns is checked in ``service.pictures``.
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

# The marker after JPEG entropy-coded data: 0xFF not followed by a stuffed zero, a restart marker or fill
# (of fill bytes, the last one matches). No "\xff+": that makes the search 25 times slower.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_READ = {b"IHDR", b"acTL", b"fcTL", b"zTXt", b"iCCP", b"iTXt"}
# Segments, chunks or GIF sub-blocks walked at most: a legitimate 5 MB file has at most ~20,000 (GIF's
# 255-byte sub-blocks); a file of empty ones would keep the worker in this Python loop for half a second.
MAX_PARTS = 50_000


@dataclass
class Header:
    """What the headers declare; ``None`` where the format does not say or the file ends first."""

    format: str
    width: int = 0
    height: int = 0
    frames: int = 1
    scans: int = 0                 # JPEG: start-of-scan segments (a baseline JPEG has one per component group)
    progressive: bool = False
    components: int = 0
    largest_frame: int = 0         # pixels of the largest frame (GIF, APNG, WebP) or 0
    metadata_bytes: int = 0        # PNG: zTXt/iTXt/iCCP payloads once inflated (counted up to a cap)
    largest_metadata: int = 0
    parts: int = 0                 # segments, chunks or sub-blocks walked; the walk stops past MAX_PARTS


def read_header(data: bytes, *, metadata_cap: int) -> Header | None:
    """Return the declared facts of a JPEG, PNG, GIF or WebP file, or ``None`` for any other content."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png(data, metadata_cap)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    return None


def _jpeg(data: bytes) -> Header:
    header = Header("JPEG")
    pos, end = 2, len(data)
    while pos + 4 <= end and header.parts <= MAX_PARTS:
        header.parts += 1
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in _JPEG_SOF and not header.width and pos + 10 <= end:
            header.height, header.width = struct.unpack_from(">HH", data, pos + 5)
            header.components = data[pos + 9]
            header.progressive = marker in _JPEG_PROGRESSIVE
        pos += 2 + length
        if marker == 0xDA:
            header.scans += 1
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return header


def _png(data: bytes, metadata_cap: int) -> Header:
    header = Header("PNG")
    pos, end = 8, len(data)
    channels = bit_depth = 0
    while pos + 8 <= end and header.parts <= MAX_PARTS:
        header.parts += 1
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length] if kind in _PNG_READ else b""
        if kind == b"IHDR" and len(body) >= 13:
            header.width, header.height, bit_depth, colour = struct.unpack_from(">IIBB", body)
            channels = _PNG_CHANNELS.get(colour, 4)
        elif kind == b"acTL" and len(body) >= 8:
            header.frames = struct.unpack_from(">I", body)[0]
        elif kind == b"fcTL" and len(body) >= 12:
            width, height = struct.unpack_from(">II", body, 4)
            header.largest_frame = max(header.largest_frame, width * height)
        elif kind in (b"zTXt", b"iCCP", b"iTXt") and header.metadata_bytes <= metadata_cap:
            size = _inflated_size(_png_compressed_payload(kind, body), metadata_cap + 1 - header.metadata_bytes)
            header.metadata_bytes += size
            header.largest_metadata = max(header.largest_metadata, size)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if bit_depth:
        header.components = channels * max(1, bit_depth // 8)
    return header


def _png_compressed_payload(kind: bytes, body: bytes) -> bytes:
    """The zlib stream of a zTXt or iCCP chunk (after keyword, NUL, method) or of a compressed iTXt."""
    keyword_end = body.find(b"\0")
    if keyword_end < 0:
        return b""
    if kind != b"iTXt":
        return body[keyword_end + 2:]
    if body[keyword_end + 1:keyword_end + 2] != b"\x01":  # not compressed
        return b""
    language_end = body.find(b"\0", keyword_end + 3)
    translated_end = body.find(b"\0", language_end + 1) if language_end >= 0 else -1
    return body[translated_end + 1:] if translated_end >= 0 else b""


def _inflated_size(stream: bytes, cap: int) -> int:
    """Bytes the zlib ``stream`` inflates to, counting no further than ``cap`` (a bomb costs at most that)."""
    inflater = zlib.decompressobj()
    try:
        return len(inflater.decompress(stream, max(1, cap)))
    except zlib.error:
        return 0  # a broken stream is the decoder's to report


def _gif(data: bytes) -> Header:
    header = Header("GIF", frames=0)
    end = len(data)
    if end < 13:
        return header
    header.width, header.height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos < end and header.parts <= MAX_PARTS:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _gif_skip_sub_blocks(data, pos + 2, header)
        elif block == 0x2C and pos + 10 <= end:  # image descriptor
            width, height, flags = struct.unpack_from("<HHB", data, pos + 5)
            header.frames += 1
            header.largest_frame = max(header.largest_frame, width * height)
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            pos = _gif_skip_sub_blocks(data, pos + 1, header)  # after the LZW minimum code size
        else:
            break
    return header


def _gif_skip_sub_blocks(data: bytes, pos: int, header: Header) -> int:
    end = len(data)
    while pos < end and header.parts <= MAX_PARTS:
        header.parts += 1
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    return end


def _webp(data: bytes) -> Header:
    header = Header("WEBP", frames=0)
    pos, end = 12, len(data)
    while pos + 8 <= end and header.parts <= MAX_PARTS:
        header.parts += 1
        kind, length = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8:pos + 8 + min(length, 32)]
        if kind == b"VP8X" and len(body) >= 10:
            header.width = 1 + int.from_bytes(body[4:7], "little")
            header.height = 1 + int.from_bytes(body[7:10], "little")
        elif kind == b"ANMF" and len(body) >= 12:
            header.frames += 1
            width, height = 1 + int.from_bytes(body[6:9], "little"), 1 + int.from_bytes(body[9:12], "little")
            header.largest_frame = max(header.largest_frame, width * height)
        elif kind == b"VP8 " and len(body) >= 10 and not header.width:
            width, height = struct.unpack_from("<HH", body, 6)
            header.width, header.height, header.frames = width & 0x3FFF, height & 0x3FFF, 1
        elif kind == b"VP8L" and len(body) >= 5 and not header.width:
            bits = int.from_bytes(body[1:5], "little")
            header.width, header.height, header.frames = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1
        pos += 8 + length + (length & 1)
    header.frames = max(header.frames, 1)
    return header
