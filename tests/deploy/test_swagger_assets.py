"""/docs must work without internet: every asset it loads is served by the API itself."""

from __future__ import annotations

import re

import httpx

from worker.testing.processes import Processes


def test_docs_page_loads_only_local_assets(procs: Processes) -> None:
    _, url = procs.api()
    with httpx.Client(base_url=url, timeout=10) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", page.text)
        found = [a or b for a, b in urls]
        assert found, page.text
        external = [u for u in found if re.match(r"^(https?:)?//", u)]
        assert not external, f"/docs loads from the internet: {external}"
        for asset_url in found:
            asset = http.get(asset_url)
            assert asset.status_code == 200, asset_url
            assert asset.content, asset_url
        assert "SwaggerUIBundle" in http.get("/static/swagger-ui/swagger-ui-bundle.js").text
