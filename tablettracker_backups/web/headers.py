"""Response headers every page, JSON body and download of the blueprints carries."""

from __future__ import annotations

from flask import Response, request


def security_headers(response: Response) -> Response:
    """Headers every page, JSON body and download of the blueprint carries.

    Only added when absent: a host that already chose a value (its own framing policy, a
    stricter cache rule) keeps it. Backup data (every page but the static files) must not be
    kept in a browser or proxy cache, where the next user of a shared computer could find it.
    """
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    # A host CSP with frame-ancestors already decides framing; X-Frame-Options would only
    # contradict it in old browsers.
    if "frame-ancestors" not in headers.get("Content-Security-Policy", ""):
        headers.setdefault("X-Frame-Options", "DENY")
    if not (request.endpoint or "").endswith(".static"):
        headers.setdefault("Cache-Control", "no-store")
    return response
