"""Images in a conversation: one form for every API, checked before anything decodes them.

An adapter turns its API's image part (OpenAI's `image_url` data URL, a Responses
`input_image`, an Anthropic `image` block, an Ollama `images` entry) into a `MediaPart` and puts
`MEDIA_MARKER` in the message's text where it sits. `load_media` (on a worker thread) decodes
the base64, recognises the format from its first bytes and reads the size from the header, never
decoding pixels: a small PNG can claim an enormous canvas, and a bound read from the header costs
nothing. Each refusal is a 400 naming the part the client sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from hearth.errors import InvalidRequestError, UnsupportedParameterError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_MEDIA_PARTS",
    "MEDIA_MARKER",
    "ImageFacts",
    "LoadedMedia",
    "MediaPart",
    "image_facts",
    "load_media",
    "media_part_from_url",
]

# Where an image sits in a message's text, until the prompt is split around it. llama.cpp's
# libmtmd uses the same default marker.
MEDIA_MARKER = "<__media__>"
MAX_MEDIA_PARTS = 16  # per request
MAX_IMAGE_PIXELS = 33_177_600  # 8K UHD (7680 x 4320)

ImageFormat = Literal["png", "jpeg", "gif", "bmp", "webp"]


@dataclass(frozen=True, slots=True)
class MediaPart:
    """An image as the client sent it: base64 text (a data URL's payload, Anthropic's `data`,
    Ollama's string), not yet decoded. `param` is its wire path, for errors."""

    kind: Literal["image", "audio"]
    base64_data: str
    param: str
    media_type: str | None = None  # what the client said it is, if it said
    url: str | None = None  # an http(s) address instead of data: fetched only under a flag


@dataclass(frozen=True, slots=True)
class ImageFacts:
    format: ImageFormat
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class LoadedMedia:
    """An image decoded from base64 and checked: its bytes and the key the prompt cache knows
    it by (a hash of the bytes, never of where it came from)."""

    part: MediaPart
    data: bytes
    key: str  # sha256 of data, hex
    facts: ImageFacts


def media_part_from_url(url: str, param: str, kind: Literal["image", "audio"]) -> MediaPart:
    """A `data:<type>;base64,<data>` URL as a part, or an http(s) address that `load_media`
    fetches only where the operator allowed it (--allow-media-urls); anything else is refused."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequestError(
                f"'{param}' must be a base64 data URL (data:image/png;base64,...).", param=param
            )
        media_type = header[len("data:") : -len(";base64")] or None
        return MediaPart(kind, payload, param, media_type)
    if url.startswith(("http://", "https://")):
        return MediaPart(kind, "", param, url=url)
    raise InvalidRequestError(
        f"'{param}' must be a data URL (data:image/png;base64,...).", param=param
    )


def load_media(
    parts: Sequence[MediaPart],
    *,
    max_bytes: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
    fetch_urls: bool = False,
) -> list[LoadedMedia]:
    """Decode (or, with `fetch_urls`, download) and check every part, in order. Blocking work:
    call it off the event loop."""
    if len(parts) > MAX_MEDIA_PARTS:
        raise InvalidRequestError(
            f"A request may hold at most {MAX_MEDIA_PARTS} images; this one has {len(parts)}.",
            param=parts[MAX_MEDIA_PARTS].param,
        )
    loaded = []
    for part in parts:
        if part.kind != "image":
            raise UnsupportedParameterError(
                "Audio input is not supported yet: no audio model is served.", param=part.param
            )
        if part.url is not None:
            data = _fetch(part, part.url, max_bytes, fetch_urls)
        elif len(part.base64_data) > max_bytes * 4 // 3 + 4:
            raise _too_large(part, max_bytes)
        else:
            try:
                data = base64.b64decode(part.base64_data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequestError(
                    f"'{part.param}' is not valid base64: {exc}.", param=part.param
                ) from exc
        if len(data) > max_bytes:
            raise _too_large(part, max_bytes)
        facts = image_facts(data, part.param)
        if facts.width * facts.height > max_pixels:
            raise InvalidRequestError(
                f"'{part.param}' is {facts.width}x{facts.height} pixels; at most {max_pixels:,} "
                "pixels are taken.",
                param=part.param,
                code="image_too_large",
            )
        loaded.append(LoadedMedia(part, data, hashlib.sha256(data).hexdigest(), facts))
    return loaded


_FETCH_TIMEOUT_S = 10.0
_MAX_REDIRECTS = 3


def _fetch(part: MediaPart, url: str, max_bytes: int, allowed: bool) -> bytes:
    """An image at an http(s) address, read up to `max_bytes`, where the operator allowed it."""
    if not allowed:
        raise UnsupportedParameterError(
            f"'{part.param}' is a web address; this server takes images inline as base64 data "
            "URLs (data:image/png;base64,...). Fetching URLs is off: a server that fetches them "
            "can be made to reach the local network (start it with --allow-media-urls to allow "
            "it).",
            param=part.param,
        )
    import httpx  # only a server that fetches pays for it

    chunks: list[bytes] = []
    size = 0
    try:
        with (
            httpx.Client(
                timeout=_FETCH_TIMEOUT_S, follow_redirects=True, max_redirects=_MAX_REDIRECTS
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise InvalidRequestError(
                    f"'{part.param}': fetching {url} answered HTTP {response.status_code}.",
                    param=part.param,
                    code="invalid_image_url",
                )
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(part, max_bytes)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise InvalidRequestError(
            f"'{part.param}': could not fetch {url}: {exc}.",
            param=part.param,
            code="invalid_image_url",
        ) from exc
    return b"".join(chunks)


def _too_large(part: MediaPart, max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{part.param}' is larger than --max-image-bytes ({max_bytes:,} bytes).",
        param=part.param,
        code="image_too_large",
    )


def image_facts(data: bytes, param: str) -> ImageFacts:
    """The format and size an image's header declares; 400 for anything else, or a header cut
    short."""
    try:
        facts = _read_header(data)
    except (struct.error, IndexError, ValueError):
        facts = None
    if facts is None:
        raise InvalidRequestError(
            f"'{param}' is not a PNG, JPEG, GIF, BMP or WebP image (or its header is damaged).",
            param=param,
            code="invalid_image",
        )
    if facts.width <= 0 or facts.height <= 0:
        raise InvalidRequestError(
            f"'{param}' declares a {facts.width}x{facts.height} image.",
            param=param,
            code="invalid_image",
        )
    return facts


def _read_header(data: bytes) -> ImageFacts | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return ImageFacts("png", width, height)
    if data.startswith((b"GIF87a", b"GIF89a")):
        width, height = struct.unpack("<HH", data[6:10])
        return ImageFacts("gif", width, height)
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return ImageFacts("bmp", width, abs(height))  # a negative height: rows top-down
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    return None


def _webp(data: bytes) -> ImageFacts | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return ImageFacts("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return ImageFacts("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageFacts("webp", width, height)
    return None


# JPEG start-of-frame markers: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes) -> ImageFacts | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return ImageFacts("jpeg", width, height)
        if marker == 0xDA:  # start of scan before any frame header
            return None
        at += 2 + length
    return None
