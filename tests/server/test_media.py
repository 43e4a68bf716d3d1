"""Images in, on every API, through the real server: SmolLM2 with a tiny random projector
(scripts/make_test_mmproj.py, written at test time). Its answers are noise, but every path is
real: decode, preprocess, encode, embed, cache, count. Greedy at --flash-attn off, so the same
image gives the same answer and a different one (here) a different answer."""

from __future__ import annotations

import base64
import http.server
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest

from hearth.models.registry import embedded_model_path
from tests.server.conftest import HearthServer, start_server
from tests.server.media_helpers import png, write_test_projector

pytestmark = pytest.mark.server

MODEL = embedded_model_path().stem  # --model FILE serves it under its stem
IMAGE_TOKENS = 64  # the test projector resizes every image to 64x64: 64 positions
MAX_IMAGE_BYTES = 300_000


RED = png(32, 32, lambda x, y: (255, 0, 0))
STRIPES = png(48, 40, lambda x, y: (255, 255, 255) if (x // 4) % 2 else (0, 0, 40))
GREEN = png(20, 20, lambda x, y: (0, 200, 0))
CHECKS = png(24, 24, lambda x, y: (250, 250, 0) if (x // 6 + y // 6) % 2 else (0, 0, 0))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{b64(data)}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def mmproj(home: Path) -> Path:
    path = home / "mmproj-test.gguf"
    return write_test_projector(path)


def _vision_args(mmproj: Path) -> list[str]:
    return [
        "--model", str(embedded_model_path()), "--mmproj", str(mmproj), "--flash-attn", "off",
        "--parallel", "2", "--ctx-size", "1024", "--max-image-bytes", str(MAX_IMAGE_BYTES),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def vision(home: Path, mmproj: Path) -> Iterator[HearthServer]:
    with start_server(home, *_vision_args(mmproj)) as server:
        yield server


def _chat(client: openai.OpenAI, image: bytes, text: str = "What is in the picture?") -> Any:
    return client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": data_url(image)}},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
    )


def _encoded(server: HearthServer) -> int:
    count: int = server.health()["engine"]["media_encoded_total"]
    return count


def test_chat_images_are_seen_counted_and_told_apart(vision: HearthServer) -> None:
    client = vision.client()
    text_only = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is in the picture?"}],
        max_tokens=1,
    )
    red, stripes, red_again = (_chat(client, image) for image in (RED, STRIPES, RED))
    assert red.usage.prompt_tokens >= text_only.usage.prompt_tokens + IMAGE_TOKENS
    assert red.choices[0].message.content == red_again.choices[0].message.content
    assert red.choices[0].message.content != stripes.choices[0].message.content
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in the picture?"},
                    {"type": "image_url", "image_url": {"url": data_url(STRIPES)}},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == stripes.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == stripes.usage.prompt_tokens


def test_the_same_image_is_not_encoded_again_on_the_next_turn(vision: HearthServer) -> None:
    client = vision.client()
    first_turn: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this."},
                {"type": "image_url", "image_url": {"url": data_url(GREEN)}},
            ],
        }
    ]
    first = client.chat.completions.create(
        model=MODEL, messages=first_turn, max_tokens=6, temperature=0
    )
    encoded = _encoded(vision)
    second = client.chat.completions.create(
        model=MODEL,
        messages=[
            *first_turn,
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And its colour?"},
        ],
        max_tokens=4,
        temperature=0,
    )
    assert _encoded(vision) == encoded  # the image's KV came from the cache
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= IMAGE_TOKENS


def test_different_images_share_no_cached_positions_even_after_a_restart(
    home: Path, mmproj: Path
) -> None:
    text = "Name the colours."
    with start_server(home / "restart", *_vision_args(mmproj)) as server:
        client = server.client()
        red = _chat(client, RED, text)
        stripes = _chat(client, STRIPES, text)
        shared = stripes.usage.prompt_tokens_details.cached_tokens
        # The text before the image is shared; no position of the image is.
        assert shared < red.usage.prompt_tokens - IMAGE_TOKENS - 4
    with start_server(home / "restart", *_vision_args(mmproj)) as server:
        client = server.client()
        green = _chat(client, GREEN, text)
        assert green.usage.prompt_tokens_details.cached_tokens <= shared
        red_again = _chat(client, RED, text)  # its prefix was saved to disk at the stop
        assert red_again.usage.prompt_tokens_details.cached_tokens >= IMAGE_TOKENS
        assert red_again.choices[0].message.content == red.choices[0].message.content


def test_responses_take_input_image(vision: HearthServer) -> None:
    client = vision.client()

    def ask(image: bytes) -> Any:
        return client.responses.create(
            model=MODEL,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is in the picture?"},
                        {"type": "input_image", "image_url": data_url(image), "detail": "auto"},
                    ],
                }
            ],
            max_output_tokens=16,
            temperature=0,
        )

    red, stripes, red_again = ask(RED), ask(STRIPES), ask(RED)
    assert red.usage is not None and red.usage.input_tokens > IMAGE_TOKENS
    assert red.output_text == red_again.output_text != stripes.output_text
    streamed = client.responses.create(
        model=MODEL,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in the picture?"},
                    {"type": "input_image", "image_url": data_url(RED), "detail": "auto"},
                ],
            }
        ],
        max_output_tokens=16,
        temperature=0,
        stream=True,
    )
    ends = ("response.completed", "response.incomplete")  # max_output_tokens may end it
    done = [event for event in streamed if event.type in ends]
    assert done and done[0].response.output_text == red.output_text
    items = client.responses.input_items.list(red.id)
    kinds = [part.type for part in items.data[0].content]  # type: ignore[union-attr]
    assert kinds == ["input_text", "input_image"]


GREEDY = {"temperature": 0}  # this SDK's create() takes no temperature: sent in the body


def test_anthropic_takes_base64_image_blocks(vision: HearthServer) -> None:
    client = anthropic.Anthropic(base_url=vision.base_url, api_key="unused", max_retries=0)

    def ask(image: bytes, stream: bool = False) -> Any:
        message: Any = {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": b64(image)},
                },
                {"type": "text", "text": "What is this?"},
            ],
        }
        if stream:
            with client.messages.stream(
                model=MODEL, max_tokens=8, messages=[message], extra_body=GREEDY
            ) as events:
                return events.get_final_message()
        return client.messages.create(
            model=MODEL, max_tokens=8, messages=[message], extra_body=GREEDY
        )

    try:
        red, stripes, streamed = ask(RED), ask(STRIPES), ask(RED, stream=True)
    finally:
        client.close()
    assert red.usage.input_tokens > IMAGE_TOKENS
    assert red.content[0].text == streamed.content[0].text != stripes.content[0].text


def test_ollama_takes_images_on_chat_and_generate(vision: HearthServer) -> None:
    with ollama.Client(host=vision.base_url) as client:
        options = {"temperature": 0, "num_predict": 8}
        checks = client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "What is this?", "images": [b64(CHECKS)]}],
            options=options,
        )
        stripes = client.generate(
            model=MODEL, prompt="What is this?", images=[b64(STRIPES)], options=options
        )
        checks_generated = client.generate(
            model=MODEL, prompt="What is this?", images=[b64(CHECKS)], options=options
        )
        # Compared with a reply that also found the prompt cached: a prompt decoded afresh or
        # from the cache can part at a near tie (the last bits of a logit).
        checks_again = client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "What is this?", "images": [b64(CHECKS)]}],
            options=options,
        )
        checks_streamed = "".join(
            part.message.content or ""
            for part in client.chat(
                model=MODEL,
                messages=[{"role": "user", "content": "What is this?", "images": [b64(CHECKS)]}],
                options=options,
                stream=True,
            )
        )
    # Ollama counts the tokens evaluated: an image seen for the first time, all of them.
    assert checks.prompt_eval_count is not None and checks.prompt_eval_count > IMAGE_TOKENS
    assert checks_generated.response != stripes.response
    assert checks_streamed == checks_again.message.content  # the same image, streamed
    assert checks.message.content  # /api/chat's template is not /api/generate's: not compared


def test_a_text_only_model_refuses_an_image_by_part(vision: HearthServer) -> None:
    client = vision.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="smollm2:135m",  # the same weights from the registry: no projector
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look"},
                        {"type": "image_url", "image_url": {"url": data_url(RED)}},
                    ],
                }
            ],
            max_tokens=2,
        )
    assert refused.value.body["param"] == "messages[0].content[1].image_url.url"  # type: ignore[index]
    assert "does not take images" in refused.value.message


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + ihdr


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (png(400, 400, lambda x, y: (x % 256, y % 256, 0), level=0), "image_too_large"),
        (_png_header(9000, 9000) + b"junk", "image_too_large"),
        (_png_header(16, 16) + b"not a png body", "invalid_image"),
        (b"%PDF-1.4 not an image", "invalid_image"),
    ],
    ids=["over --max-image-bytes", "too many pixels", "corrupt", "not an image"],
)
def test_bad_images_are_refused_by_part(vision: HearthServer, image: bytes, code: str) -> None:
    client = vision.client()
    with pytest.raises(openai.BadRequestError) as refused:
        _chat(client, image)
    body: Any = refused.value.body
    assert body["code"] == code, body
    assert body["param"] == "messages[0].content[1].image_url.url"
    # The server is unharmed: the next request is served.
    assert _chat(client, RED).choices[0].finish_reason in ("stop", "length")


def test_too_many_images_and_web_addresses_are_refused(vision: HearthServer) -> None:
    client = vision.client()
    parts: list[Any] = [
        {"type": "image_url", "image_url": {"url": data_url(GREEN)}} for _ in range(17)
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=2
        )
    assert "at most 16 images" in refused.value.message
    with pytest.raises(openai.BadRequestError) as fetched:
        _chat_url(client, "http://169.254.169.254/latest/meta-data")
    assert "Fetching URLs is off" in fetched.value.message


def _chat_url(client: openai.OpenAI, url: str, text: str | None = None) -> Any:
    """An image by address; with `text`, in _chat's shape (the text, then the image)."""
    parts: list[Any] = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        parts.insert(0, {"type": "text", "text": text})
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": parts}],
        max_tokens=8 if text is not None else 2,
        temperature=0,
    )


def test_anthropic_counts_an_image_s_positions(vision: HearthServer) -> None:
    client = anthropic.Anthropic(base_url=vision.base_url, api_key="unused", max_retries=0)
    text: Any = {"type": "text", "text": "What is this?"}
    image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64(GREEN)},
    }
    try:
        alone = client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": [text]}]
        )
        with_image = client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": [image, text]}]
        )
        sent = client.messages.create(
            model=MODEL, max_tokens=1, messages=[{"role": "user", "content": [image, text]}]
        )
    finally:
        client.close()
    assert with_image.input_tokens >= alone.input_tokens + IMAGE_TOKENS
    # Anthropic's input_tokens leaves out what was read from the cache.
    usage = sent.usage
    assert with_image.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_web_addresses_are_fetched_only_where_the_operator_allows(home: Path, mmproj: Path) -> None:
    # A loopback web server holds the image: with --allow-media-urls the server fetches it
    # (and the answer is the data URL's); a missing one is a 400 naming the part.
    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/red.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(RED)))
            self.end_headers()
            self.wfile.write(RED)

        def log_message(self, *_: Any) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{web.server_address[1]}"
    try:
        with start_server(home / "urls", *_vision_args(mmproj), "--allow-media-urls") as server:
            client = server.client()
            fetched = _chat_url(client, f"{base}/red.png", text="What is in the picture?")
            inline = _chat(client, RED)
            assert fetched.usage.prompt_tokens == inline.usage.prompt_tokens
            assert fetched.choices[0].message.content == inline.choices[0].message.content
            with pytest.raises(openai.BadRequestError) as missing:
                _chat_url(client, f"{base}/nothing.png")
            body: Any = missing.value.body
            assert body["code"] == "invalid_image_url" and "404" in body["message"]
    finally:
        web.shutdown()
        web.server_close()
