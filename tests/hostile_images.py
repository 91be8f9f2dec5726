"""A hostile image corpus built in memory: bombs, disguises, truncations, polyglots and seeded mutations.

Every builder returns bytes; ``corpus()`` names them with what a client must see: ``"4xx"`` (refused)
or ``"any"`` (refused, or accepted because the file is in fact a valid image). Shared by
tests/test_hostile_uploads.py and bench/bench_hostile.py.
"""
from __future__ import annotations

import io
import random
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache

import pillow_heif
from PIL import Image

from tests.images import encode, photo

pillow_heif.register_heif_opener()  # HEIC seeds; the service registers it too, but this module stands alone

_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass(frozen=True)
class Hostile:
    """One corpus entry: its class (for figures), its bytes and what the answer may be."""

    kind: str
    data: bytes
    expect: str  # "4xx" or "any"


# --- JPEG ----------------------------------------------------------------------------------------------------

def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, end)`` of each segment of a well-formed JPEG, a scan including its entropy data."""
    pos, found = 2, []
    while pos + 2 <= len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            found.append((marker, pos, pos + 2))
            break
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        if marker == 0xDA:
            end = _JPEG_MARKER.search(data, end).start()
        found.append((marker, pos, end))
        pos = end
    return found


@lru_cache(maxsize=4)
def scan_bomb(scans: int, size: tuple[int, int] = (6000, 6000)) -> bytes:
    """A flat progressive JPEG whose tiny AC scan (with its Huffman table) repeats until it has ``scans`` scans.

    Every scan is a pass over all blocks of the image: 3,000 scans at 36 MP cost over 10 s to decode,
    in a file of about 400 KB.
    """
    data = encode(Image.new("L", size, 128), "JPEG", progressive=True, quality=90)
    segments = jpeg_segments(data)
    scan_indexes = [i for i, (marker, _, _) in enumerate(segments) if marker == 0xDA]
    second = scan_indexes[1]  # an AC scan: a few bytes of end-of-band runs
    start, end = segments[second - 1][1], segments[second][2]  # its DHT, then the scan
    return data[:end] + data[start:end] * (scans - len(scan_indexes)) + data[end:]


def jpeg_with_app1(payload: bytes, base: bytes | None = None) -> bytes:
    """A small valid JPEG with ``payload`` as an APP1 segment right after SOI."""
    base = base or _small_jpeg()
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + base[2:]


def huge_exif(entries: int = 5000) -> bytes:
    """EXIF whose IFD lists ``entries`` tags, each pointing past the end of the block (a warning apiece)."""
    ifd = struct.pack("<H", entries) + b"".join(
        struct.pack("<HHII", 0x9000 + n, 2, 1_000_000 + n, 0x7FFF0000) for n in range(entries))
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    return jpeg_with_app1(b"Exif\0\0" + tiff[:65000])


@lru_cache(maxsize=1)
def _small_jpeg() -> bytes:
    return encode(photo((320, 240), seed=5), quality=85)


# --- PNG -----------------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, chunks = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, body) for kind, body in chunks)


def _zeros_deflated(size: int, prefix: bytes = b"") -> bytes:
    """zlib of ``prefix`` then ``size`` zero bytes, built without holding them in memory."""
    deflater = zlib.compressobj(9)
    out = [deflater.compress(prefix)]
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        out.append(deflater.compress(block))
    out.append(deflater.compress(bytes(size & ((1 << 20) - 1))))
    out.append(deflater.flush())
    return b"".join(out)


@lru_cache(maxsize=2)
def png_idat_bomb(width: int = 8000, height: int = 5000) -> bytes:
    """An RGBA PNG of ``width`` x ``height`` transparent pixels: 40 MP is 160 MB of pixels in a ~155 KB file."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    idat = _zeros_deflated(height * (1 + 4 * width))
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")])


def png_idat_bomb_over_the_cap() -> bytes:
    """The 40 MP bomb's pixels behind an IHDR claiming 100 MP."""
    chunks = png_chunks(png_idat_bomb())
    return png_from_chunks([(b"IHDR", struct.pack(">II", 10000, 10000) + chunks[0][1][8:]), *chunks[1:]])


def png_with_chunks_before_idat(extra: list[tuple[bytes, bytes]]) -> bytes:
    chunks = png_chunks(encode(Image.new("RGB", (64, 48), (20, 120, 200)), "PNG"))
    return png_from_chunks(chunks[:1] + extra + chunks[1:])


@lru_cache(maxsize=4)
def png_text_bomb(kind: bytes = b"zTXt", inflated: int = 64 * 2**20) -> bytes:
    """A PNG carrying one compressed zTXt, iTXt or iCCP chunk that inflates to ``inflated`` bytes."""
    stream = _zeros_deflated(inflated)
    body = {b"zTXt": b"Comment\0\0", b"iCCP": b"ICC profile\0\0", b"iTXt": b"Comment\0\1\0\0\0"}[kind] + stream
    return png_with_chunks_before_idat([(kind, body)])


def png_many_text_chunks(count: int = 40, each: int = 900 * 1024) -> bytes:
    """Many zTXt chunks, each under Pillow's per-chunk limit, that together inflate to ``count * each`` bytes."""
    body = b"Comment\0\0" + _zeros_deflated(each)
    return png_with_chunks_before_idat([(b"zTXt", body)] * count)


def apng(frames: int = 3, size: tuple[int, int] = (64, 48)) -> bytes:
    images = [Image.new("RGB", size, (60 * n, 100, 200)) for n in range(frames)]
    return encode(images[0], "PNG", save_all=True, append_images=images[1:], duration=100, loop=0)


def apng_patched(num_frames: int | None = None, frame_size: tuple[int, int] | None = None,
                 canvas: tuple[int, int] | None = None) -> bytes:
    """An APNG whose acTL frame count, every fcTL frame size or IHDR canvas claims other values (CRCs valid)."""
    chunks = []
    for kind, body in png_chunks(apng()):
        if kind == b"acTL" and num_frames is not None:
            body = struct.pack(">I", num_frames) + body[4:]
        elif kind == b"fcTL" and frame_size is not None:
            body = body[:4] + struct.pack(">II", *frame_size) + body[12:]
        elif kind == b"IHDR" and canvas is not None:
            body = struct.pack(">II", *canvas) + body[8:]
        chunks.append((kind, body))
    return png_from_chunks(chunks)


# --- GIF -----------------------------------------------------------------------------------------------------

def gif_canvas(width: int, height: int) -> bytes:
    """A 1x1 GIF frame on a ``width`` x ``height`` logical screen (a few dozen bytes)."""
    data = bytearray(encode(Image.new("P", (1, 1), 0), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def gif_frames(frames: int, frame_size: tuple[int, int] | None = None) -> bytes:
    """A 2x2 GIF whose one frame is repeated ``frames`` times, optionally each claiming ``frame_size``."""
    data = encode(Image.new("P", (2, 2), 1), "GIF")
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:  # extensions before the image: label, then sub-blocks
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    frame = bytearray(data[pos:data.rindex(b"\x3b")])  # image descriptor to the trailer
    if frame_size is not None:
        frame[5:9] = struct.pack("<HH", *frame_size)
    return data[:pos] + bytes(frame) * frames + b"\x3b"


# --- WebP ----------------------------------------------------------------------------------------------------

def _riff(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"WEBP" + b"".join(kind + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
                              for kind, data in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, chunks = 12, []
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 8 + length + (length & 1)
    return chunks


def animated_webp(frames: int = 2, size: tuple[int, int] = (16, 16)) -> bytes:
    images = [Image.new("RGB", size, (200, 40 * n, 60)) for n in range(frames)]
    return encode(images[0], "WEBP", save_all=True, append_images=images[1:], duration=100, lossless=True)


def webp_canvas(width: int, height: int) -> bytes:
    """An animated WebP of 16x16 frames whose VP8X canvas claims ``width`` x ``height``."""
    chunks = []
    for kind, data in webp_chunks(animated_webp()):
        if kind == b"VP8X":
            data = data[:4] + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunks.append((kind, data))
    return _riff(chunks)


def webp_frames(frames: int) -> bytes:
    """An animated WebP whose first ANMF frame is repeated ``frames`` times."""
    chunks = webp_chunks(animated_webp())
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"ANMF")
    return _riff(chunks[:first] + [chunks[first]] * frames)


# --- disguises, truncations, polyglots -----------------------------------------------------------------------

def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.txt", "not an image " * 100)
    return buffer.getvalue()


HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>\n"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000">'
       b'<script>alert(1)</script><rect width="4000" height="4000"/></svg>')


@lru_cache(maxsize=1)
def valid_images() -> dict[str, bytes]:
    """Small valid files in each accepted format, the seeds of truncations and mutations."""
    picture = photo((240, 180), seed=11)
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(picture.size))
    return {
        "JPEG": encode(picture, quality=85),
        "progressive JPEG": encode(picture, quality=85, progressive=True),
        "PNG": encode(rgba, "PNG"),
        "WebP": encode(picture, "WEBP", quality=80),
        "HEIC": encode(picture, "HEIF", quality=80),
        "GIF": encode(picture.convert("P"), "GIF"),
    }


def polyglots() -> dict[str, bytes]:
    """Valid images that are also something else: each is accepted, and re-encoding drops the stowaway."""
    jpeg, png = valid_images()["JPEG"], valid_images()["PNG"]
    comment = b"\xff\xfe" + struct.pack(">H", len(HTML) + 2) + HTML
    chunks = png_chunks(png)
    return {
        "JPEG + ZIP": jpeg + zip_file(),
        "JPEG with HTML comment": jpeg[:2] + comment + jpeg[2:],
        "PNG with HTML tEXt + ZIP": png_from_chunks(chunks[:1] + [(b"tEXt", b"Comment\0" + HTML)] + chunks[1:])
        + zip_file(),
        "GIF + HTML": valid_images()["GIF"] + HTML,
    }


STOWAWAYS = (b"<script", b"PK\x03\x04", b"<html")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One seeded mutation: flipped bytes, a rewritten size field, a cut, a repeated or an inserted slice."""
    out = bytearray(data)
    operation = rng.randrange(6)
    if operation == 0:
        for _ in range(rng.randint(1, 20)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif operation == 1:  # headers carry sizes near the start: make one huge or zero
        pos = rng.randrange(min(len(out) - 2, 600))
        out[pos:pos + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x00\x01"])
    elif operation == 2:
        del out[rng.randrange(16, len(out)):]
    elif operation == 3:
        start = rng.randrange(len(out))
        piece = out[start:start + rng.randint(1, 4096)]
        at = rng.randrange(len(out))
        out[at:at] = piece * rng.randint(1, 50)
    elif operation == 4:
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 256))
    else:
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(out))
            out[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80])
    return bytes(out)


def mutations(count: int = 200, seed: int = 20260) -> list[Hostile]:
    """``count`` seeded mutations of valid JPEG, PNG, WebP and HEIC files, a quarter each."""
    rng = random.Random(seed)
    sources = [valid_images()[name] for name in ("JPEG", "PNG", "WebP", "HEIC")]
    names = ("JPEG", "PNG", "WebP", "HEIC")
    return [Hostile(f"mutated {names[n % 4]}", mutate(sources[n % 4], rng), "any") for n in range(count)]


def segment_floods() -> dict[str, bytes]:
    """About 5 MB of empty segments, chunks or sub-blocks: cheap to send, slow for a walker in Python."""
    png = valid_images()["PNG"]
    return {
        "JPEG of 1M empty comments": b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1_000_000 + valid_images()["JPEG"][2:],
        "PNG of 400000 empty chunks": png[:33] + png_chunk(b"abCd", b"") * 400_000 + png[33:],
        "GIF of 2M one-byte sub-blocks": (b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0)
                                          + b"\x2c" + struct.pack("<HHHHB", 0, 0, 10, 10, 0) + b"\x02"
                                          + b"\x01\x00" * 2_000_000 + b"\x00\x3b"),
        "WebP of 500000 empty chunks": _riff([(b"ABCD", b"")] * 500_000),
    }


def corpus() -> dict[str, Hostile]:
    """Every named hostile input (the mutations come separately, from ``mutations()``)."""
    valid = valid_images()
    entries = {
        "scan bomb 500 scans": Hostile("scan bomb", scan_bomb(500), "4xx"),
        "scan bomb 3000 scans": Hostile("scan bomb", scan_bomb(3000), "4xx"),
        "scan bomb 101 scans": Hostile("scan bomb", scan_bomb(101, (1000, 1000)), "4xx"),
        "GIF canvas 65535x65535": Hostile("canvas bomb", gif_canvas(65535, 65535), "4xx"),
        "GIF canvas 10000x3990 (under the cap)": Hostile("canvas bomb", gif_canvas(10000, 3990), "any"),
        "GIF 20000 frames": Hostile("frame bomb", gif_frames(20000), "4xx"),
        "GIF frame 60000x60000 on a 2x2 canvas": Hostile("frame bomb", gif_frames(2, (60000, 60000)), "4xx"),
        "APNG 2^31 frames": Hostile("frame bomb", apng_patched(num_frames=2**31 - 1), "4xx"),
        "APNG frame 50000x50000": Hostile("frame bomb", apng_patched(frame_size=(50000, 50000)), "4xx"),
        "APNG canvas 100000x100000": Hostile("canvas bomb", apng_patched(canvas=(100_000, 100_000)), "4xx"),
        "WebP canvas 16384x16384": Hostile("canvas bomb", webp_canvas(16384, 16384), "4xx"),
        "WebP canvas 6000x6000 (under the cap)": Hostile("canvas bomb", webp_canvas(6000, 6000), "any"),
        "WebP 20000 frames": Hostile("frame bomb", webp_frames(20000), "4xx"),
        "PNG IDAT 40 MP RGBA (under the cap)": Hostile("decompression bomb", png_idat_bomb(), "any"),
        "PNG IDAT claiming 10000x10000": Hostile("decompression bomb", png_idat_bomb_over_the_cap(), "4xx"),
        "PNG zTXt 64 MB": Hostile("decompression bomb", png_text_bomb(b"zTXt"), "4xx"),
        "PNG iTXt 64 MB": Hostile("decompression bomb", png_text_bomb(b"iTXt"), "4xx"),
        "PNG iCCP 64 MB": Hostile("decompression bomb", png_text_bomb(b"iCCP"), "4xx"),
        "PNG 40 zTXt of 900 KB": Hostile("decompression bomb", png_many_text_chunks(), "4xx"),
        "JPEG with 5000 broken EXIF tags": Hostile("huge EXIF", huge_exif(), "any"),
        "ZIP named .jpg": Hostile("disguise", zip_file(), "4xx"),
        "HTML named .jpg": Hostile("disguise", HTML, "4xx"),
        "SVG named .jpg": Hostile("disguise", SVG, "4xx"),
        "HTML behind a JPEG signature": Hostile("disguise", b"\xff\xd8\xff\xe0" + HTML, "4xx"),
        "HTML behind a PNG signature": Hostile("disguise", b"\x89PNG\r\n\x1a\n" + HTML, "4xx"),
    }
    for name, data in segment_floods().items():
        entries[name] = Hostile("segment flood", data, "4xx")
    for name, data in valid.items():
        for fraction in (0.05, 0.5, 0.9):
            entries[f"{name} cut to {fraction:.0%}"] = Hostile("truncated", data[:int(len(data) * fraction)], "4xx")
    for name, data in polyglots().items():
        entries[f"polyglot {name}"] = Hostile("polyglot", data, "any")
    return entries
