"""Subscribers on the desk: search and filter, one person's page with their history,
export of everything held about them (GDPR access), and erasure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVarTuple

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, and_, func, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from newsletter import clicks, privacy, subscribers
from newsletter.desk.base import HEADERS, DeskState, Signed, editor_only
from newsletter.errors import InvalidInput, NotFound
from newsletter.models import Category, Event, Subscriber, SubscriberCategory, SubscriberStatus

PAGE = 50
SEARCH_CAP = 1000  # a search finding more shows the first 1,000 matches: narrow it down
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class Query:
    text: str
    status: str
    category: str
    page: int


def _starts(column: SQLColumnExpression[str], prefix: str, postgresql: bool) -> ColumnElement[bool]:
    """`column` starts with `prefix`, as a range an index answers: [prefix, prefix with its last
    character's successor). PostgreSQL compares bytewise (the pattern operators, whose index
    0008 builds), so the range is exact there too, whatever the database's collation."""
    successor = ord(prefix[-1]) + 1
    successor = 0xE000 if 0xD800 <= successor < 0xE000 else min(successor, 0x10FFFF)  # no surrogates
    end = prefix[:-1] + chr(successor)
    if postgresql:
        return and_(column.op("~>=~", is_comparison=True)(prefix), column.op("~<~", is_comparison=True)(end))
    return and_(column >= prefix, column < end)


def _filtered(query: Select[*Ts], q: Query) -> Select[*Ts]:
    if q.status:
        query = query.where(Subscriber.status == SubscriberStatus(q.status))
    if q.category:
        chose = (
            select(SubscriberCategory.subscriber_id)
            .join(Category, Category.id == SubscriberCategory.category_id)
            .where(Category.slug == q.category)
        )
        query = query.where(Subscriber.id.in_(chose))
    return query


def _search(session: Session, q: Query) -> dict[str, Any]:
    if not q.text:
        query = _filtered(select(Subscriber), q)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(session.scalars(query.order_by(Subscriber.email_key).offset((q.page - 1) * PAGE).limit(PAGE)))
        return {"rows": rows, "total": total, "capped": False}
    # An address or a name from its start, each read from its index (in its order) and capped,
    # so a search never reads the whole list; the page is cut from at most 2 × SEARCH_CAP keys.
    postgresql = session.get_bind().dialect.name == "postgresql"
    address = _starts(Subscriber.email_key, q.text.casefold(), postgresql)
    name = _starts(func.lower(Subscriber.name), q.text.lower(), postgresql)
    found: dict[int, str] = {}
    for match in (address, name):
        keys = _filtered(select(Subscriber.id, Subscriber.email_key).where(match), q).limit(SEARCH_CAP + 1)
        found.update((sid, key) for sid, key in session.execute(keys))
    ranked = sorted(found, key=found.__getitem__)
    start = (q.page - 1) * PAGE
    page = ranked[start : start + PAGE]
    rows = sorted(session.scalars(select(Subscriber).where(Subscriber.id.in_(page))), key=lambda sub: sub.email_key)
    return {"rows": rows, "total": min(len(ranked), SEARCH_CAP), "capped": len(ranked) > SEARCH_CAP}


def _person(session: Session, subscriber_id: int) -> dict[str, Any]:
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise NotFound(f"no subscriber {subscriber_id}")
    events = list(session.scalars(select(Event).where(Event.subscriber_id == sub.id).order_by(Event.id.desc())))
    return {
        "sub": sub,
        "events": events,
        "categories": subscribers.category_slugs(session, sub),
        "clicks": clicks.person_clicks(session, sub.id),
    }


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
        return self.state.page(
            request,
            "admin/subscriber.html",
            signed=signed,
            title=data["sub"].email,
            per_subscriber=self.state.settings.tracking.per_subscriber,
            **data,
        )

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
