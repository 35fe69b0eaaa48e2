"""`POST /webhooks/bounces/<provider>`: bounce and complaint notifications of email providers.

Each provider proves a request is its own in its own way (one module each: `ses`,
`sendgrid`, `postmark`, `mailgun`). The cheap refusals come before the body is read: an
unknown provider gets 404, one left unconfigured in `[bounces]` 403, a declared or
streamed body over `max_message_bytes` 413. A request that fails its provider's check
changes nothing and gets 403. Notifications become `classify.Report`s and go through the
same policy as returned mail, deduplicated by a signed id.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from newsletter.config import Settings
from newsletter.inbound import nonces
from newsletter.inbound.policy import Policy, Tally, apply_report
from newsletter.inbound.webhooks import mailgun, postmark, sendgrid, ses
from newsletter.inbound.webhooks.notifications import MAX_SKEW, Batch, Parser, Refused

__all__ = ["MAX_SKEW", "routes", "sns_string_to_sign"]
log = logging.getLogger(__name__)
PROVIDERS = {"ses": ses.parser, "sendgrid": sendgrid.parser, "postmark": postmark.parser, "mailgun": mailgun.parser}
SETTING = {
    "ses": "ses_certificate",
    "sendgrid": "sendgrid_public_key",
    "postmark": "postmark_username and postmark_password",
    "mailgun": "mailgun_signing_key",
}
sns_string_to_sign = ses.sns_string_to_sign


class TooLarge(Exception):
    """The body is over the cap (declared or as streamed)."""


def routes(settings: Settings, session_factory: sessionmaker[Session]) -> list[Route]:
    """The webhook route for `web.create_app`; raises ConfigError if a key file is unreadable."""
    policy = Policy.from_settings(settings)
    parsers: dict[str, Parser | None] = {name: make(settings) for name, make in PROVIDERS.items()}

    async def endpoint(request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        if provider not in parsers:
            return JSONResponse({"error": f"unknown provider {provider!r}; use one of {', '.join(parsers)}"}, 404)
        parser = parsers[provider]
        if parser is None:
            return JSONResponse({"error": f"{provider} is not configured: set [bounces] {SETTING[provider]}"}, 403)
        try:
            body = await _read_capped(request, policy.max_bytes)
        except TooLarge:
            return JSONResponse({"error": f"notification larger than {policy.max_bytes} bytes"}, 413)
        except ValueError:
            return JSONResponse({"error": "Content-Length is not a number"}, 400)
        try:
            batch = parser(request.headers, body)
            tally = await run_in_threadpool(_apply, session_factory, policy, provider, batch)
        except Refused as exc:
            log.warning("webhook %s refused: %s", provider, exc)
            return JSONResponse({"error": str(exc)}, exc.status)
        return JSONResponse({"applied": sum(tally.applied.values()), "skipped": sum(tally.skipped.values())})

    return [Route("/webhooks/bounces/{provider}", endpoint, methods=["POST"])]


async def _read_capped(request: Request, cap: int) -> bytes:
    """The body, refused before it is read when Content-Length is over `cap`, and cut off as soon
    as the stream passes it (a body may come chunked, with no length at all)."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > cap:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise TooLarge
    return bytes(body)


def _apply(sessions: sessionmaker[Session], policy: Policy, provider: str, batch: Batch) -> Tally:
    tally = Tally()
    with sessions.begin() as session:
        if batch.once and not nonces.use_once(session, f"{provider}:{batch.once}", ttl_seconds=3 * MAX_SKEW):
            raise Refused(403, f"{provider} signature was already used (a replay); nothing changed")
        for n in batch.notifications:
            tally.messages += 1
            apply_report(
                session,
                policy,
                n.report,
                report_id=n.report_id,
                source=f"webhook:{provider}",
                where=f"webhook {provider} {n.report_id}",
                tally=tally,
            )
    return tally
