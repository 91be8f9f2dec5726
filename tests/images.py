"""In-memory image factory shared by the tests and bench/bench_pictures.py."""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from io import BytesIO

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageFilter

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode an image to bytes."""
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """Decode bytes fully (no format restriction)."""
    img = Image.open(BytesIO(data))
    img.load()
    return img


def exif_bytes(orientation: int | None = None, gps: bool = False) -> bytes:
    """EXIF block with camera tags, optional orientation and optional GPS position."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.Model] = "TC-1"
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if gps:
        exif[ExifTags.IFD.GPSInfo] = {
            ExifTags.GPS.GPSLatitudeRef: "N",
            ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.5),
            ExifTags.GPS.GPSLongitudeRef: "E",
            ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
        }
    return exif.tobytes()


def quadrants(size: tuple[int, int] = (1200, 800)) -> Image.Image:
    """RGB image with red / green on top and blue / yellow below, so any rotation or flip is visible."""
    w, h = size
    img = Image.new("RGB", size, RED)
    img.paste(GREEN, (w // 2, 0, w, h // 2))
    img.paste(BLUE, (0, h // 2, w // 2, h))
    img.paste(YELLOW, (w // 2, h // 2, w, h))
    return img


def photo(size: tuple[int, int] = (4000, 3000), seed: int = 0, grain: float = 2.0) -> Image.Image:
    """Camera-like RGB image: smooth sky/ground gradients, soft shapes, mid-frequency texture and sensor grain."""
    w, h = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    base = np.empty((h, w, 3), dtype=np.float32)
    horizon = 0.55 + 0.05 * np.sin(x * 7.0)
    sky = y < horizon
    base[..., 0] = np.where(sky, 90 + 80 * y, 70 + 60 * (1 - y) + 25 * np.sin(x * 13 + y * 5))
    base[..., 1] = np.where(sky, 140 + 70 * y, 110 + 50 * np.cos(x * 9 - y * 4))
    base[..., 2] = np.where(sky, 230 - 60 * y, 60 + 30 * np.sin(x * 5 + y * 11))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(25):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(w // 60, w // 10))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.rectangle((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(2))
    # Foliage-like texture at a quarter resolution, then per-pixel luma grain as a sensor would add.
    texture = Image.fromarray(rng.integers(0, 256, (h // 4, w // 4), dtype=np.uint8), "L")
    texture = np.asarray(texture.resize(size, Image.Resampling.BICUBIC), dtype=np.int16) - 128
    grain_px = rng.normal(0.0, grain, (h, w)).astype(np.int16) if grain else 0
    noise = (texture // 10 + grain_px)[..., None]
    out = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


@lru_cache(maxsize=8)
def photo_jpeg(
    size: tuple[int, int] = (4000, 3000),
    quality: int = 90,
    orientation: int | None = None,
    gps: bool = False,
    grain: float = 2.0,
) -> bytes:
    """A camera-like JPEG (4000x3000 at quality 90 is about 2 MB), cached because it is slow to build."""
    return encode(_cached_photo(size, grain), quality=quality, exif=exif_bytes(orientation, gps))


@lru_cache(maxsize=2)
def _cached_photo(size: tuple[int, int], grain: float) -> Image.Image:
    return photo(size, grain=grain)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR declares width x height, followed by a tiny IDAT and IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def rgb_icc_profile(
    red: tuple[float, float, float],
    green: tuple[float, float, float],
    blue: tuple[float, float, float],
    gamma: float = 2.2,
    description: str = "test RGB",
) -> bytes:
    """A minimal ICC v2 matrix/TRC display profile with the given D50 colorants."""
    desc = description.encode("ascii") + b"\0"
    desc_tag = b"desc\0\0\0\0" + struct.pack(">I", len(desc)) + desc + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    curv = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [
        (b"desc", desc_tag),
        (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz_tag(*red)),
        (b"gXYZ", _xyz_tag(*green)),
        (b"bXYZ", _xyz_tag(*blue)),
        (b"rTRC", curv),
        (b"gTRC", curv),
        (b"bTRC", curv),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    total = offset + len(body)
    header = (
        struct.pack(">I", total)
        + b"\0\0\0\0"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# D50-adapted sRGB colorants; swapping red and blue gives a profile that makes stored red display as blue.
SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def swapped_red_blue_profile() -> bytes:
    """An RGB profile whose red channel carries sRGB's blue primary and vice versa."""
    return rgb_icc_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED, description="red-blue swapped")
