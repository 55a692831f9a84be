"""The scheduled-task endpoint over real HTTP, as cron's curl or a PythonAnywhere task calls it.

pytest-flask's ``live_server`` serves the ``app`` fixture (the demo) from a forked process on a
free port; requests go through a real socket and werkzeug's server, not the test client.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from flask import Flask

from tablettracker_backups.store import BackupStore


def call(url: str, method: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def backups(app: Flask) -> list[str]:
    return BackupStore(app.extensions["tablettracker_backups"].settings).ids()


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_only_post_runs_and_only_with_the_token(app: Flask, live_server: Any, method: str) -> None:
    url = live_server.url("/tasks/backups/run")
    token = app.config["BACKUPS_TASK_TOKEN"]
    status, _headers, _body = call(url, method, token)
    assert status == 405  # no other method changes anything, HEAD included
    status, headers, body = call(url, "POST", token[:-1])
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert token.encode() not in body
    assert backups(app) == []
    status, _headers, body = call(url, "POST", token)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["ok"] is True and backups(app) == [answer["backup"]["id"]]
