"""The documentation pages work offline: ``/docs`` and ``/redoc`` reference only the API's own
assets, and the API serves each of them (issue #17)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from neurogate.settings import Settings
from tests.test_api_support import FAST_HASHES

# src/href attributes, and the URLs handed to SwaggerUIBundle/Redoc.init in the inline scripts.
_REFERENCE = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]|Redoc\.init\(['"]([^'"]+)""")

_CONTENT_TYPES = {
    ".js": "javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # Not started: the pages and assets need no database.
    settings = Settings(data_dir=tmp_path_factory.mktemp("docs"))
    return TestClient(create_app(settings, bcrypt_rounds=FAST_HASHES))


def _references(html: str) -> list[str]:
    return [a or b for a, b in _REFERENCE.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_references_only_local_assets_and_each_is_served(
    client: TestClient, page: str
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", response.text), "the page names a host outside the API"

    references = _references(response.text)
    assert "/openapi.json" in references
    assets = [r for r in references if Path(r).suffix in (".js", ".css")]
    assert assets, f"no script or style found in {page}"
    for url in references:
        suffix = Path(url).suffix
        if suffix not in _CONTENT_TYPES:
            continue
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert _CONTENT_TYPES[suffix] in asset.headers["content-type"], url
        assert len(asset.content) > 0, url


def test_swagger_ui_uses_the_bundled_scripts_and_redirect(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "/docs-static/swagger-ui-bundle.js" in html
    assert "/docs-static/swagger-ui.css" in html
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "text/html" in redirect.headers["content-type"]


def test_redoc_uses_the_bundled_script(client: TestClient) -> None:
    html = client.get("/redoc").text
    assert "/docs-static/redoc.standalone.js" in html


def test_pages_are_not_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(paths)
