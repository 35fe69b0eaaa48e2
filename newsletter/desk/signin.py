"""Signing in and out of the desk.

A wrong password (or an unknown address: the same answer, the same work) counts
against the address and the client; past a few failures each attempt waits longer,
past the limit the form answers 429 until the window has passed.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from newsletter import editors
from newsletter.desk import auth
from newsletter.desk.base import HEADERS, DeskState, Signed, editor_only


class SignIn:
    def __init__(self, state: DeskState) -> None:
        self.state = state

    def _form(
        self,
        request: Request,
        *,
        next_url: str,
        email: str = "",
        error: str = "",
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        cookie, token = self.state.signer.login_cookie()
        response = self.state.page(
            request,
            "admin/login.html",
            signed=None,
            title="Sign in",
            csrf_token=token,
            next_url=next_url,
            email=email,
            error=error,
            status_code=status_code,
            headers=headers,
        )
        self._set_cookie(request, response, auth.LOGIN_COOKIE, cookie, max_age=auth.LOGIN_FORM_MAX_AGE)
        return response

    def _set_cookie(self, request: Request, response: Response, name: str, value: str, *, max_age: int) -> None:
        """A desk cookie: sent only to /admin, never to scripts or other sites, Secure over https."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=auth.COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=self.state.secure(request),
        )

    async def login(self, request: Request) -> Response:
        """GET: the form. POST: check the password, start a session, go to `next` (inside the desk only)."""
        state = self.state
        if request.method != "POST":
            next_url = auth.safe_next(request.query_params.get("next"))
            if await state.signed_in(request) is not None:
                return RedirectResponse(next_url, status_code=303, headers=HEADERS)
            return self._form(request, next_url=next_url)
        form = await request.form()
        email, password = str(form.get("email", "")).strip(), str(form.get("password", ""))
        next_url = auth.safe_next(str(form.get("next", "")))
        nonce = state.signer.login_nonce(request.cookies.get(auth.LOGIN_COOKIE))
        if nonce is None or not auth.same(str(form.get("csrf_token", "")), state.signer.login_token(nonce)):
            return self._form(
                request,
                next_url=next_url,
                email=email,
                status_code=403,
                error="This form is out of date; please sign in again.",
            )
        keys = ("address:" + email.casefold(), "client:" + (request.client.host if request.client else "unknown"))
        wait = state.throttle.retry_after(*keys)
        if wait:
            return self._form(
                request,
                next_url=next_url,
                email=email,
                status_code=429,
                error=f"Too many wrong passwords. Try again in {(wait + 59) // 60} minutes.",
                headers={"Retry-After": str(wait)},
            )
        await asyncio.sleep(state.throttle.delay(*keys))
        editor = await state.db(editors.authenticate, email, password)
        if editor is None:
            state.throttle.failed(*keys)
            return self._form(
                request, next_url=next_url, email=email, status_code=401, error="Wrong address or password."
            )
        state.throttle.succeeded(keys[0])
        response = RedirectResponse(next_url, status_code=303, headers=HEADERS)
        cookie = state.signer.session_cookie(editor.id, editor.session_key)
        self._set_cookie(request, response, auth.SESSION_COOKIE, cookie, max_age=int(state.signer.max_age))
        response.delete_cookie(auth.LOGIN_COOKIE, path=auth.COOKIE_PATH)
        return response

    @editor_only
    async def logout(self, request: Request, signed: Signed) -> Response:
        """End every session of this editor (all their browsers) and go back to the form."""
        await self.state.db(editors.end_sessions, signed.editor.id)
        response = RedirectResponse("/admin/login", status_code=303, headers=HEADERS)
        response.delete_cookie(auth.SESSION_COOKIE, path=auth.COOKIE_PATH)
        return response
