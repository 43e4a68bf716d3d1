"""The web page in a real browser (Chromium through Playwright) against the real server with the
bundled models, pulling from the loopback hub: each acceptance item of the page is a test here.

One server for the module (plus one with --api-key for the key test); every test gets a fresh
browser context, so its own IndexedDB and localStorage, and fails on any console error it did
not expect. Generation is greedy and short (temperature 0, a few tokens).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from hearth.models.registry import GEMMA_MODEL_ID, embedded_model_path
from tests.models.conftest import SMOL_FILE, SMOL_REPO
from tests.models.fake_hub import FakeHub, HubBlob, running_hub
from tests.reasoning_model import write_reasoning_model
from tests.server.conftest import MODEL, HearthServer, start_server
from tests.server.media_helpers import png, write_test_projector
from tests.web.conftest import ARTIFACTS, Console, watch_console

pytestmark = pytest.mark.server

REPLY_TIMEOUT_MS = 120_000
FIGURES = re.compile(
    r"^(\d+) tokens · [\d.]+ tok/s · (\d+) ms to first token · (\d+) cached prompt tokens$"
)
XSS = "<img src=x onerror=alert(1)> and <script>alert(2)</script>"
KEY = "web-key"


@dataclass
class Site:
    server: HearthServer
    hub: FakeHub
    tmp: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web")
    hub = FakeHub(repos={SMOL_REPO: {SMOL_FILE: HubBlob(path=embedded_model_path())}})
    with running_hub(hub):
        env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        # One thread: no OpenMP barriers, so steps stay short when other work shares the cores.
        with start_server(tmp, "--ctx-size", "1024", "--threads", "1", env=env) as server:
            yield Site(server, hub, tmp)


@dataclass
class Tab:
    """One browser context on the page, with its console watched."""

    page: Page
    console: Console
    server: HearthServer

    def open(self) -> None:
        self.page.goto(self.server.base_url + "/")
        expect(self.page.get_by_label("Model", exact=True)).to_be_enabled()

    def configure(self, *, max_tokens: int, temperature: float = 0) -> None:
        self.page.get_by_role("button", name="Conversation settings").click()
        for label, value in (("Max tokens", max_tokens), ("Temperature", temperature)):
            field = self.page.get_by_label(label, exact=True)
            field.fill(str(value))
            field.press("Tab")
        self.page.get_by_role("button", name="Conversation settings").click()

    def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")

    def last_reply(self) -> Locator:
        return self.page.locator(".message.assistant").last

    def wait_reply(self) -> Locator:
        reply = self.last_reply()
        expect(reply).to_have_attribute("aria-busy", "false", timeout=REPLY_TIMEOUT_MS)
        return reply

    def figures(self) -> re.Match[str]:
        text = self.wait_reply().locator(".figures").inner_text()
        match = FIGURES.match(text)
        assert match, f"no figures under the reply: {text!r}"
        return match

    def messages(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = self.page.eval_on_selector_all(
            ".message",
            """(nodes) => nodes.map((n) => [
                n.classList.contains("user") ? "user" : "assistant",
                (n.querySelector(".user-text, .reply") || {}).textContent || "",
            ])""",
        )
        return [tuple(pair) for pair in found]  # type: ignore[misc]

    def options(self) -> list[str]:
        picker = self.page.get_by_label("Model", exact=True)
        values: list[str] = picker.locator("option").evaluate_all(
            "(nodes) => nodes.map((n) => n.value)"
        )
        return values


def _open_tab(browser: Browser, server: HearthServer, **context: Any) -> Iterator[Tab]:
    browser_context = browser.new_context(**context)
    page = browser_context.new_page()
    page.set_default_timeout(30_000)
    tab = Tab(page, watch_console(page), server)
    try:
        yield tab
        assert not tab.console.unexpected(), f"console errors: {tab.console.unexpected()}"
    finally:
        browser_context.close()


@pytest.fixture()
def tab(browser: Browser, site: Site) -> Iterator[Tab]:
    yield from _open_tab(browser, site.server, viewport={"width": 1280, "height": 800})


def _busy_slots(server: HearthServer) -> int:
    return sum(int(m.get("slots_in_use", 0)) for m in server.health()["models"])


def _unlabelled_controls(page: Page) -> list[str]:
    unlabelled: list[str] = page.evaluate(
        """() => [...document.querySelectorAll("button, input, select, textarea")]
            .filter((el) => !(el.getAttribute("aria-label") || (el.labels && el.labels.length)
                              || el.textContent.trim()))
            .map((el) => el.outerHTML.slice(0, 120))"""
    )
    return unlabelled


def test_the_page_loads_without_errors_and_lists_both_bundled_models(tab: Tab, site: Site) -> None:
    response = tab.page.goto(site.server.base_url + "/")
    assert response is not None and response.ok
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    expect(tab.page.get_by_label("Model", exact=True)).to_be_enabled()
    assert tab.options()[:2] == [MODEL, GEMMA_MODEL_ID]
    # The startup model is loaded, and the picker says so.
    expect(tab.page.locator(".model-picker option").first).to_have_text(f"● {MODEL}")
    tab.page.get_by_role("button", name="Conversation settings").click()
    assert _unlabelled_controls(tab.page) == []
    tab.page.get_by_label("Models", exact=True).click()
    rows = tab.page.locator(".models-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text=MODEL)).to_contain_text("Q4_1")
    expect(rows.filter(has_text=MODEL)).to_contain_text("Loaded")
    expect(rows.filter(has_text=GEMMA_MODEL_ID)).to_contain_text("Not loaded")
    assert _unlabelled_controls(tab.page) == []


def test_a_reply_streams_in_then_shows_its_figures(tab: Tab) -> None:
    tab.open()
    tab.configure(max_tokens=24)
    # Shift+Enter adds a line; Enter sends.
    box = tab.page.get_by_label("Message", exact=True)
    box.type("Count from 1 to 100, separated by commas.")
    box.press("Shift+Enter")
    box.type("Go.")
    assert box.input_value() == "Count from 1 to 100, separated by commas.\nGo."
    expect(tab.page.locator(".message")).to_have_count(0)
    # Each animation frame notes the reply's length until the reply is done.
    tab.page.evaluate(
        """() => {
            window.replyLengths = [];
            const tick = () => {
                const last = [...document.querySelectorAll(".message.assistant")].pop();
                const reply = last && last.querySelector(".reply");
                if (last) window.replyLengths.push(reply ? reply.textContent.length : 0);
                if (!last || last.getAttribute("aria-busy") !== "false") {
                    requestAnimationFrame(tick);
                }
            };
            requestAnimationFrame(tick);
        }"""
    )
    box.press("Enter")
    figures = tab.figures()
    lengths: list[int] = tab.page.evaluate("window.replyLengths")
    grew = sorted({n for n in lengths if n > 0})
    assert len(grew) >= 3, f"the reply appeared in {len(grew)} steps: {lengths}"
    assert lengths[-1] == max(lengths)
    assert int(figures.group(1)) == 24  # max_tokens: counting to 100 never ends sooner
    assert int(figures.group(2)) > 0
    user, reply = tab.messages()
    assert user == ("user", "Count from 1 to 100, separated by commas.\nGo.")
    assert reply[0] == "assistant" and re.search(r"\d", reply[1])
    assert tab.last_reply().locator(".model-name").inner_text() == MODEL


def test_stop_and_escape_abort_the_request_and_free_the_slot(tab: Tab, site: Site) -> None:
    tab.open()
    tab.configure(max_tokens=600)

    def stopped_within_two_seconds(stop: Any) -> None:
        reply = tab.last_reply().locator(".reply")
        expect(reply).to_have_text(re.compile(r"[\s\S]{20}"), timeout=REPLY_TIMEOUT_MS)
        assert _busy_slots(site.server) == 1
        stop()
        started = time.monotonic()
        while _busy_slots(site.server) and time.monotonic() - started < 2:
            time.sleep(0.05)
        assert _busy_slots(site.server) == 0, "a slot is still in use 2 s after the stop"
        expect(tab.last_reply().locator(".figures")).to_have_text("Stopped")
        expect(tab.page.get_by_role("button", name="Send")).to_be_visible()

    tab.send("Count from 1 to 1000, separated by commas.")
    stopped_within_two_seconds(lambda: tab.page.get_by_role("button", name="Stop").click())
    kept = tab.messages()[1][1]
    assert len(kept) >= 20  # what arrived before the stop stays

    tab.page.get_by_label("Regenerate reply").click()
    stopped_within_two_seconds(lambda: tab.page.keyboard.press("Escape"))
    assert len(tab.messages()) == 2  # the regenerated reply replaced the first


def test_editing_a_message_resends_from_there(tab: Tab) -> None:
    tab.open()
    tab.configure(max_tokens=6)
    tab.send("Say hello.")
    tab.wait_reply()
    tab.send("Say goodbye.")
    tab.wait_reply()
    assert len(tab.messages()) == 4
    first = tab.page.locator(".message.user").first
    first.hover()
    first.get_by_label("Edit message").click()
    editor = tab.page.get_by_label("Edit message", exact=True).and_(tab.page.locator("textarea"))
    editor.fill("Say yes.")
    tab.page.get_by_label("Send edited message").click()
    tab.figures()
    messages = tab.messages()
    assert [role for role, _ in messages] == ["user", "assistant"]
    assert messages[0][1] == "Say yes."


def test_switching_to_gemma_answers_with_it_and_models_load_and_unload(
    tab: Tab, site: Site
) -> None:
    tab.open()
    tab.configure(max_tokens=8)
    tab.page.get_by_label("Model", exact=True).select_option(GEMMA_MODEL_ID)
    tab.send("Say hello.")
    tab.figures()
    assert tab.last_reply().locator(".model-name").inner_text() == GEMMA_MODEL_ID
    expect(tab.page.get_by_label("Model", exact=True)).to_have_value(GEMMA_MODEL_ID)
    expect(tab.page.locator(".model-picker option", has_text=GEMMA_MODEL_ID)).to_have_text(
        f"● {GEMMA_MODEL_ID}"
    )

    tab.page.get_by_label("Models", exact=True).click()
    row = tab.page.locator(".models-table tr", has_text=GEMMA_MODEL_ID)
    expect(row).to_contain_text("Loaded until")
    row.get_by_label(f"Unload {GEMMA_MODEL_ID}").click()
    expect(row).to_contain_text("Not loaded")
    ps = httpx.get(site.server.base_url + "/api/ps", timeout=10).json()
    assert GEMMA_MODEL_ID not in [m["name"] for m in ps["models"]]
    row.get_by_label(f"Load {GEMMA_MODEL_ID}").click()
    expect(row).to_contain_text(re.compile(r"Loaded\s+until \d"), timeout=REPLY_TIMEOUT_MS)
    ps = httpx.get(site.server.base_url + "/api/ps", timeout=10).json()
    assert GEMMA_MODEL_ID in [m["name"] for m in ps["models"]]
    row.get_by_label(f"Unload {GEMMA_MODEL_ID}").click()
    expect(row).to_contain_text("Not loaded")


def test_markup_in_messages_and_replies_is_shown_as_text(tab: Tab, site: Site) -> None:
    dialogs: list[str] = []
    tab.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    requested: list[str] = []
    tab.page.on("request", lambda request: requested.append(request.url))
    tab.open()
    tab.configure(max_tokens=8)
    tab.send(XSS)
    tab.figures()
    assert tab.page.locator(".message.user .user-text").inner_text() == XSS

    # A reply with the same markup (and markdown around it) goes through the reply's renderer.
    conversation = {
        "id": "xss",
        "title": "Markup",
        "model": MODEL,
        "system": "",
        "settings": {"temperature": 0, "top_p": 1, "max_tokens": 8},
        "created": 1,
        "updated": 2,
        "messages": [
            {"role": "user", "content": "Show me markup."},
            {
                "role": "assistant",
                "content": f"**Bold** {XSS} [link](javascript:alert(3)) ![pic](/x.png)\n\n"
                f"```html\n{XSS}\n```",
                "reasoning": XSS,
            },
        ],
    }
    path = site.tmp / "xss.json"
    path.write_text(json.dumps({"format": "hearth.conversation", "conversation": conversation}))
    tab.page.get_by_label("Import conversation").set_input_files(path)
    reply = tab.last_reply()
    expect(reply.locator("strong")).to_have_text("Bold")
    expect(reply.locator(".reply")).to_contain_text("<img src=x onerror=alert(1)>")
    expect(reply.locator("pre code")).to_contain_text("<script>alert(2)</script>")
    reply.locator("summary").click()
    expect(reply.locator(".reasoning")).to_contain_text("<script>alert(2)</script>")
    # The code block's copy button copies the code as text.
    tab.page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=site.server.base_url
    )
    reply.get_by_label("Copy code").click()
    expect(reply.get_by_label("Copy code")).to_have_text("Copied")
    assert tab.page.evaluate("navigator.clipboard.readText()") == XSS
    created = tab.page.locator("#messages img, #messages script, #messages iframe").count()
    assert created == 0
    hrefs = reply.locator("a").evaluate_all("(nodes) => nodes.map((n) => n.href)")
    assert not [h for h in hrefs if h.startswith("javascript:")]
    tab.page.wait_for_timeout(300)  # time for a handler, had one been created, to run
    assert dialogs == []
    assert not [url for url in requested if url.endswith(("/x", "/x.png"))]


def _export(tab: Tab, folder: Path, name: str) -> dict[str, Any]:
    with tab.page.expect_download() as download:
        tab.page.get_by_label("Export conversation").click()
    path = folder / name
    download.value.save_as(path)
    exported: dict[str, Any] = json.loads(path.read_text())
    return exported


def test_a_reload_keeps_the_conversation_and_export_then_import_gives_it_back(
    tab: Tab, site: Site
) -> None:
    tab.page.on("dialog", lambda dialog: dialog.accept())  # the delete's confirm
    tab.open()
    tab.configure(max_tokens=12)
    tab.send("My name is Ada. Remember it.")
    first = tab.figures()
    tab.send("What is my name?")
    second = tab.figures()
    # The second request starts with the first's prompt: the server reused its cache.
    assert int(second.group(3)) > int(first.group(3))
    before = tab.messages()
    assert len(before) == 4

    tab.page.reload()
    expect(tab.page.locator(".message")).to_have_count(4)
    assert tab.messages() == before
    expect(tab.page.locator(".conversation.active")).to_contain_text("My name is Ada.")
    expect(tab.page.locator(".figures").last).to_have_text(FIGURES)

    # Renamed in the sidebar, and kept so.
    tab.page.get_by_label("Rename My name is Ada. Remember it.").click()
    title_box = tab.page.get_by_label("Conversation title")
    title_box.fill("About Ada")
    title_box.press("Enter")
    expect(tab.page.locator(".conversation.active")).to_contain_text("About Ada")
    tab.page.reload()
    expect(tab.page.locator(".conversation.active")).to_contain_text("About Ada")

    exported = _export(tab, site.tmp, "export.json")
    assert exported["format"] == "hearth.conversation"
    title = exported["conversation"]["title"]
    assert title == "About Ada"
    tab.page.get_by_label(f"Delete {title}").click()
    expect(tab.page.locator(".conversation")).to_have_count(0)
    expect(tab.page.locator(".message")).to_have_count(0)

    tab.page.get_by_label("Import conversation").set_input_files(site.tmp / "export.json")
    expect(tab.page.locator(".message")).to_have_count(4)
    assert tab.messages() == before
    assert _export(tab, site.tmp, "again.json") == exported
    tab.page.reload()
    expect(tab.page.locator(".conversation")).to_have_count(1)
    assert tab.messages() == before


def test_a_pull_shows_progress_to_100_then_the_model_is_in_the_picker(tab: Tab, site: Site) -> None:
    tab.page.on("dialog", lambda dialog: dialog.accept())
    name = f"hf.co/{SMOL_REPO}:Q4_1"
    tab.open()
    tab.page.get_by_label("Models", exact=True).click()
    tab.page.evaluate(
        """() => {
            window.pullSeen = [];
            const watch = () => {
                const bar = document.querySelector(".progress progress");
                const text = document.querySelector(".progress-text");
                if (bar) window.pullSeen.push([bar.value, text.textContent.trim()]);
                if (!text || !text.textContent.startsWith("100% · Pulled")) {
                    requestAnimationFrame(watch);
                }
            };
            requestAnimationFrame(watch);
        }"""
    )
    tab.page.get_by_label("Model to pull").fill(name)
    tab.page.get_by_role("button", name="Pull", exact=True).click()
    expect(tab.page.locator(".progress-text")).to_have_text(
        f"100% · Pulled {name}", timeout=REPLY_TIMEOUT_MS
    )
    seen: list[list[Any]] = tab.page.evaluate("window.pullSeen")
    values = [value for value, _ in seen]
    assert values == sorted(values) and values[-1] == 100
    # Live progress: frames before the end (Ollama's "pulling manifest" line can come and go
    # between two frames, so it is not looked for).
    assert any(value < 100 for value in values)
    assert any("downloading sha256:" in text for _, text in seen)
    row = tab.page.locator(".models-table tr", has_text=name)
    expect(row).to_contain_text("Q4_1")
    tab.page.get_by_label("Chat", exact=True).click()
    assert name in tab.options()

    # Delete takes it out of the store and the picker.
    with tab.page.expect_response(lambda response: response.url.endswith("/api/tags")):
        tab.page.get_by_label("Models", exact=True).click()
    row.get_by_label(f"Delete {name}").click()
    expect(row).to_have_count(0)
    tab.page.get_by_label("Chat", exact=True).click()
    assert name not in tab.options()

    # A name the hub does not have: the server's words, not a blank page.
    tab.console.expect(r"Failed to load resource: the server responded with a status of 404")
    tab.page.get_by_label("Models", exact=True).click()
    tab.page.get_by_label("Model to pull").fill("hf.co/hearth-test/No-Such-GGUF")
    tab.page.get_by_role("button", name="Pull", exact=True).click()
    expect(tab.page.get_by_role("alert")).to_contain_text("hearth-test/No-Such-GGUF")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    """A server with an API key, serving a reasoning model first (the bundled SmolLM2 with a
    thinking template, which Hearth ends after --reasoning-budget tokens)."""
    tmp = tmp_path_factory.mktemp("web-key")
    thinker = write_reasoning_model(tmp / "smollm2-thinking.gguf")
    args = ["--api-key", KEY, "--model", str(thinker), "--reasoning-budget", "4", "--threads", "1"]
    with start_server(tmp, *args, "--ctx-size", "512", api_key=KEY) as server:
        yield server


def test_with_an_api_key_the_page_asks_for_it_then_works_and_shows_reasoning(
    browser: Browser, keyed_server: HearthServer
) -> None:
    for tab in _open_tab(browser, keyed_server, viewport={"width": 1280, "height": 800}):
        tab.console.expect(r"Failed to load resource: the server responded with a status of 401")
        tab.page.goto(keyed_server.base_url + "/")
        dialog = tab.page.get_by_role("dialog")
        expect(dialog).to_contain_text("API key needed")
        key = dialog.get_by_label("API key", exact=True)
        key.fill("wrong-key")
        key.press("Enter")
        expect(dialog.get_by_role("alert")).to_have_text(
            "The server refused this key: Incorrect API key provided."
        )
        key.fill(KEY)
        dialog.get_by_label("Save API key").click()
        expect(dialog).to_have_count(0)
        assert tab.options()[1:3] == [MODEL, GEMMA_MODEL_ID]
        tab.configure(max_tokens=12)
        tab.send("What is the capital of France?")
        tab.figures()
        # The thinking is in a block above the answer, collapsed.
        reasoning = tab.last_reply().locator("details.reasoning")
        expect(reasoning).not_to_have_attribute("open", "")
        expect(reasoning.locator("summary")).to_have_text("Reasoning")
        reasoning.locator("summary").click()
        assert reasoning.locator(".markdown").inner_text().strip()
        assert "<think>" not in tab.last_reply().inner_text()
        # Kept in the browser: a reload asks nothing.
        tab.page.reload()
        expect(tab.page.get_by_label("Model", exact=True)).to_be_enabled()
        expect(tab.page.get_by_role("dialog")).to_have_count(0)
        expect(tab.page.locator(".message")).to_have_count(2)


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    """A server whose startup model (the bundled SmolLM2) takes images through a tiny random
    projector (tests/server/test_media.py): its answers about them are noise."""
    tmp = tmp_path_factory.mktemp("web-vision")
    projector = write_test_projector(tmp / "mmproj-test.gguf")
    args = ["--mmproj", str(projector), "--threads", "1", "--ctx-size", "1024"]
    with start_server(tmp, *args) as server:
        yield server


def _hand_over(page: Page, how: str, files: list[tuple[str, str, bytes]]) -> None:
    """Pastes files into the message box, or drops them on it, as the browser would."""
    page.evaluate(
        """([how, files]) => {
            const data = new DataTransfer();
            for (const [name, type, encoded] of files) {
                const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
                data.items.add(new File([bytes], name, { type }));
            }
            const box = document.querySelector(".composer textarea");
            const init = { bubbles: true, cancelable: true };
            box.dispatchEvent(how === "paste"
                ? new ClipboardEvent("paste", { ...init, clipboardData: data })
                : new DragEvent("drop", { ...init, dataTransfer: data }));
        }""",
        [how, [[name, kind, base64.b64encode(data).decode()] for name, kind, data in files]],
    )


def test_an_image_attached_on_the_page_goes_with_the_message_and_shows_in_it(
    browser: Browser, vision_server: HearthServer, tmp_path: Path
) -> None:
    red = png(32, 24, lambda x, y: (220, 40, 30))
    blue = png(8, 8, lambda x, y: (20, 40, 220))
    picture = tmp_path / "red.png"
    picture.write_bytes(red)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    big = tmp_path / "big.png"
    big.write_bytes(red + bytes(11 * 1024 * 1024))
    for tab in _open_tab(browser, vision_server, viewport={"width": 1280, "height": 800}):
        tab.open()
        attach = tab.page.get_by_label("Attach image")
        expect(attach).to_be_enabled()
        thumbnails = tab.page.locator(".composer .attachment img")
        note = tab.page.locator(".composer .attach-error")

        # Other kinds of file and images over 10 MiB are refused on the page, in words.
        attach.set_input_files([notes, big])
        expect(note).to_contain_text("notes.txt is not an image the model can take")
        expect(note).to_contain_text("big.png is 11.0 MiB: an image may be at most 10 MiB.")
        expect(thumbnails).to_have_count(0)

        # Picked, pasted and dropped: each shows as a thumbnail, and each can be removed.
        attach.set_input_files(picture)
        expect(note).to_have_count(0)
        _hand_over(tab.page, "paste", [("pasted.png", "image/png", blue)])
        _hand_over(tab.page, "drop", [("dropped.png", "image/png", blue)])
        expect(thumbnails).to_have_count(3)
        assert thumbnails.evaluate_all("(nodes) => nodes.map((n) => n.alt)") == [
            "red.png",
            "pasted.png",
            "dropped.png",
        ]
        tab.page.get_by_label("Remove pasted.png").click()
        tab.page.get_by_label("Remove dropped.png").click()
        expect(thumbnails).to_have_count(1)

        tab.configure(max_tokens=8)
        url = "data:image/png;base64," + base64.b64encode(red).decode()
        with tab.page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
            tab.send("What is in the picture?")
        assert sent.value.post_data_json["messages"] == [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is in the picture?"},
                ],
            }
        ]
        expect(thumbnails).to_have_count(0)
        # The image is in the user's message, drawn; a reply (noise) streams in under it.
        shown = tab.page.locator(".message.user .user-images img")
        expect(shown).to_have_count(1)
        assert shown.get_attribute("src") == url
        assert tab.figures() and tab.messages()[1][1].strip()
        assert shown.evaluate("(img) => img.naturalWidth") == 32
        assert tab.messages()[0] == ("user", "What is in the picture?")
        # Kept in the browser with the conversation.
        tab.page.reload()
        expect(tab.page.locator(".message.user .user-images img")).to_have_attribute("src", url)

        # A model without vision on the same server: attaching is off, and says why.
        tab.page.get_by_label("Model", exact=True).select_option(GEMMA_MODEL_ID)
        expect(attach).to_be_disabled()
        expect(tab.page.locator(".composer .attach")).to_have_attribute(
            "title", f"{GEMMA_MODEL_ID} does not take images (it was not given a vision projector)."
        )


def test_without_a_vision_model_attaching_is_off_and_says_why(tab: Tab, site: Site) -> None:
    tab.open()
    expect(tab.page.get_by_label("Attach image")).to_be_disabled()
    reason = f"{MODEL} does not take images (it was not given a vision projector)."
    expect(tab.page.locator(".composer .attach")).to_have_attribute("title", reason)
    # A pasted image is not taken either: the same words, and nothing attached.
    _hand_over(tab.page, "paste", [("pasted.png", "image/png", png(4, 4, lambda x, y: (0, 0, 0)))])
    expect(tab.page.locator(".composer .attach-error")).to_contain_text(reason)
    expect(tab.page.locator(".composer .attachment")).to_have_count(0)

    # An imported conversation shows only images as the page makes them: data URLs of the kinds
    # the server takes, never an address to load nor an SVG.
    good = "data:image/png;base64," + base64.b64encode(png(2, 2, lambda x, y: (9, 9, 9))).decode()
    svg = "data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()
    away = "https://example.com/x.png"
    conversation = {
        "id": "pictures",
        "title": "Pictures",
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "Look.", "images": [good, away, svg]},
            {"role": "assistant", "content": "Noise.", "images": [good]},
        ],
    }
    path = site.tmp / "pictures.json"
    path.write_text(json.dumps({"format": "hearth.conversation", "conversation": conversation}))
    tab.page.get_by_label("Import conversation").set_input_files(path)
    expect(tab.page.locator(".message")).to_have_count(2)
    images = tab.page.locator("#messages img")
    expect(images).to_have_count(1)
    assert images.get_attribute("src") == good


SCREENSHOT_CONVERSATION = {
    "id": "screenshot",
    "title": "Fibonacci in Python",
    "model": MODEL,
    "system": "",
    "settings": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024},
    "created": 1,
    "updated": 2,
    "messages": [
        {"role": "user", "content": "Write a function that returns the n-th Fibonacci number."},
        {
            "role": "assistant",
            "model": MODEL,
            "reasoning": "An iterative loop keeps it linear and avoids deep recursion.",
            "content": "Here is an iterative version:\n\n```python\ndef fibonacci(n: int) -> int:"
            "\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
            "```\n\nIt runs in **O(n)** time and `O(1)` memory.",
            "figures": {"tokens": 64, "tokensPerSecond": 41.7, "ttftMs": 182, "cached": 0},
        },
    ],
}


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_screenshots(browser: Browser, site: Site, scheme: str, width: int, height: int) -> None:
    """The page in each size and theme, under tests/artifacts/ for anyone to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = {"viewport": {"width": width, "height": height}, "color_scheme": scheme}
    for tab in _open_tab(browser, site.server, **context):
        tab.open()
        path = site.tmp / "screenshot.json"
        path.write_text(
            json.dumps({"format": "hearth.conversation", "conversation": SCREENSHOT_CONVERSATION})
        )
        tab.page.get_by_label("Import conversation").set_input_files(path)
        expect(tab.page.locator(".message")).to_have_count(2)
        expect(tab.page.locator(".conversation")).to_contain_text(["Fibonacci in Python"])
        # Usable at this width: nothing wider than the screen.
        overflow = tab.page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width
        background = tab.page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(255, 255, 255)") == (scheme == "light")
        stem = f"web-{width}x{height}-{scheme}"
        tab.page.screenshot(path=ARTIFACTS / f"{stem}-chat.png")
        if width < 700:
            tab.page.get_by_label("Menu").click()
            expect(tab.page.locator(".sidebar")).to_have_css("transform", "none")
            tab.page.screenshot(path=ARTIFACTS / f"{stem}-sidebar.png")
        tab.page.get_by_label("Models", exact=True).click()
        expect(tab.page.locator(".models-table tbody tr")).to_have_count(2)
        if width < 700:  # the sidebar closed again
            expect(tab.page.locator(".sidebar")).not_to_be_in_viewport()
        tab.page.screenshot(path=ARTIFACTS / f"{stem}-models.png")
        assert (ARTIFACTS / f"{stem}-models.png").stat().st_size > 10_000
