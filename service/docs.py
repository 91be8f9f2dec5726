"""Interactive documentation of /openapi.json at /docs: Swagger UI served from the swagger-ui-bundle package."""
from __future__ import annotations

import mimetypes
from html import escape

from flask import Blueprint, Response, request, url_for
from swagger_ui_bundle import swagger_ui_path

from service.errors import NotFound

bp = Blueprint("docs", __name__)

# Only what the page loads (and the source maps a browser's developer tools ask for); nothing from a CDN.
ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
          "favicon-32x32.png", "favicon-16x16.png",
          "swagger-ui.css.map", "swagger-ui-bundle.js.map", "swagger-ui-standalone-preset.js.map"}
ONE_DAY = 86400

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Profile service: API documentation</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{css}"><link rel="icon" type="image/png" href="{icon}" sizes="32x32">
<style>body {{ margin: 0; }} .topbar {{ display: none; }}</style></head>
<body><div id="swagger-ui"></div>
<script src="{bundle}" charset="utf-8"></script>
<script src="{preset}" charset="utf-8"></script>
<script>
window.onload = function () {{
  window.ui = SwaggerUIBundle({{
    url: "{spec}", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"
  }});
}};
</script></body></html>
"""


@bp.get("/docs")
def docs_page() -> Response:
    def asset(name: str) -> str:
        return escape(url_for("docs.docs_asset", name=name))

    page = PAGE.format(css=asset("swagger-ui.css"), icon=asset("favicon-32x32.png"),
                       bundle=asset("swagger-ui-bundle.js"), preset=asset("swagger-ui-standalone-preset.js"),
                       spec=escape(url_for("openapi.openapi_json")))
    return Response(page, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


@bp.get("/docs/assets/<path:name>")
def docs_asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound("Not found")
    mimetype = "application/json" if name.endswith(".map") else mimetypes.guess_type(name)[0]
    response = Response((swagger_ui_path / name).read_bytes(), mimetype=mimetype)
    response.set_etag(f"{swagger_ui_path.name}-{name}")  # the bundle's version is in the directory's name
    response.cache_control.public = True
    response.cache_control.max_age = ONE_DAY
    return response.make_conditional(request)
