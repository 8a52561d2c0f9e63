"""/docs with Swagger UI served from this package's files, not a CDN: FastAPI's default page
loads its JS and CSS from jsdelivr (fastapi/openapi/docs.py) and is blank without internet."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # swagger-ui-bundle-v2: Swagger UI 5 (OpenAPI 3.1)

STATIC_PREFIX = "/static/swagger-ui"


def install(app: FastAPI, docs_url: str = "/docs") -> None:
    """Mount the assets and the page; create the app with docs_url=None so this one is the only /docs."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=swagger_ui_path), name="swagger-ui")
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} - Swagger UI"

    @app.get(docs_url, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{STATIC_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PREFIX}/favicon-32x32.png",
        )
