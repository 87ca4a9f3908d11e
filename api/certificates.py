"""Public certificate routes: the verification page a QR code points at, and locally stored certificate files.

Both are unsigned on purpose: a learner's employer scans the QR code in a browser. Verification answers for
one code only, with that certificate's own holder, course and date as recorded when it was issued (the read
model, through the API's async pool: never a PDF read back, never a connection of its own), and nothing about
other learners. Local files are served only by their object key, which contains the certificate's unguessable
code. Both routes are rate limited per client (api.public).
"""

from __future__ import annotations

import html

from aiohttp import web

from adapters.storage.local import LocalCertificateStore
from api.state import state_of
from content.certificates.codes import normalise_code

routes = web.RouteTableDef()


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def public_page(title: str, body: str, status: int) -> web.Response:
    text = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'></head>"
            "<body style='font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem'>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")
    return web.Response(text=text, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


@routes.get("/verify/{code}")
async def verify(request: web.Request) -> web.Response:
    code = normalise_code(request.match_info["code"][:64])
    found = await state_of(request).store.certificate(code) if code is not None else None
    if code is None or found is None:
        if _wants_json(request):
            return web.json_response({"valid": False}, status=404)
        return public_page("Certificate not found", "<p>No certificate has this code.</p>", 404)
    completed = found["certificate_completed"]
    details = {"valid": True, "code": code, "holder": found["certificate_holder"],
               "course": found["certificate_course"], "completion_date": completed.isoformat() if completed else None}
    if _wants_json(request):
        return web.json_response(details)
    rows = "".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(str(value or '–'))}</dd>"
                   for label, value in (("Holder", details["holder"]), ("Course", details["course"]),
                                        ("Completed", details["completion_date"]), ("Code", code)))
    return public_page("Valid certificate", f"<p>This certificate was issued and is valid.</p><dl>{rows}</dl>", 200)


@routes.get("/certificates/{key:.+}")
async def download(request: web.Request) -> web.StreamResponse:
    settings = state_of(request).settings
    store = LocalCertificateStore(settings.certificate_storage_root, settings.public_base_url)
    try:
        path = store.path(request.match_info["key"])
    except ValueError:
        raise web.HTTPNotFound() from None
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": "application/pdf", "Cache-Control": "private",
                                           "X-Content-Type-Options": "nosniff"})
