"""Turn whatever a creator uploads into an RGB picture a vision model can read, or a clear error.

Everything here is a plain function so the HTTP service, the Kafka consumer and the CLI share
one set of rules, and so it can be tested without starting BentoML.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from PIL import Image, ImageOps, UnidentifiedImageError

from snap2caption_service.core.errors import ErrorAnswer

# MPO is what Pillow calls many ordinary camera and phone JPEGs (they carry a preview frame),
# so refusing it would refuse plain photos.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})

ERROR_STATUS: dict[str, int] = {
    "empty_image": 400,
    "invalid_base64": 400,
    "image_too_large": 413,
    "too_many_pixels": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
    "truncated_image": 400,
}

_ALLOWED_HINT = "Please send a JPEG, PNG, WebP, GIF, BMP or TIFF image."
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255)
_ASCII_WHITESPACE = str.maketrans("", "", " \t\r\n\f\v")
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


class ImageError(ErrorAnswer, ValueError):
    """A problem with the uploaded image that the creator (not the service) has to fix.

    ``code`` is stable for clients to branch on, ``status`` is the HTTP status to answer with,
    and ``detail`` is a sentence to show the creator.
    """

    def __init__(self, code: str, detail: str) -> None:
        if code not in ERROR_STATUS:
            raise KeyError(f"unknown image error code {code!r}")
        super().__init__(ERROR_STATUS[code], code, detail)

    def __repr__(self) -> str:
        return f"ImageError(code={self.code!r}, status={self.status}, detail={self.detail!r})"


def _human_size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f} MB"
    if n >= 1_000:
        return f"{n / 1_000:.1f} KB"
    return f"{n} bytes"


def _too_large(size: int | None, max_bytes: int) -> ImageError:
    what = f"The image is about {_human_size(size)}" if size is not None else "The image is too large"
    return ImageError("image_too_large", f"{what}; the limit is {_human_size(max_bytes)}. Please send a smaller file.")


def _check_limit(name: str, value: int) -> None:
    # A zero or negative limit is a configuration bug, not a creator's mistake, so it must not
    # surface as a 4xx.
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def decode_base64_image(payload: str, max_bytes: int) -> bytes:
    """Raw image bytes from base64 (standard or URL-safe, padding optional) or a data: URL."""
    _check_limit("max_bytes", max_bytes)
    if not isinstance(payload, str):
        raise ImageError("invalid_base64", "The image must be sent as base64 text or a data: URL.")
    # Reject before any copying work: even with generous room for line breaks, a payload this
    # long cannot decode to something within the limit.
    if len(payload) > 2 * (max_bytes * 4 // 3 + 4) + 1024:
        raise _too_large(len(payload) * 3 // 4, max_bytes)

    text = payload.strip()
    if not text:
        raise ImageError("empty_image", "No image was sent.")
    if text[:5].lower() == "data:":
        comma = text.find(",", 0, 256)
        if comma < 0:
            raise ImageError("invalid_base64", "The data: URL has no ',' separating its header from the image data.")
        params = [p.strip().lower() for p in text[5:comma].split(";")]
        if "base64" not in params:
            raise ImageError("invalid_base64", "Only base64 data: URLs are accepted (data:image/...;base64,...).")
        # The declared media type is ignored on purpose: the bytes are sniffed later, and
        # browsers and phones often label images generically or wrongly.
        text = text[comma + 1 :]
    elif text[:7].lower() == "http://" or text[:8].lower() == "https://":
        raise ImageError("invalid_base64", "That looks like a web link; send the image itself, base64-encoded.")

    # MIME encoders wrap lines and JSON producers sometimes pretty-print, so whitespace anywhere
    # is tolerated; anything else outside the alphabet is refused rather than silently skipped.
    compact = text.translate(_ASCII_WHITESPACE)
    if not compact.rstrip("="):
        raise ImageError("empty_image", "No image was sent.")
    if "-" in compact or "_" in compact:
        if "+" in compact or "/" in compact:
            raise ImageError("invalid_base64", "The image data mixes standard and URL-safe base64 alphabets.")
        compact = compact.translate(_URLSAFE_TO_STANDARD)

    body = compact.rstrip("=")
    if len(body) % 4 == 1:
        raise ImageError("invalid_base64", "The image data isn't valid base64 (its length is wrong).")
    if len(body) * 3 // 4 > max_bytes:
        raise _too_large(len(body) * 3 // 4, max_bytes)
    try:
        raw = binascii.a2b_base64((body + "=" * (-len(body) % 4)).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ImageError("invalid_base64", "The image data isn't valid base64.") from None

    if not raw:
        raise ImageError("empty_image", "No image was sent.")
    if len(raw) > max_bytes:
        raise _too_large(len(raw), max_bytes)
    return raw


def image_sha256(data: bytes) -> str:
    """Content hash of the uploaded bytes; feedback later finds the image by it."""
    return hashlib.sha256(data).hexdigest()


def _allowed_format_by_magic(data: bytes) -> str | None:
    """Name of an allowed format whose signature ``data`` starts with, if any."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:2] == b"BM":
        return "BMP"
    return None


def _describe_non_image(data: bytes) -> str:
    """A cheap guess at what a non-image upload is, so the creator knows what went wrong."""
    head = data[:1024]
    if head.startswith(b"%PDF"):
        return "looks like a PDF document"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevx", b"mif1", b"msf1"):
            return "looks like a HEIC/HEIF photo, which isn't supported; export it as JPEG"
        return "looks like a video or other media file"
    if head.startswith(b"PK\x03\x04"):
        return "looks like a ZIP archive or Office document"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if (
        text.startswith(b"<svg")
        or (text.startswith(b"<?xml") and b"<svg" in text)
        or (text.startswith(b"<!doctype svg"))
    ):
        return "looks like an SVG drawing; vector images aren't supported, export it as PNG"
    if text.startswith((b"<!doctype html", b"<html")) or b"<head" in text or b"<body" in text:
        return "looks like an HTML web page"
    if text.startswith(b"<?xml"):
        return "looks like an XML document"
    if b"\x00" not in head and all(b >= 0x20 or b in b"\t\n\r\f" for b in head):
        if text.startswith(b"data:image"):
            return "looks like a data: URL; it seems to have been encoded twice"
        if text.startswith((b"{", b"[")):
            return "looks like JSON text"
        return "looks like plain text"
    return "isn't in a picture format that can be read"


def _not_an_image(data: bytes) -> ImageError:
    return ImageError("not_an_image", f"The upload {_describe_non_image(data)}. {_ALLOWED_HINT}")


def _damaged(fmt: str) -> ImageError:
    return ImageError(
        "truncated_image",
        f"The {fmt} file is cut off or damaged, so it can't be read completely. Please upload it again.",
    )


def _too_many_pixels(width: int | None, height: int | None, max_pixels: int) -> ImageError:
    dims = f"{width}x{height} pixels" if width and height else "too many pixels"
    return ImageError(
        "too_many_pixels",
        f"The image is {dims}; the limit is {max_pixels:,} pixels in total. Please send a smaller picture.",
    )


def _scaled_to_l(im: Image.Image) -> Image.Image:
    """8-bit gray from 16/32-bit integer or float gray, by scaling rather than clipping.

    Pillow's own conversion clips anything above 255 to white, which turns an ordinary 16-bit
    scan or PNG into a blank page.
    """
    if im.mode == "F":
        lo, hi = im.getextrema()
        if lo >= 0.0 and hi <= 1.0:
            return im.point(lambda v: v * 255.0).convert("L")
        if lo >= 0.0 and hi <= 255.0:
            return im.convert("L")
        span = (hi - lo) or 1.0
        return im.point(lambda v: (v - lo) * (255.0 / span)).convert("L")

    wide = im if im.mode == "I" else im.convert("I")
    lo, hi = wide.getextrema()
    if lo >= 0 and hi <= 255:
        # Mode I from some TIFFs holds 8-bit data; scaling it down would make it black.
        return wide.convert("L")
    if (lo >= 0 and hi <= 65535) or im.mode.startswith("I;16"):
        return wide.point(lambda v: v * (255.0 / 65535.0)).convert("L")
    span = (hi - lo) or 1
    return wide.point(lambda v: (v - lo) * (255.0 / span)).convert("L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new RGB image; transparent areas become white, as they look on a white page."""
    if im.mode.startswith(("I", "F")):
        # A tRNS key on 16-bit gray is vanishingly rare and would not survive scaling anyway.
        return _scaled_to_l(im).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    # Covers RGB (a copy), L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX. ICC profiles are ignored:
    # colour management would cost time for a difference a captioning model doesn't notice.
    return im.convert("RGB")


def load_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Validate and decode uploaded bytes into an upright RGB image with no metadata.

    Animated images give their first frame. Raises :class:`ImageError` for anything a creator
    has to fix.
    """
    _check_limit("max_bytes", max_bytes)
    _check_limit("max_pixels", max_pixels)
    if not data:
        raise ImageError("empty_image", "No image was sent.")
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)

    # Open with every plugin so a real but unwanted format (ICO, PSD...) gets a precise
    # answer; only the header is parsed here, and the format is checked before any decoding.
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's global guard tripped during open (the warning only raises when warnings
        # are configured as errors); either way the picture is too big for us too.
        raise _too_many_pixels(None, None, max_pixels) from None
    except UnidentifiedImageError:
        fmt = _allowed_format_by_magic(data)
        raise (_damaged(fmt) if fmt else _not_an_image(data)) from None
    except MemoryError:
        raise
    except Exception:
        # Plugins raise assorted errors on malformed headers of files they did recognise.
        fmt = _allowed_format_by_magic(data)
        raise (_damaged(fmt) if fmt else _not_an_image(data)) from None

    try:
        fmt = im.format or ""
        if fmt not in ALLOWED_FORMATS:
            raise ImageError("unsupported_format", f"{fmt or 'This'} images aren't supported. {_ALLOWED_HINT}")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise _damaged(fmt)
        # Our own limit, checked from the header alone: the service's limit should not depend
        # on whatever Image.MAX_IMAGE_PIXELS happens to be in this process.
        if width * height > max_pixels:
            raise _too_many_pixels(width, height, max_pixels)

        # A full decode is the only reliable way to find a cut-off file; this relies on
        # ImageFile.LOAD_TRUNCATED_IMAGES keeping its default (False), which no code here changes.
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(width, height, max_pixels) from None
        except MemoryError:
            raise
        except Exception:
            raise _damaged("JPEG" if fmt == "MPO" else fmt) from None

        try:
            ImageOps.exif_transpose(im, in_place=True)
        except MemoryError:
            raise
        except Exception:
            # A malformed EXIF block is common from cheap cameras and editors; an unrotated
            # picture is still far better than refusing it.
            pass

        try:
            out = _to_rgb(im)
        except ValueError:
            # Pillow has no conversion for a few exotic TIFF colour modes.
            raise ImageError(
                "unsupported_format", f"{fmt} images in {im.mode} colour mode aren't supported. {_ALLOWED_HINT}"
            ) from None
        out.info = {}  # EXIF (GPS!), ICC and XMP must not leak into what we store or ship.
        return out
    finally:
        im.close()


def header_pixels(data: bytes) -> int:
    """Width x height from the image header alone (nothing decoded); 0 when there is none to read.

    What :func:`load_image` is about to decode, so a decode budget can be reserved first.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - not an image, a bomb, a broken header: load_image names it
        return 0
    return width * height if width > 0 and height > 0 else 0


class DecodeBusy(ErrorAnswer):
    """No decode budget came free within the wait: the process is decoding enough already.
    Overload, not the image's fault: 503, and the caller retries (Retry-After)."""

    def __init__(self, pixels: int, wait_s: float) -> None:
        super().__init__(
            503,
            "overloaded",
            f"Too many large images are being decoded right now ({pixels:,} pixels could not be "
            f"reserved within {wait_s:g} s). Please retry shortly.",
        )


class PixelBudget:
    """A process-wide cap on pixels being decoded at once: decoding holds the full-size bitmap
    (and a converted copy), so memory follows pixels in flight, not requests in flight.

    First come, first served: a large image waiting at the head is not overtaken by a stream
    of small ones. A request larger than the whole budget may still run, alone.
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self._clock = clock
        self.free = capacity  # pixels not reserved right now (read it, never write it)
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    def acquire(self, pixels: int, wait_s: float) -> int:
        """Reserve ``pixels`` (at most the whole budget); returns what was reserved. Raises
        :class:`DecodeBusy` when that does not come free within ``wait_s`` seconds."""
        n = min(max(pixels, 0), self.capacity)
        if n == 0:
            return 0
        deadline = self._clock() + wait_s
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self.free < n:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        raise DecodeBusy(pixels, wait_s)
                    self._cond.wait(remaining)
                self.free -= n
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now
        return n

    def release(self, n: int) -> None:
        with self._cond:
            self.free = min(self.capacity, self.free + n)
            self._cond.notify_all()

    @contextmanager
    def hold(self, pixels: int, wait_s: float) -> Iterator[None]:
        n = self.acquire(pixels, wait_s)
        try:
            yield
        finally:
            self.release(n)


def encode_png_base64(img: Image.Image) -> str:
    """Lossless, metadata-free PNG as base64, for shipping a normalized image between processes."""
    if img.info:
        # PNG save copies ICC profiles and transparency from .info on its own.
        img = img.copy()
        img.info = {}
    buf = io.BytesIO()
    # Speed beats size here: the bytes cross a local socket or queue once and are thrown away.
    img.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png_base64(s: str) -> Image.Image:
    """The image :func:`encode_png_base64` produced, fully loaded."""
    try:
        raw = binascii.a2b_base64(s.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError):
        raise ImageError("invalid_base64", "The internal image payload isn't valid base64.") from None
    if not raw:
        raise ImageError("empty_image", "The internal image payload is empty.")
    try:
        # Only PNG is ever produced by encode_png_base64; refusing other parsers keeps this
        # path from becoming a second, unchecked upload route.
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
            im.load()
            out = im.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageError("not_an_image", "The internal image payload isn't a PNG.") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise _damaged("PNG") from None
    out.info = {}
    return out


def downscale(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longer side is at most ``max_side``, keeping the aspect ratio.

    Returns ``img`` itself when it is already small enough; never enlarges.
    """
    _check_limit("max_side", max_side)
    width, height = img.size
    longest = max(width, height)
    if longest <= max_side:
        return img
    scale = max_side / longest
    size = (
        max_side if width == longest else max(1, round(width * scale)),
        max_side if height == longest else max(1, round(height * scale)),
    )
    # reducing_gap lets Pillow shrink big photos in a cheap first pass; the result is
    # indistinguishable at the sizes vision models use.
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
