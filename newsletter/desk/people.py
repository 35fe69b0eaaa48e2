"""Subscribers on the desk: search and filter, one person's page with their history,
export of everything held about them (GDPR access), and erasure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from newsletter import privacy, subscribers
from newsletter.desk.base import HEADERS, DeskState, Signed, editor_only
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Category, Event, Subscriber, SubscriberCategory, SubscriberStatus

PAGE = 50
SEARCH_CAP = 1000  # a search finding more shows the first 1,000 matches: narrow it down


@dataclass(frozen=True)
class Query:
    text: str
    status: str
    category: str
    page: int


def _search(session: Session, q: Query) -> dict[str, Any]:
    query = select(Subscriber)
    if q.text:
        pattern = f"%{q.text.casefold().replace('%', '').replace('_', '')}%"
        # SQLite's LIKE ignores ASCII case by itself; lower() on every row doubled the search time.
        sqlite = session.get_bind().dialect.name == "sqlite"
        name = Subscriber.name.like(pattern) if sqlite else Subscriber.name.ilike(pattern)
        query = query.where(or_(Subscriber.email_key.like(pattern), name))
    if q.status:
        query = query.where(Subscriber.status == SubscriberStatus(q.status))
    if q.category:
        chose = (
            select(SubscriberCategory.subscriber_id)
            .join(Category, Category.id == SubscriberCategory.category_id)
            .where(Category.slug == q.category)
        )
        query = query.where(Subscriber.id.in_(chose))
    if not q.text:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(session.scalars(query.order_by(Subscriber.email_key).offset((q.page - 1) * PAGE).limit(PAGE)))
        return {"rows": rows, "total": total, "capped": False}
    # A text search reads the table once: the matching ids (up to SEARCH_CAP), then one page of them.
    ids = list(session.scalars(query.with_only_columns(Subscriber.id).limit(SEARCH_CAP + 1)))
    found = list(session.scalars(select(Subscriber).where(Subscriber.id.in_(ids)))) if ids else []
    found.sort(key=lambda sub: sub.email_key)
    start = (q.page - 1) * PAGE
    return {"rows": found[start : start + PAGE], "total": min(len(ids), SEARCH_CAP), "capped": len(ids) > SEARCH_CAP}


def _person(session: Session, subscriber_id: int) -> dict[str, Any]:
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise NotFound(f"no subscriber {subscriber_id}")
    events = list(session.scalars(select(Event).where(Event.subscriber_id == sub.id).order_by(Event.id.desc())))
    return {"sub": sub, "events": events, "categories": subscribers.category_slugs(session, sub)}


class People:
    def __init__(self, state: DeskState) -> None:
        self.state = state

    @editor_only
    async def index(self, request: Request, signed: Signed) -> Response:
        params = request.query_params
        status = params.get("status", "")
        if status and status not in set(SubscriberStatus):
            raise InvalidInput(f"status {status[:20]!r} must be one of {', '.join(SubscriberStatus)}")
        page = int(params.get("page", "1")) if params.get("page", "1").isdigit() else 1
        q = Query(params.get("q", "").strip()[:200], status, params.get("category", ""), max(page, 1))
        found = await self.state.db(_search, q)
        return self.state.page(
            request,
            "admin/subscribers.html",
            signed=signed,
            title="Subscribers",
            q=q,
            statuses=list(SubscriberStatus),
            categories=[(c.slug, c.name) for c in self.state.settings.categories],
            pages=(found["total"] + PAGE - 1) // PAGE,
            **found,
        )

    @editor_only
    async def show(self, request: Request, signed: Signed) -> Response:
        data = await self.state.db(_person, int(request.path_params["id"]))
        return self.state.page(request, "admin/subscriber.html", signed=signed, title=data["sub"].email, **data)

    @editor_only
    async def export(self, request: Request, signed: Signed) -> Response:
        """Everything held about the person, as a JSON download."""
        data = await self.state.db(privacy.export_person, int(request.path_params["id"]))
        body = json.dumps(data, indent=2, ensure_ascii=False)
        return Response(
            body,
            media_type="application/json",
            headers={
                **HEADERS,
                "Content-Disposition": f'attachment; filename="subscriber-{request.path_params["id"]}.json"',
            },
        )

    @editor_only
    async def erase(self, request: Request, signed: Signed) -> Response:
        """Delete the person's data; the form asks to type the address, so no slip erases anyone."""
        form = await request.form()
        sid = int(request.path_params["id"])
        data = await self.state.db(_person, sid)
        typed = str(form.get("confirm", "")).strip().casefold()
        if typed != data["sub"].email_key:
            raise InvalidInput("type the subscriber's address to confirm the erasure; nothing was erased")
        await self.state.db(privacy.erase, sid)
        return RedirectResponse("/admin/subscribers?erased=1", status_code=303, headers=HEADERS)
