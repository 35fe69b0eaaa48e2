"""Helpers shared by the desk's HTTP and browser tests."""

from __future__ import annotations

import re

import httpx
from sqlalchemy.orm import Session, sessionmaker

from newsletter import editors

EDITOR = "editor@example.com"
PASSWORD = "correct horse battery"


def add_editor(sessions: sessionmaker[Session], email: str = EDITOR, password: str = PASSWORD) -> int:
    with sessions.begin() as s:
        return editors.add(s, email, password).id


def hidden(html: str, name: str) -> str:
    """The value of a hidden form field in a page."""
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name!r} in the page"
    return match.group(1)


def sign_in(
    client: httpx.Client, email: str = EDITOR, password: str = PASSWORD, *, next_url: str | None = None
) -> httpx.Response:
    """Fill in the sign-in form as a browser would (its CSRF token and cookie included)."""
    form = client.get("/admin/login", params={"next": next_url} if next_url else None)
    assert form.status_code == 200, form.text
    return client.post(
        "/admin/login",
        data={
            "email": email,
            "password": password,
            "csrf_token": hidden(form.text, "csrf_token"),
            "next": hidden(form.text, "next"),
        },
    )


def csrf(client: httpx.Client, path: str = "/admin/") -> str:
    """The CSRF token of the signed-in session, from one of its pages."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    return hidden(page.text, "csrf_token")
