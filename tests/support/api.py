"""Edits of a case as a client makes them: the version it was made on in
``If-Match``, never in the body."""
from __future__ import annotations

import re

import requests

_CASE = re.compile(r"(/cases/[^/]+)")


def edit(stack, method: str, path: str, token: str, body: dict | None = None, version: int | None = None,
         **kwargs) -> requests.Response:
    """``path`` under ``/api/v1``, as ``stack.api`` takes it. Without
    ``version``, the case's current ETag is read first (as the same person)."""
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    if version is None:
        read = requests.get(f"{stack.url}/api/v1{_CASE.match(path).group(1)}", headers=headers, timeout=15)
        headers["If-Match"] = read.headers.get("ETag", '"0"')
    else:
        headers["If-Match"] = f'"{version}"'
    if body is not None:
        kwargs["json"] = body
    return requests.request(method, f"{stack.url}/api/v1{path}", headers=headers, timeout=15, **kwargs)
