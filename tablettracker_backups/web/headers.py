"""Response headers every page, JSON body and download of the blueprints carries."""

from __future__ import annotations

from flask import Response, request

#: The pages load their stylesheet and script from this site and have no inline script or
#: style, so nothing else is needed; forms post only here, and no site may frame them.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: Links to other sites carry no URL of the admin pages (ids, filters, job ids); the pages'
#: own "go back" link needs the referrer on this site.
REFERRER_POLICY = "same-origin"


def security_headers(response: Response) -> Response:
    """Headers every page, JSON body and download of the blueprint carries.

    Only added when absent: a host that already chose a value (its own framing policy, a
    stricter cache rule, a CSP of its own) keeps it. Backup data (every page but the static
    files) must not be kept in a browser or proxy cache, where the next user of a shared
    computer could find it.
    """
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    # A host CSP with frame-ancestors already decides framing; X-Frame-Options would only
    # contradict it in old browsers.
    if "frame-ancestors" not in headers.get("Content-Security-Policy", ""):
        headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("Referrer-Policy", REFERRER_POLICY)
    if not (request.endpoint or "").endswith(".static"):
        headers.setdefault("Cache-Control", "no-store")
    return response
