"""Picture processing: sizes, orientation, metadata, colour, refused inputs and quality."""
import random
import struct
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageFile, ImageOps, JpegImagePlugin

from service.pictures import (
    Picture,
    PictureError,
    ProfilePicture,
    process_flyer_image,
    process_profile_picture,
)
from tests.images import (
    BLUE,
    GREEN,
    RED,
    YELLOW,
    decode,
    encode,
    exif_bytes,
    photo_jpeg,
    png_header_only,
    quadrants,
    swapped_red_blue_profile,
)

pytestmark = pytest.mark.tdd_green

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
WHITE = (255, 255, 255)


def close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def opened(picture: Picture) -> Image.Image:
    img = Image.open(BytesIO(picture.data))
    assert img.format == "JPEG"
    assert img.size == (picture.width, picture.height)
    img.load()
    return img


def halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    img = Image.new(mode, size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def corners(img: Image.Image) -> list[tuple[int, ...]]:
    w, h = img.size
    return [img.getpixel(xy) for xy in ((w // 8, h // 8), (w - w // 8, h // 8), (w // 8, h - h // 8),
                                        (w - w // 8, h - h // 8))]


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    return photo_jpeg()


# --- sizes ---------------------------------------------------------------------------------------------------


def test_profile_picture_is_a_500_px_wide_jpeg_with_a_128_square_thumbnail() -> None:
    result = process_profile_picture(encode(quadrants((1200, 800))))
    assert isinstance(result, ProfilePicture)
    assert (result.full.width, result.full.height) == (500, 333)
    assert (result.thumbnail.width, result.thumbnail.height) == (128, 128)
    assert opened(result.full).mode == "RGB"
    assert opened(result.thumbnail).mode == "RGB"


def test_portrait_3000x4000_gives_500x667() -> None:
    result = process_profile_picture(encode(quadrants((3000, 4000))))
    assert opened(result.full).size == (500, 667)
    assert opened(result.thumbnail).size == (128, 128)


@pytest.mark.parametrize("size", [(500, 500), (300, 200), (64, 48), (1, 1)])
def test_small_profile_picture_is_not_upscaled(size: tuple[int, int]) -> None:
    result = process_profile_picture(encode(Image.new("RGB", size, RED), "PNG"))
    assert (result.full.width, result.full.height) == size
    assert (result.thumbnail.width, result.thumbnail.height) == (128, 128)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((4000, 3000), (2048, 1536)), ((3000, 4000), (1536, 2048)), ((2100, 500), (2048, 488)),
     ((2048, 100), (2048, 100)), ((800, 600), (800, 600))],
)
def test_flyer_fits_2048_on_the_long_side_and_is_never_upscaled(size: tuple[int, int],
                                                                expected: tuple[int, int]) -> None:
    result = process_flyer_image(encode(quadrants(size)))
    assert opened(result).size == expected


@pytest.mark.parametrize("size", [(1200, 800), (800, 1200), (5000, 400), (400, 5000), (600, 4000)])
def test_aspect_ratio_is_kept(size: tuple[int, int]) -> None:
    full = process_profile_picture(encode(quadrants(size))).full
    assert full.width == min(500, size[0])  # only the width is bounded, as the contract says
    assert abs(full.width / full.height - size[0] / size[1]) <= size[0] / size[1] / full.height + 1e-9


def test_thumbnail_is_the_centre_crop() -> None:
    img = Image.new("RGB", (1500, 500), RED)
    img.paste(BLUE, (500, 0, 1000, 500))
    thumb = opened(process_profile_picture(encode(img, "PNG")).thumbnail)
    assert all(close(pixel, BLUE) for pixel in corners(thumb))


def test_panorama_thumbnail_comes_from_the_decoded_image_not_the_thin_full_picture() -> None:
    result = process_profile_picture(encode(quadrants((4000, 400))))
    assert (result.full.width, result.full.height) == (500, 50)
    thumb = opened(result.thumbnail)
    assert [close(pixel, colour) for pixel, colour in zip(corners(thumb), (RED, GREEN, BLUE, YELLOW))] == [True] * 4
    # Upscaling the 50 px high picture would smear the red/green edge over about 7 pixels; ours stays sharp.
    blurred = [x for x in range(128) if 40 < thumb.getpixel((x, 30))[0] < 215]
    assert len(blurred) <= 3


# --- orientation ---------------------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_clockwise() -> None:
    stored = encode(halves((1200, 800), RED, BLUE), exif=exif_bytes(orientation=6))
    full = opened(process_profile_picture(stored).full)
    assert full.size == (500, 750)
    assert close(full.getpixel((250, 50)), RED) and close(full.getpixel((250, 700)), BLUE)


def test_exif_orientation_8_rotates_counter_clockwise() -> None:
    stored = encode(halves((1200, 800), RED, BLUE), exif=exif_bytes(orientation=8))
    full = opened(process_profile_picture(stored).full)
    assert full.size == (500, 750)
    assert close(full.getpixel((250, 50)), BLUE) and close(full.getpixel((250, 700)), RED)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation: int, fmt: str) -> None:
    data = encode(quadrants((1200, 800)), fmt, exif=exif_bytes(orientation=orientation))
    expected = ImageOps.exif_transpose(decode(data))
    for picture in (process_profile_picture(data).full, process_flyer_image(data)):
        img = opened(picture)
        assert (img.width > img.height) == (expected.width > expected.height)
        reference = expected.resize(img.size)
        assert all(close(a, b) for a, b in zip(corners(img), corners(reference), strict=True))


@pytest.mark.parametrize(("orientation", "full", "flyer"), [(1, (500, 375), (2048, 1536)),
                                                            (6, (500, 667), (1536, 2048)),
                                                            (8, (500, 667), (1536, 2048))])
def test_rotated_large_jpeg_keeps_the_exact_output_sizes(orientation: int, full: tuple[int, int],
                                                         flyer: tuple[int, int]) -> None:
    data = encode(quadrants((4000, 3000)), exif=exif_bytes(orientation=orientation))
    assert opened(process_profile_picture(data).full).size == full
    assert opened(process_flyer_image(data)).size == flyer


# --- metadata ------------------------------------------------------------------------------------------------


def _with_metadata(fmt: str) -> bytes:
    img = quadrants((900, 600))
    params: dict[str, object] = {"exif": exif_bytes(gps=True), "icc_profile": SRGB_ICC}
    if fmt == "JPEG":
        params |= {"comment": b"secret comment", "xmp": b"<x:xmpmeta>secret</x:xmpmeta>"}
    if fmt == "WEBP":
        params |= {"xmp": b"<x:xmpmeta>secret</x:xmpmeta>"}
    return encode(img, fmt, **params)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_no_metadata_of_the_input_reaches_the_output(fmt: str) -> None:
    data = _with_metadata(fmt)
    assert decode(data).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input really carries a GPS position
    result = process_profile_picture(data)
    for picture in (result.full, result.thumbnail, process_flyer_image(data)):
        img = opened(picture)
        assert not img.getexif()
        assert not {"exif", "icc_profile", "comment", "xmp"} & set(img.info)
        assert img.info.get("progressive")
        for marker in (b"Exif", b"ICC_PROFILE", b"\xff\xfe", b"http://ns.adobe.com/xap", b"secret", b"TestCam"):
            assert marker not in picture.data


def test_output_is_progressive_and_quality_85() -> None:
    img = opened(process_flyer_image(encode(quadrants((800, 600)))))
    assert img.info.get("progressive") and img.info.get("progression")
    # libjpeg's quality 85 luminance table starts with 5.
    assert JpegImagePlugin.get_sampling(img) == 2 and img.quantization[0][0] == 5


# --- colour --------------------------------------------------------------------------------------------------


def test_cmyk_jpeg_comes_out_rgb_with_sensible_colour() -> None:
    data = encode(halves((600, 400), (0, 255, 255, 0), (255, 255, 0, 0), mode="CMYK"))
    assert decode(data).mode == "CMYK"
    full = opened(process_profile_picture(data).full)
    assert full.mode == "RGB"
    assert close(full.getpixel((100, 100)), RED, 20) and close(full.getpixel((400, 100)), BLUE, 20)


def test_png_with_alpha_and_icc_profile_is_flattened_onto_white() -> None:
    img = halves((600, 400), (0, 0, 255, 0), (0, 0, 255, 255), mode="RGBA")
    img.paste((0, 255, 0, 128), (0, 300, 600, 400))
    data = encode(img, "PNG", icc_profile=SRGB_ICC)
    full = opened(process_profile_picture(data).full)
    assert full.mode == "RGB"
    assert close(full.getpixel((100, 100)), WHITE)
    assert close(full.getpixel((400, 100)), BLUE)
    assert close(full.getpixel((100, 290)), (128, 255, 128), 16)  # half-transparent green over white


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_embedded_icc_profile_is_converted_to_srgb(fmt: str) -> None:
    data = encode(Image.new("RGB", (300, 200), RED), fmt, icc_profile=swapped_red_blue_profile())
    for picture in (process_profile_picture(data).full, process_flyer_image(data)):
        assert close(opened(picture).getpixel((150, 100)), BLUE, 16)


def test_unusable_icc_profile_is_ignored() -> None:
    data = encode(Image.new("L", (300, 200), 200), "PNG", icc_profile=SRGB_ICC)  # RGB profile on grey pixels
    assert close(opened(process_profile_picture(data).full).getpixel((150, 100)), (200, 200, 200), 3)


def test_16_bit_greyscale_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 600).astype(np.uint16), (400, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert decode(data).mode.startswith("I;16")
    full = opened(process_profile_picture(data).full)
    left, middle, right = (full.getpixel((x, 150)) for x in (5, 250, 494))
    assert close(left, (0, 0, 0), 6) and close(middle, (128, 128, 128), 6) and close(right, WHITE, 6)


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (200, 100), 0)
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.paste(1, (100, 0, 200, 100))
    return encode(img, "PNG", transparency=0)


@pytest.mark.parametrize(
    ("data", "left", "right"),
    [
        (encode(halves((200, 100), 0, 1, mode="1"), "PNG"), (0, 0, 0), WHITE),
        (encode(halves((200, 100), 0, 255, mode="L"), "PNG"), (0, 0, 0), WHITE),
        (encode(halves((200, 100), (0, 0), (0, 255), mode="LA"), "PNG"), WHITE, (0, 0, 0)),
        (encode(halves((200, 100), RED, BLUE).convert("P"), "PNG"), RED, BLUE),
        (_palette_with_transparency(), WHITE, BLUE),
        (encode(halves((200, 100), (*RED, 0), (*BLUE, 255), mode="RGBA"), "WEBP", lossless=True), WHITE, BLUE),
        (encode(halves((200, 100), RED, BLUE), "WEBP", quality=90), RED, BLUE),
        (encode(halves((200, 100), RED, BLUE), "GIF"), RED, BLUE),
        (encode(halves((200, 100), 0, 255, mode="L")), (0, 0, 0), WHITE),
    ],
    ids=["1-bit", "L", "LA", "P", "P-transparent", "WebP-alpha", "WebP", "GIF", "grey-JPEG"],
)
def test_every_mode_comes_out_as_srgb_rgb(data: bytes, left: tuple[int, int, int], right: tuple[int, int, int]) -> None:
    full = opened(process_profile_picture(data).full)
    assert full.mode == "RGB"
    assert close(full.getpixel((40, 50)), left, 16) and close(full.getpixel((160, 50)), right, 16)


def test_heic_input_works() -> None:
    data = encode(halves((800, 600), RED, BLUE), "HEIF", quality=90)
    assert data[4:12] == b"ftypheic"
    result = process_profile_picture(data)
    full = opened(result.full)
    assert full.size == (500, 375)
    assert close(full.getpixel((100, 180)), RED, 20) and close(full.getpixel((400, 180)), BLUE, 20)
    assert opened(result.thumbnail).size == (128, 128)


def test_heic_orientation_is_applied_once() -> None:
    data = encode(halves((800, 600), RED, BLUE), "HEIF", quality=90, exif=exif_bytes(orientation=6))
    full = opened(process_profile_picture(data).full)
    assert full.size == (500, 667)
    assert close(full.getpixel((250, 50)), RED, 20) and close(full.getpixel((250, 600)), BLUE, 20)


def test_multi_picture_jpeg_gives_its_first_picture_rotated() -> None:
    data = encode(quadrants((2000, 1500)), "MPO", save_all=True, append_images=[Image.new("RGB", (2000, 1500))],
                  exif=exif_bytes(orientation=6))
    assert Image.open(BytesIO(data)).format == "MPO"
    full = opened(process_profile_picture(data).full)
    assert full.size == (500, 667)
    assert [close(p, c) for p, c in zip(corners(full), (BLUE, RED, YELLOW, GREEN))] == [True] * 4


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_image_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (300, 200), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(BytesIO(data)).n_frames == 3
    assert close(opened(process_profile_picture(data).full).getpixel((150, 100)), RED, 16)
    assert close(opened(process_flyer_image(data)).getpixel((150, 100)), RED, 16)


# --- refused inputs ------------------------------------------------------------------------------------------


def _multipage_tiff() -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, GREEN)]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def _bad_crc_png() -> bytes:
    data = bytearray(encode(Image.new("RGB", (64, 64), RED), "PNG"))
    data[-20] ^= 0xFF  # inside the IDAT payload, so its CRC no longer matches
    return bytes(data)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
UNSUPPORTED = "not a supported image (JPEG, PNG, WebP, GIF, HEIC)"
CORRUPT = "image is corrupt or truncated"
JPEG = encode(quadrants((800, 600)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (random.Random(1).randbytes(4096), UNSUPPORTED),
        (b"name,email\nalice,alice@example.com\n" * 20, UNSUPPORTED),
        (SVG, UNSUPPORTED),
        (_multipage_tiff(), UNSUPPORTED),
        (encode(Image.new("RGB", (64, 64), RED), "TIFF"), UNSUPPORTED),
        (encode(Image.new("RGB", (64, 64), RED), "BMP"), UNSUPPORTED),
        (encode(Image.new("RGB", (64, 64), RED), "ICO"), UNSUPPORTED),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", UNSUPPORTED),
        (JPEG[: len(JPEG) // 2], CORRUPT),
        (JPEG[:200], CORRUPT),
        (encode(Image.new("RGB", (64, 64), RED), "PNG")[:-30], CORRUPT),
        (_bad_crc_png(), CORRUPT),
        (encode(Image.new("RGB", (64, 64), RED), "WEBP")[:-20], CORRUPT),
        (encode(Image.new("RGB", (64, 64), RED), "HEIF")[:-100], CORRUPT),
        (png_header_only(100_000, 100_000), "image too large: 10000.0 megapixels (max 40)"),
        (png_header_only(8000, 6000), "image too large: 48.0 megapixels (max 40)"),
    ],
    ids=["empty", "random", "text", "svg", "multipage-tiff", "tiff", "bmp", "ico", "pdf", "jpeg-half",
         "jpeg-header-only", "png-truncated", "png-bad-crc", "webp-truncated", "heic-truncated",
         "png-100000x100000", "png-48-megapixels"],
)
@pytest.mark.parametrize("process", [process_profile_picture, process_flyer_image])
def test_bad_input_is_refused_with_400_and_a_clear_message(data: bytes, message: str, process: object) -> None:
    with pytest.raises(PictureError) as caught:
        process(data)  # type: ignore[operator]
    assert caught.value.status == 400
    assert caught.value.message == message == str(caught.value)


def test_input_over_max_bytes_is_refused_with_413_before_decoding() -> None:
    too_big = JPEG + b"\0" * (5 * 1024 * 1024 + 1 - len(JPEG))
    for process in (process_profile_picture, process_flyer_image):
        with pytest.raises(PictureError) as caught:
            process(too_big)
        assert caught.value.status == 413
        assert caught.value.message.startswith("file too large")
    with pytest.raises(PictureError) as caught:
        process_profile_picture(JPEG, max_bytes=len(JPEG) - 1)
    assert caught.value.status == 413
    assert process_profile_picture(JPEG, max_bytes=len(JPEG)).full.width == 500


def test_exactly_40_megapixels_passes_the_header_check() -> None:
    with pytest.raises(PictureError) as caught:
        process_profile_picture(png_header_only(8000, 5000))  # allowed size, but the pixel data is missing
    assert caught.value.message == CORRUPT


def test_own_pixel_check_holds_even_if_pillows_guard_is_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(PictureError) as caught:
        process_profile_picture(png_header_only(8000, 6000))
    assert caught.value.message == "image too large: 48.0 megapixels (max 40)"


def test_pillow_guards_stay_on() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 1024 * 1024 * 1024 // 4 // 3
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_jpeg_declaring_a_huge_size_is_refused_before_decoding() -> None:
    data = bytearray(JPEG)
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(PictureError) as caught:
        process_profile_picture(bytes(data))
    assert caught.value.status == 400 and caught.value.message.startswith("image too large")


def test_png_declaring_a_huge_size_has_a_valid_crc() -> None:
    data = png_header_only(100_000, 100_000)
    ihdr = data[12:29]
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(ihdr)


# --- quality -------------------------------------------------------------------------------------------------


def test_camera_jpeg_shrinks_by_at_least_90_percent(camera_jpeg: bytes) -> None:
    assert 1_500_000 <= len(camera_jpeg) <= 2_500_000
    assert decode(camera_jpeg).size == (4000, 3000)
    result = process_profile_picture(camera_jpeg)
    assert (result.full.width, result.full.height) == (500, 375)
    assert len(result.full.data) <= 0.10 * len(camera_jpeg)
    assert len(process_flyer_image(camera_jpeg).data) <= 0.35 * len(camera_jpeg)


@pytest.mark.parametrize(("orientation", "size"), [(None, (500, 375)), (6, (500, 667))])
def test_fast_decode_costs_under_half_a_db_of_psnr(camera_jpeg: bytes, orientation: int | None,
                                                   size: tuple[int, int]) -> None:
    data = camera_jpeg if orientation is None else photo_jpeg(orientation=orientation)
    full_decode = ImageOps.exif_transpose(Image.open(BytesIO(data)))
    reference = full_decode.resize(size, Image.Resampling.LANCZOS)
    naive = decode(encode(reference, quality=85, optimize=True, progressive=True))
    ours = opened(process_profile_picture(data).full)
    assert ours.size == size
    assert psnr(ours, reference) >= psnr(naive, reference) - 0.5
