"""Logging set up the same way in every stage, readable in the KFP UI's log pane.

Every line passes through redact_urls first: a URL with user:password@ in it (an endpoint, a proxy),
logged by any module, shows as https://***@host.
"""

import logging
import sys

from components.common.redact import redact_urls


class RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let the handler report it as logging always does
            return True
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactCredentials())


def print_error(message: str) -> None:
    """`error: <message>` on stderr, URL credentials redacted, in one write: the ranks of a multi-GPU
    run share stderr, and print() writes the text and its newline apart, so two ranks' lines could
    run together."""
    print_line("error", message)


def print_warning(message: str) -> None:
    """`warning: <message>` on stderr, as print_error writes its line."""
    print_line("warning", message)


def print_line(kind: str, message: str) -> None:
    sys.stderr.write(f"{kind}: {redact_urls(message)}\n")
    sys.stderr.flush()
