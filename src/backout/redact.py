"""One redaction helper for everything backout writes where others may read it: logs, incidents,
reports and `--json` output.

Three kinds of secret are hidden:
* values registered at run time — a notification target's `${VAR}` filled from the environment is
  registered by `control.notify` and shown as `${VAR}` again;
* credentials inside URLs: `https://user:pw@host` → `https://user:***@host`, and query parameters
  named like a secret (`?token=…`, `&api_key=…`, `&sig=…`) → `token=***`;
* environment variables named like a secret (`*_TOKEN`, `*_SECRET`, `*PASSWORD*`, `*API_KEY`, …):
  their value is shown as `***` wherever an environment is printed or reported.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"(?i)(secret|token|passw(or)?d|passphrase|credential|api[_-]?key|private[_-]?key|"
                          r"access[_-]?key|signing[_-]?key|signature)")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^/\s@]+)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&;](?:[A-Za-z0-9_.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|sig|"
                           r"signature|auth|key))=)(?P<value>[^&#\s\"']+)", re.IGNORECASE)


def secret_name(name: str) -> bool:
    """True for a variable or field name that holds a secret by its name."""
    return bool(_SECRET_NAME.search(name))


class Redactor(logging.Filter):
    """The registered secrets and the patterns above; also a logging filter that cleans each record."""

    def __init__(self) -> None:
        super().__init__("secrets")
        self.secrets: dict[str, str] = {}  # value → what is shown instead ("${VAR}")
        self._lock = threading.Lock()

    def add(self, value: str, placeholder: str = MASK) -> None:
        if value and len(value) >= 4:  # shorter values would blank out ordinary words
            with self._lock:
                self.secrets[value] = placeholder

    def redact(self, text: str) -> str:
        for value, placeholder in sorted(self.secrets.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(value, placeholder)
        if "://" in text:
            text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        if "=" in text:
            text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:  # a traceback's text can hold the URL too: then it goes as redacted text
            text = logging.Formatter().formatException(record.exc_info)
            if self.redact(text) != text:
                record.exc_text, record.exc_info = self.redact(text), None
        for key, value in list(record.__dict__.items()):  # `extra=` fields
            if isinstance(value, str) and key not in ("msg", "message", "exc_text"):
                if secret_name(key) and key not in _RECORD_ATTRS:
                    setattr(record, key, MASK)
                elif key not in _RECORD_ATTRS:
                    setattr(record, key, self.redact(value))
        return True


_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
REDACTOR = Redactor()


def redact(text: str) -> str:
    """`text` with every known secret hidden."""
    return REDACTOR.redact(text)


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """An environment as it may be shown: secret-named variables as `***`, the rest redacted text."""
    return {k: MASK if secret_name(k) and v else redact(str(v)) for k, v in env.items()}


def redact_data(data: Any, _key: str = "") -> Any:
    """A JSON-like value with every string redacted and every secret-named field masked; used for
    `--json` output, incidents and reports."""
    if isinstance(data, dict):
        return {k: (MASK if isinstance(k, str) and secret_name(k) and isinstance(v, str) and v
                    else redact_data(v, str(k))) for k, v in data.items()}
    if isinstance(data, list | tuple):  # under a secret-named field (a diff's (A, B) pair): each value masked
        return [MASK if _key and secret_name(_key) and isinstance(v, str) and v else redact_data(v)
                for v in data]
    if isinstance(data, str):
        return redact(data)
    return data
