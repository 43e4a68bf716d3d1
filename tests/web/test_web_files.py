"""The page's files and how they are served, in process (no model, no browser): the CSP on
every answer, only the package's own files, `--no-ui`, and the vendored libraries' pins and
licenses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hearth.server.app import create_app
from hearth.server.native.web import CONTENT_SECURITY_POLICY
from hearth.settings import ServeSettings

WEB = Path(__file__).resolve().parents[2] / "src" / "hearth" / "web"
VENDOR_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vendor_web.sh"


@pytest.fixture()
def page_client() -> TestClient:
    # No lifespan: the page's routes need no model.
    return TestClient(create_app(ServeSettings()), base_url="http://127.0.0.1:8642")


def test_the_page_and_its_files_are_served_with_the_csp(page_client: TestClient) -> None:
    page = page_client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    referenced = re.findall(r'(?:src|href)="(/web/[^"]+)"', page.text)
    modules = [f"/web/app/{p.name}" for p in (WEB / "app").glob("*.js")]
    for path in referenced + modules:
        response = page_client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page_client.get("/web/app/main.js").headers["content-type"] == (
        "text/javascript; charset=utf-8"
    )
    assert page_client.get("/web/style.css").headers["content-type"] == "text/css; charset=utf-8"


def test_the_csp_forbids_inline_script_and_other_origins() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY and "http" not in CONTENT_SECURITY_POLICY
    # The page itself holds no inline script or style, nothing from another origin.
    html = (WEB / "index.html").read_text()
    assert all('src="/web/' in tag for tag in re.findall(r"<script[^>]*>", html))
    assert "<style" not in html and "style=" not in html
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html)


def test_only_the_packages_files_are_served(page_client: TestClient) -> None:
    for path in ("/web/../settings.py", "/web/app/../../settings.py", "/web/nope.js", "/web/"):
        response = page_client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_no_ui_leaves_the_page_out() -> None:
    client = TestClient(create_app(ServeSettings(no_ui=True)), base_url="http://127.0.0.1:8642")
    assert client.get("/").status_code == 404
    assert client.get("/web/app/main.js").status_code == 404


def test_the_app_imports_only_its_own_and_the_vendored_modules() -> None:
    for module in (WEB / "app").glob("*.js"):
        for target in re.findall(r'from\s+"([^"]+)"', module.read_text()):
            assert target.startswith("./") or target.startswith("../vendor/"), (module, target)
            assert (module.parent / target).resolve().is_file(), (module, target)


def test_the_vendored_libraries_match_the_pins_and_carry_their_licenses() -> None:
    script = VENDOR_SCRIPT.read_text()
    pins = dict(re.findall(r"^([A-Z]+)=(\S+)$", script, re.MULTILINE))
    versions = dict(
        line.split(" ", 1) for line in (WEB / "vendor" / "VERSIONS").read_text().splitlines()
    )
    assert versions == {
        "preact": pins["PREACT"],
        "htm": pins["HTM"],
        "marked": pins["MARKED"],
        "dompurify": pins["DOMPURIFY"],
        "@highlightjs/cdn-assets": pins["HIGHLIGHT"],
    }
    licenses = {p.name for p in (WEB / "vendor" / "licenses").iterdir()}
    assert licenses == {
        "preact.LICENSE",
        "htm.LICENSE",
        "marked.LICENSE",
        "dompurify.LICENSE",
        "highlight.js.LICENSE",
    }
    # The hooks reach preact by a relative path: the page needs no import map (inline script).
    assert 'from"./preact.module.js"' in (WEB / "vendor" / "hooks.module.js").read_text()
