"""Turn untrusted upload bytes into clean sRGB JPEG variants: a profile picture with thumbnail, or a flyer image."""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import pillow_heif
from PIL import ExifTags, Image, ImageCms, ImageOps, JpegImagePlugin, PngImagePlugin

from service.image_headers import MAX_PARTS, Header, read_header

pillow_heif.register_heif_opener()

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "HEIF")
UNSUPPORTED = "not a supported image (JPEG, PNG, WebP, GIF, HEIC)"
CORRUPT = "image is corrupt or truncated"
TOO_COSTLY = "image needs too much memory to decode"
MAX_MEGAPIXELS = 40
MAX_PIXELS = MAX_MEGAPIXELS * 1_000_000
PROFILE_WIDTH = 500
THUMBNAIL_SIZE = 128
FLYER_LONG_SIDE = 2048
JPEG_OPTIONS = {"quality": 85, "optimize": True, "progressive": True}
# A camera's progressive JPEG has about 10 scans; each scan is another pass over every coefficient.
MAX_SCANS = 100
# Only the first frame is decoded; the count is a sanity bound on what the file claims.
MAX_FRAMES = 5000
# Pixel buffers a decode needs (see _decoded_bytes), three quarters of the decoders' 512 MB budget: 40 MP RGBA
# (160 MB) or a 40 MP progressive JPEG's coefficients (240 MB) fit; a 6000x6000 WebP (412 MB) does not.
MAX_DECODED_BYTES = 384 * 2**20
# PNG zTXt/iTXt/iCCP inflate at open: one chunk at most 1 MB (Pillow's default), all of them at most 4 MB.
MAX_METADATA_BYTES = 4 * 2**20
MAX_METADATA_CHUNK = PngImagePlugin.MAX_TEXT_CHUNK

# Pillow's own bomb guard stays on as a second line behind our header check, at our limit (below its default).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
PngImagePlugin.MAX_TEXT_MEMORY = MAX_METADATA_BYTES

Size = tuple[int, int]
Converter = Callable[[Image.Image], Image.Image]
_T = Image.Transpose
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
              6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}


class PictureError(Exception):
    """An upload that cannot become a picture; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Picture:
    """One encoded JPEG variant."""

    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ProfilePicture:
    """The profile picture and its square thumbnail."""

    full: Picture
    thumbnail: Picture


def check_size(data: bytes, *, max_bytes: int = 5 * 1024 * 1024) -> None:
    """Refuse an empty upload, or one over ``max_bytes`` (413)."""
    if not data:
        raise PictureError("empty file")
    if len(data) > max_bytes:
        raise PictureError(f"file too large: {len(data) / 2**20:.1f} MB (max {max_bytes / 2**20:g} MB)", 413)


def check_upload(data: bytes, *, max_bytes: int = 5 * 1024 * 1024, max_scans: int = MAX_SCANS) -> None:
    """Refuse, from its size and headers alone, an upload that is empty, too large or too costly to decode."""
    check_size(data, max_bytes=max_bytes)
    header = read_header(data, metadata_cap=MAX_METADATA_BYTES)
    if header is None:
        return  # HEIF, or not an image: Image.open decides
    if header.parts > MAX_PARTS:
        raise PictureError(f"image has too many segments: over {MAX_PARTS}")
    if header.width * header.height > MAX_PIXELS:
        raise _too_large(header.width * header.height)
    if header.largest_frame > MAX_PIXELS:
        raise PictureError(f"image too large: a frame of {header.largest_frame / 1e6:.1f} megapixels "
                           f"(max {MAX_MEGAPIXELS})")
    if header.frames > MAX_FRAMES:
        raise PictureError(f"too many frames: {header.frames} (max {MAX_FRAMES})")
    if header.scans > max_scans:
        raise PictureError(f"progressive JPEG has too many scans: {header.scans} (max {max_scans})")
    if header.metadata_bytes > MAX_METADATA_BYTES or header.largest_metadata > MAX_METADATA_CHUNK:
        raise PictureError(f"image metadata too large: over {MAX_METADATA_CHUNK / 2**20:g} MB decompressed "
                           f"in one chunk or {MAX_METADATA_BYTES / 2**20:g} MB in all")
    if _decoded_bytes(header) > MAX_DECODED_BYTES:
        raise PictureError(f"image needs too much memory to decode: {_decoded_bytes(header) / 2**20:.0f} MB "
                           f"(max {MAX_DECODED_BYTES / 2**20:g} MB)")


def _decoded_bytes(header: Header) -> int:
    """The pixel buffers a decode allocates, from the declared size.

    Pillow keeps 4 bytes a pixel (1 for grey or palette PNG/GIF). A progressive JPEG holds every DCT
    coefficient (2 bytes a sample) until its last scan; a baseline one decodes a strip at a time at the
    reduced draft scale. Pillow reads every WebP through libwebp's animation decoder, which keeps two
    RGBA canvases besides the one Pillow copies the frame into.
    """
    pixels = header.width * header.height
    if header.format == "JPEG":
        return pixels * header.components * 2 if header.progressive else pixels * header.components
    if header.format == "WEBP":
        return pixels * 4 * 3
    return pixels * (1 if header.format == "GIF" or header.components == 1 else 4)


def process_profile_picture(data: bytes, *, max_bytes: int = 5 * 1024 * 1024,
                            max_scans: int = MAX_SCANS) -> ProfilePicture:
    """At most 500 px wide (never upscaled) plus a 128x128 centre-cropped thumbnail, both JPEG."""
    def need(size: Size) -> Size:
        full, side = _fit_width(size, PROFILE_WIDTH), min(THUMBNAIL_SIZE, *size)
        return max(full[0], side), max(full[1], side)

    check_upload(data, max_bytes=max_bytes, max_scans=max_scans)
    img, orientation, to_srgb = _decode(_open(data), need)
    full = _resize(img, _stored(_fit_width(_displayed(img.size, orientation), PROFILE_WIDTH), orientation))
    # A centre crop does not depend on orientation; crop the small image unless it is too thin (a panorama).
    source = full if min(full.size) >= THUMBNAIL_SIZE else img
    thumbnail = ImageOps.fit(source, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return ProfilePicture(_encode(full, orientation, to_srgb), _encode(thumbnail, orientation, to_srgb))


def process_flyer_image(data: bytes, *, max_bytes: int = 5 * 1024 * 1024, max_scans: int = MAX_SCANS) -> Picture:
    """At most 2048 px on the long side (never upscaled), JPEG."""
    def need(size: Size) -> Size:
        return _fit_long_side(size, FLYER_LONG_SIDE)

    check_upload(data, max_bytes=max_bytes, max_scans=max_scans)
    img, orientation, to_srgb = _decode(_open(data), need)
    size = _stored(_fit_long_side(_displayed(img.size, orientation), FLYER_LONG_SIDE), orientation)
    return _encode(_resize(img, size), orientation, to_srgb)


def _open(data: bytes) -> Image.Image:
    """Identify the format by content and check sizes before any pixel is decoded."""
    try:
        # Not thread-safe, but a lost race only downgrades the bomb warning; our own check below still runs.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(int(found.group(1)) if found else None) from None
    except Image.UnidentifiedImageError:
        # A known signature whose plugin then gave up is a broken file, not the wrong kind of file.
        known = any(accept and accept(data[:16]) is True for _, accept in map(Image.OPEN.get, FORMATS))
        raise PictureError(CORRUPT if known else UNSUPPORTED) from None
    except MemoryError:
        raise PictureError(TOO_COSTLY) from None
    except Exception:  # a recognised header that its plugin then fails to parse
        raise PictureError(CORRUPT) from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise _too_large(width * height)
    if width < 1 or height < 1:
        raise PictureError(CORRUPT)
    return img


def _too_large(pixels: int | None) -> PictureError:
    found = f"{pixels / 1e6:.1f}" if pixels else f"over {MAX_MEGAPIXELS}"
    return PictureError(f"image too large: {found} megapixels (max {MAX_MEGAPIXELS})")


def _decode(img: Image.Image, need: Callable[[Size], Size]) -> tuple[Image.Image, int, Converter]:
    """Decode (JPEG at the smallest DCT scale still covering ``need``) to L, LA, RGB, RGBA or CMYK."""
    try:
        if not isinstance(img, JpegImagePlugin.JpegImageFile):
            img.load()  # PNG may keep its EXIF after the pixels; only JPEG has a reduced-scale decode anyway
        orientation = _orientation(img)
        img.draft("RGB", _stored(need(_displayed(img.size, orientation)), orientation))
        img.load()
    except Image.DecompressionBombError:
        raise _too_large(img.width * img.height) from None
    except MemoryError:
        raise PictureError(TOO_COSTLY) from None
    except Exception:  # decoders of untrusted bytes fail with OSError, SyntaxError, ValueError, struct.error...
        raise PictureError(CORRUPT) from None
    icc = img.info.get("icc_profile")
    if img.mode.startswith("I"):  # 16-bit greyscale: scale down, as convert("L") would clip at 255
        img = img.point(lambda v: v / 256).convert("L")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "CMYK") or img.info.get("transparency") is not None:
        alpha = "A" in img.mode or "a" in img.mode or img.info.get("transparency") is not None
        img = img.convert("RGBA" if alpha else "RGB")
    return img, orientation, _srgb_converter(icc, img.mode.removesuffix("A"))


def _srgb_converter(icc: bytes | None, mode: str) -> Converter:
    """Built once per upload, as the transform costs more than applying it to the small variants."""
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(BytesIO(icc))
            return ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), mode, "RGB").apply
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a profile that does not fit the pixels is ignored, as browsers do
    return lambda img: img if img.mode == "RGB" else img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged EXIF block costs the rotation, not the picture
        return 1
    return value if value in _TRANSPOSE else 1


def _displayed(size: Size, orientation: int) -> Size:
    return (size[1], size[0]) if orientation >= 5 else size


_stored = _displayed  # swapping is its own inverse


def _fit_width(size: Size, width: int) -> Size:
    return size if size[0] <= width else (width, max(1, round(size[1] * width / size[0])))


def _fit_long_side(size: Size, side: int) -> Size:
    scale = side / max(size)
    return size if scale >= 1 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _resize(img: Image.Image, size: Size) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(img: Image.Image, orientation: int, to_srgb: Converter) -> Picture:
    """Rotate, flatten onto white, convert to sRGB and save as a JPEG with no metadata."""
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    if img.mode in ("LA", "RGBA"):
        flat = Image.new(img.mode[:-1], img.size, "white")
        flat.paste(img.convert(img.mode[:-1]), mask=img.getchannel("A"))
        img = flat
    img = to_srgb(img)
    img.info = {}  # JPEG save would copy a comment or ICC profile from here
    buffer = BytesIO()
    img.save(buffer, "JPEG", **JPEG_OPTIONS)
    return Picture(buffer.getvalue(), img.width, img.height)

