"""Unit tests for snap2caption_service.core.images; every input is generated here with Pillow."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from snap2caption_service.core import images
from snap2caption_service.core.errors import ErrorAnswer
from snap2caption_service.core.images import (
    ImageError,
    decode_base64_image,
    decode_png_base64,
    downscale,
    encode_png_base64,
    image_sha256,
    load_image,
)

MB = 1_000_000
PX = 10_000_000
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def noise(size=(64, 64)) -> Image.Image:
    # Incompressible content, so that half a file really is missing half the pixels.
    w, h = size
    return Image.frombytes("RGB", size, random.Random(0).randbytes(w * h * 3))


def close_to(actual, expected, tol) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def expect_error(code: str, status: int, fn, *args) -> ImageError:
    with pytest.raises(ImageError) as info:
        fn(*args)
    assert info.value.code == code, info.value
    assert info.value.status == status
    assert info.value.detail and info.value.detail == str(info.value)
    return info.value


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit all-black PNG of side x side pixels, a few tens of KB on disk."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    rows_per_chunk = 400
    idat = b"".join(comp.compress(row * rows_per_chunk) for _ in range(side // rows_per_chunk))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# --- ImageError -------------------------------------------------------------------------------


def test_error_codes_and_statuses_are_stable():
    assert images.ERROR_STATUS == {
        "empty_image": 400,
        "invalid_base64": 400,
        "image_too_large": 413,
        "too_many_pixels": 413,
        "not_an_image": 415,
        "unsupported_format": 415,
        "truncated_image": 400,
    }
    err = ImageError("too_many_pixels", "Too big.")
    assert isinstance(err, ValueError)
    assert (err.code, err.status, err.detail) == ("too_many_pixels", 413, "Too big.")
    assert isinstance(err, ErrorAnswer)  # answered like every other refusal (serving/responses.py)
    with pytest.raises(KeyError):
        ImageError("no_such_code", "x")


# --- decode_base64_image ----------------------------------------------------------------------

# Bytes chosen so the standard encoding contains both '+' and '/', and needs padding.
AWKWARD = bytes([0xFB, 0xEF, 0xBE, 0xFF, 0xFF, 0xFE, 0x01])


def test_awkward_bytes_really_exercise_urlsafe_and_padding():
    std = base64.b64encode(AWKWARD).decode()
    assert "+" in std and "/" in std and std.endswith("=")


@pytest.mark.parametrize(
    "payload",
    [
        base64.b64encode(AWKWARD).decode(),
        base64.b64encode(AWKWARD).decode().rstrip("="),
        base64.urlsafe_b64encode(AWKWARD).decode(),
        base64.urlsafe_b64encode(AWKWARD).decode().rstrip("="),
        "data:image/png;base64," + base64.b64encode(AWKWARD).decode(),
        "DATA:image/jpeg;charset=utf-8;BASE64," + base64.urlsafe_b64encode(AWKWARD).decode().rstrip("="),
        "  \n" + base64.b64encode(AWKWARD).decode() + "\r\n",
    ],
    ids=["std", "std-unpadded", "urlsafe", "urlsafe-unpadded", "data-url", "data-url-params-urlsafe", "padded-ws"],
)
def test_decode_base64_variants(payload):
    assert decode_base64_image(payload, max_bytes=MB) == AWKWARD


def test_decode_base64_real_png_data_url_roundtrip_to_image():
    data = encode(Image.new("RGB", (3, 2), RED), "PNG")
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    raw = decode_base64_image(url, max_bytes=MB)
    assert raw == data
    assert load_image(raw, MB, PX).getpixel((2, 1)) == RED


def test_decode_base64_tolerates_whitespace_anywhere():
    data = encode(noise((16, 16)), "PNG")
    b64 = base64.b64encode(data).decode()
    wrapped = "\r\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    messy = " \t" + wrapped[:10] + " \t " + wrapped[10:] + "\n"
    assert "\n" in wrapped and len(data) > 76
    assert decode_base64_image(messy, max_bytes=MB) == data


@pytest.mark.parametrize(
    "payload",
    [
        "not base64!!",
        "QUJD*REVG",
        "QUJDREVG\x00",
        "héllo123",
        "abcde",  # a length no base64 encoder produces
        "ab+_cd/-",  # mixed standard and URL-safe alphabets
        "QU=JD",  # padding in the middle
        "QUJD*REV",  # right length, character outside the alphabet
        "QUJD.REV",
        "QU==QUJD",  # data after padding
        "=QUJDREV",  # leading padding
        "data:image/png,iVBORw0KGgo",  # data URL that is not base64
        "data:image/png;base64",  # no comma
        "https://example.com/cat.jpg",
    ],
)
def test_decode_base64_rejects_invalid(payload):
    expect_error("invalid_base64", 400, decode_base64_image, payload, MB)


def test_decode_base64_web_link_gets_helpful_detail():
    err = expect_error("invalid_base64", 400, decode_base64_image, "https://example.com/cat.jpg", MB)
    assert "link" in err.detail


@pytest.mark.parametrize("payload", ["", "   ", "\n\t", "data:image/png;base64,", "data:image/png;base64,  ==  "])
def test_decode_base64_rejects_empty(payload):
    expect_error("empty_image", 400, decode_base64_image, payload, MB)


def test_decode_base64_rejects_non_string():
    expect_error("invalid_base64", 400, decode_base64_image, b"QUJD", MB)


def test_decode_base64_byte_limit_exact_boundary():
    data = bytes(range(256)) * 4  # 1024 bytes
    b64 = base64.b64encode(data).decode()
    assert decode_base64_image(b64, max_bytes=1024) == data
    err = expect_error("image_too_large", 413, decode_base64_image, b64, 1023)
    assert "limit" in err.detail


def test_decode_base64_rejects_huge_payload_before_decoding(monkeypatch):
    def no_decoding(*a, **k):
        raise AssertionError("decoded a payload that was obviously too large")

    monkeypatch.setattr(images.binascii, "a2b_base64", no_decoding)
    # Not even valid base64: the length alone must be enough to refuse it.
    expect_error("image_too_large", 413, decode_base64_image, "!" * 50_000, 1_000)
    expect_error("image_too_large", 413, decode_base64_image, "A" * 4_000, 1_000)
    # Refused on raw length even though it would decode to 3 bytes: nobody pads an upload
    # with thousands of blanks, and scanning them would be the cost the check avoids.
    expect_error("image_too_large", 413, decode_base64_image, "QUJD" + " " * 50_000, 1_000)


def test_decode_base64_rejects_bad_limit():
    with pytest.raises(ValueError) as info:
        decode_base64_image("QUJD", 0)
    assert not isinstance(info.value, ImageError)


# --- load_image: accepted formats -------------------------------------------------------------


def mpo_bytes(img: Image.Image) -> bytes:
    return encode(img, "MPO", save_all=True, append_images=[img.copy()], quality=95)


@pytest.mark.parametrize(
    "fmt,params,tol",
    [
        ("JPEG", {"quality": 95}, 12),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("GIF", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("MPO", None, 12),
    ],
)
def test_load_image_accepts_allowed_formats(fmt, params, tol):
    src = Image.new("RGB", (30, 20), (200, 40, 60) if tol else RED)
    src.paste(BLUE, (15, 0, 30, 20))
    data = mpo_bytes(src) if fmt == "MPO" else encode(src, fmt, **params)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.format == fmt
    out = load_image(data, MB, PX)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert close_to(out.getpixel((3, 10)), src.getpixel((3, 10)), tol)
    assert close_to(out.getpixel((26, 10)), BLUE, tol)
    assert out.info == {}


def test_load_image_byte_limit():
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    assert load_image(data, len(data), PX).size == (8, 8)
    expect_error("image_too_large", 413, load_image, data, len(data) - 1, PX)


def test_load_image_empty():
    expect_error("empty_image", 400, load_image, b"", MB, PX)


# --- load_image: things that are not images, or not allowed ----------------------------------


@pytest.mark.parametrize(
    "data,hint",
    [
        (b"Hello, this is just a note about my holiday photos.\n", "plain text"),
        (b"<!DOCTYPE html>\n<html><head><title>x</title></head><body>hi</body></html>", "HTML"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
        (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<rect width="10" height="10" fill="red"/></svg>',
            "SVG",
        ),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b'{"image": "oops"}', "JSON"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC"),
        (bytes(range(256)) * 2, "picture format"),
    ],
    ids=["text", "html", "pdf", "svg-xml", "svg", "json", "heic", "binary"],
)
def test_load_image_rejects_non_images_with_a_useful_detail(data, hint):
    err = expect_error("not_an_image", 415, load_image, data, MB, PX)
    assert hint in err.detail


@pytest.mark.parametrize(
    "fmt,params",
    [("ICO", {"sizes": [(16, 16)]}), ("PCX", {}), ("TGA", {}), ("PPM", {})],
)
def test_load_image_rejects_formats_pillow_opens_but_we_do_not_allow(fmt, params):
    data = encode(Image.new("RGB", (16, 16), RED), fmt, **params)
    with Image.open(io.BytesIO(data)) as probe:  # Pillow really does identify it...
        assert probe.format == fmt
    err = expect_error("unsupported_format", 415, load_image, data, MB, PX)  # ...but we refuse it
    assert fmt in err.detail


# --- load_image: damaged files ----------------------------------------------------------------


def test_truncated_images_are_not_silently_accepted_globally():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_load_image_rejects_file_cut_in_half(fmt):
    data = encode(noise(), fmt)
    half = data[: len(data) // 2]
    err = expect_error("truncated_image", 400, load_image, half, MB, PX)
    assert "cut off" in err.detail


def test_load_image_rejects_header_only_jpeg_as_truncated():
    data = encode(noise(), "JPEG")
    expect_error("truncated_image", 400, load_image, data[:20], MB, PX)


# --- load_image: pixel limits -----------------------------------------------------------------


def test_load_image_rejects_pixel_bomb_from_header_without_decoding(monkeypatch):
    data = bomb_png()
    assert len(data) < 200_000  # 400 megapixels in a tiny file: the point of a bomb

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    # Our limit must hold on its own, even where Pillow's global guard has been switched off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    err = expect_error("too_many_pixels", 413, load_image, data, MB, 1_000_000)
    assert "20000x20000" in err.detail
    assert decoded == []


def test_load_image_maps_pillows_own_bomb_error():
    # With Pillow's default global limit the file is refused inside Image.open already.
    assert Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < 20_000**2
    expect_error("too_many_pixels", 413, load_image, bomb_png(), MB, 10**12)


def test_load_image_pixel_limit_is_our_own_and_exact():
    data = encode(Image.new("RGB", (100, 50), RED), "PNG")
    assert load_image(data, MB, 5_000).size == (100, 50)
    expect_error("too_many_pixels", 413, load_image, data, MB, 4_999)


# --- load_image: normalisation ----------------------------------------------------------------


def test_exif_orientation_6_rotates():
    src = Image.new("RGB", (40, 20), RED)
    src.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(src, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data, MB, PX)
    assert out.size == (20, 40)
    assert close_to(out.getpixel((10, 5)), RED, 40)  # the left edge is now on top
    assert close_to(out.getpixel((10, 35)), BLUE, 40)
    assert out.info == {}  # no EXIF left behind to rotate it a second time


def test_grayscale_l():
    out = load_image(encode(Image.new("L", (4, 4), 77), "PNG"), MB, PX)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (77, 77, 77)


@pytest.mark.parametrize("value,expected", [(32768, 128), (65535, 255), (1000, 4), (0, 0)])
def test_16bit_grayscale_is_scaled_not_clipped(value, expected):
    src = Image.new("I;16", (4, 4), value)
    data = encode(src, "PNG")
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode.startswith("I")
    out = load_image(data, MB, PX)
    assert out.mode == "RGB"
    assert close_to(out.getpixel((2, 2)), (expected,) * 3, 1)


def test_32bit_int_and_float_gray_tiff():
    out_i = load_image(encode(Image.new("I", (4, 4), 32768), "TIFF"), MB, PX)
    assert close_to(out_i.getpixel((0, 0)), (128,) * 3, 1)
    out_f = load_image(encode(Image.new("F", (4, 4), 0.5), "TIFF"), MB, PX)
    assert close_to(out_f.getpixel((0, 0)), (128,) * 3, 1)


@pytest.mark.parametrize("fmt,tol", [("JPEG", 20), ("TIFF", 0)])
def test_cmyk(fmt, tol):
    src = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(src, fmt)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode == "CMYK"
    out = load_image(data, MB, PX)
    assert out.mode == "RGB" and close_to(out.getpixel((4, 4)), RED, tol)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    src = Image.new("P", (8, 8), 0)
    src.putpalette([255, 0, 0, 0, 0, 0] + [0, 0, 0] * 254)  # 0 = red, 1 = black (transparent)
    src.paste(1, (4, 0, 8, 8))
    data = encode(src, fmt, transparency=1)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode == "P" and probe.info.get("transparency") == 1
    out = load_image(data, MB, PX)
    assert out.getpixel((1, 1)) == RED
    assert out.getpixel((6, 1)) == WHITE  # would be black if transparency were dropped


@pytest.mark.parametrize("fmt,params", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_rgba_composited_on_white(fmt, params):
    src = Image.new("RGBA", (3, 1))
    src.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    src.putpixel((1, 0), (0, 0, 255, 255))
    src.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(encode(src, fmt, **params), MB, PX)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == BLUE
    assert close_to(out.getpixel((2, 0)), (127, 127, 127), 1)


def test_gray_with_alpha():
    src = Image.new("LA", (2, 1), (0, 0))
    src.putpixel((1, 0), (50, 255))
    out = load_image(encode(src, "PNG"), MB, PX)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == (50, 50, 50)


def test_rgb_png_with_transparent_colour_key():
    src = Image.new("RGB", (2, 1), BLUE)
    src.putpixel((1, 0), GREEN)
    out = load_image(encode(src, "PNG", transparency=GREEN), MB, PX)
    assert out.getpixel((0, 0)) == BLUE and out.getpixel((1, 0)) == WHITE


@pytest.mark.parametrize("fmt,params", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_animated_images_use_the_first_frame(fmt, params):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, GREEN)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)
    with Image.open(io.BytesIO(data)) as probe:
        assert getattr(probe, "n_frames", 1) == 3  # genuinely animated
    out = load_image(data, MB, PX)
    assert out.mode == "RGB" and out.getpixel((4, 4)) == RED


def test_exif_and_icc_metadata_are_dropped():
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    data = encode(Image.new("RGB", (4, 4), RED), "JPEG", exif=exif.tobytes(), icc_profile=b"fake-icc")
    out = load_image(data, MB, PX)
    assert "exif" not in out.info and "icc_profile" not in out.info


# --- hashing, shipping, resizing ---------------------------------------------------------------


def test_image_sha256_is_of_raw_bytes():
    data = b"\x89PNG not really"
    assert image_sha256(data) == hashlib.sha256(data).hexdigest()
    assert len(image_sha256(b"")) == 64 and image_sha256(b"a") != image_sha256(b"b")


def test_png_base64_roundtrip_is_lossless_and_metadata_free():
    src = noise((12, 7))
    src.info["icc_profile"] = b"fake-icc"
    src.info["transparency"] = (0, 0, 0)
    s = encode_png_base64(src)
    raw = base64.b64decode(s, validate=True)
    assert raw.startswith(b"\x89PNG") and b"iCCP" not in raw and b"tRNS" not in raw
    out = decode_png_base64(s)
    assert out.size == (12, 7) and out.mode == "RGB"
    assert out.tobytes() == src.tobytes()
    assert "icc_profile" in src.info  # the caller's image is left alone


def test_decode_png_base64_refuses_other_formats_and_garbage():
    jpeg = base64.b64encode(encode(Image.new("RGB", (4, 4)), "JPEG")).decode()
    expect_error("not_an_image", 415, decode_png_base64, jpeg)
    expect_error("invalid_base64", 400, decode_png_base64, "***")
    png = encode(noise((16, 16)), "PNG")
    expect_error("truncated_image", 400, decode_png_base64, base64.b64encode(png[: len(png) // 2]).decode())


@pytest.mark.parametrize(
    "size,max_side,expected",
    [
        ((400, 100), 100, (100, 25)),
        ((100, 400), 100, (25, 100)),
        ((1000, 3), 10, (10, 1)),
        ((333, 333), 100, (100, 100)),
    ],
)
def test_downscale_keeps_aspect(size, max_side, expected):
    out = downscale(Image.new("RGB", size, RED), max_side)
    assert out.size == expected and out.getpixel((0, 0)) == RED


def test_downscale_never_enlarges():
    small = Image.new("RGB", (50, 20))
    assert downscale(small, 100) is small
    assert downscale(small, 50) is small
    with pytest.raises(ValueError):
        downscale(small, 0)


# The decode budget (issue 13): pixels being decoded at once, across all requests of the process.


def test_header_pixels_reads_the_header_only():
    assert images.header_pixels(encode(Image.new("RGB", (300, 200)), "PNG")) == 60_000
    assert images.header_pixels(b"not an image") == 0
    assert images.header_pixels(b"") == 0
    png = encode(noise((64, 48)), "PNG")
    assert images.header_pixels(png[:100]) == 64 * 48  # the size is known before the data is there


def test_pixel_budget_bounds_what_is_decoded_at_once():
    import threading
    import time

    budget = images.PixelBudget(100)
    lock = threading.Lock()
    holders, peak_holders, peak_in_use = 0, 0, 0

    def decode():
        nonlocal holders, peak_holders, peak_in_use
        with budget.hold(40, wait_s=30):
            with lock:
                holders += 1
                peak_holders = max(peak_holders, holders)
                peak_in_use = max(peak_in_use, budget.capacity - budget.free)
            time.sleep(0.01)
            with lock:
                holders -= 1

    threads = [threading.Thread(target=decode) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert peak_in_use <= 100 and peak_holders == 2  # 40 + 40 fit, a third would not
    assert budget.free == budget.capacity


def test_pixel_budget_gives_up_after_the_wait_with_an_overload_answer():
    # A fake clock: both deadlines are set at t=0, and the wait is over at the next look (t=10).
    ticks = iter([0.0, 0.0, 10.0])
    budget = images.PixelBudget(100, clock=lambda: next(ticks))
    budget.acquire(100, wait_s=1)
    with pytest.raises(images.DecodeBusy) as err:
        budget.acquire(1, wait_s=5)
    assert (err.value.status, err.value.code) == (503, "overloaded")
    assert isinstance(err.value, ErrorAnswer) and not isinstance(err.value, ImageError)  # not the image's fault
    assert budget.free == 0  # the refused request reserved nothing


def test_pixel_budget_real_wait_then_refusal_and_release_on_error():
    import time

    budget = images.PixelBudget(10)
    with budget.hold(10, wait_s=1):
        t0 = time.monotonic()
        with pytest.raises(images.DecodeBusy):
            budget.acquire(5, wait_s=0.05)
        assert 0.04 <= time.monotonic() - t0 < 2
    with pytest.raises(RuntimeError):
        with budget.hold(7, wait_s=1):
            raise RuntimeError("decode failed")
    assert budget.free == budget.capacity  # released on the way out of a failed decode


def test_pixel_budget_is_first_come_first_served():
    """A large image waiting at the head is not overtaken by small ones that would fit."""
    import threading
    import time

    budget = images.PixelBudget(100)
    order = []
    budget.acquire(60, wait_s=1)

    def take(name, n):
        with budget.hold(n, wait_s=30):
            order.append(name)

    large = threading.Thread(target=take, args=("large", 80))
    large.start()
    time.sleep(0.1)  # large is queued first
    small = threading.Thread(target=take, args=("small", 10))
    small.start()
    time.sleep(0.1)
    assert order == []  # small fits in the 40 free, but waits behind large
    budget.release(60)
    large.join(10)
    small.join(10)
    assert order == ["large", "small"]


def test_pixel_budget_edge_sizes():
    budget = images.PixelBudget(100)
    assert budget.acquire(500, wait_s=0) == 100  # larger than the whole budget: runs alone
    assert budget.acquire(0, wait_s=0) == 0  # nothing to decode never waits
    budget.release(100)
    assert budget.free == budget.capacity
    with pytest.raises(ValueError):
        images.PixelBudget(0)
