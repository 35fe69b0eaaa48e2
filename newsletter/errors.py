"""The one error tree of the package. Every module raises these; the CLI and the
web app catch them at the edge. This module imports nothing from the package.

    NewsletterError
     ├── ConfigError            bad or missing setting (names the key and file)
     ├── InvalidInput           bad user input (names file/line/field)
     ├── NotFound               a subscriber, issue or article that does not exist
     ├── InvalidToken           a forged, truncated, expired or wrong-purpose link token
     ├── Conflict               an operation that the current state forbids
     └── DeliveryError          raised only by the sending engine
          ├── TransientDeliveryError   4xx reply: retry later
          ├── PermanentDeliveryError   5xx reply for one recipient (replies.judge says whether it bounced)
          ├── RefusedByServer          the replies blame us or our message: the run stopped, nobody bounced
          └── TransportUnavailable     connect/timeout/drop: reconnect and retry
               └── AmbiguousDelivery   no reply after the whole message went out
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Root of every error the tool reports to a person."""


class ConfigError(NewsletterError):
    """A setting is unknown, mistyped or missing."""


class InvalidInput(NewsletterError):
    """Input given by a user (a file, an option, a form field) is not acceptable."""


class NotFound(NewsletterError):
    """The named thing does not exist."""


class InvalidToken(NewsletterError):
    """A link token is forged, truncated, expired or meant for another purpose."""


class Conflict(NewsletterError):
    """The request cannot be done in the current state (e.g. changing a sent issue)."""


class DeliveryError(NewsletterError):
    """A message could not be handed to the mail server."""

    def __init__(self, message: str, *, code: int | None = None, reply: str = "", stage: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply
        self.stage = stage  # the SMTP command answered: "connect", "mail", "rcpt", "data" or ""


class TransientDeliveryError(DeliveryError):
    """The server answered 4xx: try again later."""


class PermanentDeliveryError(DeliveryError):
    """The server answered 5xx for the recipient (bounced only if the reply blames the address)."""


class RefusedByServer(DeliveryError):
    """Most recent replies blame us (blocklist, SPF/DKIM/DMARC, policy) or our message: the
    run stopped so that nobody is bounced for it; the issue resumes once the server accepts."""


class TransportUnavailable(DeliveryError):
    """The connection failed, timed out or dropped: reconnect and retry."""


class AmbiguousDelivery(TransportUnavailable):
    """The whole message went out but its reply never came: the server may have taken it,
    so it is neither retried nor failed (RFC 1047's duplicate-message problem)."""
