"""Texts in the user's language: notification and push titles and bodies are ``Text`` values (a message id and
named parameters), rendered per recipient from the gettext message catalogs under ``server/locale``
(``<language>/LC_MESSAGES/healthmate.po``, read with Babel when first needed; no compile step). A language tag
falls back along its subtags to English: ``es-MX`` → ``es_MX`` → ``es`` → ``en``; an unknown tag is English.
Messages are ``str.format`` patterns with named placeholders; numbers, durations and lists among the parameters
are formatted for the language (Babel's CLDR data), a ``Text`` parameter is rendered in the same language.
How to add a message or a language: docs/operations.md ("Languages")."""

from __future__ import annotations

import gettext
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_timedelta
from babel.lists import format_list
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations
from pydantic import BaseModel, ConfigDict

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "healthmate"
DEFAULT_LANGUAGE = "en"


class Text(BaseModel):
    """A message id and its named parameters, e.g. ``Text("alert.bp_crisis.title")`` or
    ``Text("dose.missed.title", medication=name)``; stored as ``{id, params}`` where it must outlive the call
    (an alert's texts, rendered again for each recipient at each escalation)."""

    model_config = ConfigDict(frozen=True)
    id: str
    params: dict[str, str | int | float | timedelta | Text | list[str | int | float | Text]] = {}

    def __init__(self, id: str | None = None, /, **params: Any) -> None:
        """``Text(id, **params)``; ``Text(id=..., params=...)`` is how pydantic builds one read back."""
        if id is None:
            super().__init__(**params)
        else:
            super().__init__(id=id, params=params)


def sentences(texts: Iterable[str | Text]) -> Text | str:
    """Sentences one after the other, as the language writes them (``text.sentences``: "{first} {rest}")."""
    *head, last = list(texts) or [""]
    for text in reversed(head):
        last = Text("text.sentences", first=text, rest=last)
    return last


@dataclass(frozen=True)
class Language:
    translations: gettext.NullTranslations
    locale: Locale


def render(text: str | Text, language: str | None) -> str:
    """``text`` in ``language`` (a BCP 47 tag as profiles hold it; None: English). A plain string is itself."""
    return text if isinstance(text, str) else _render(text, language_of(language))


def _render(text: Text, lang: Language) -> str:
    return lang.translations.gettext(text.id).format(**{k: _value(v, lang) for k, v in text.params.items()})


def _value(value: Any, lang: Language) -> str:
    if isinstance(value, Text):
        return _render(value, lang)
    if isinstance(value, list):
        return format_list([_value(v, lang) for v in value], style="standard-narrow", locale=lang.locale)
    if isinstance(value, timedelta):
        return format_timedelta(value, format="short", locale=lang.locale)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_decimal(value, locale=lang.locale)
    return str(value)


@cache
def language_of(tag: str | None) -> Language:
    """The catalogs (with their fallbacks) and the CLDR locale for a language tag."""
    try:
        locale = Locale.parse((tag or DEFAULT_LANGUAGE).replace("-", "_"))
    except (ValueError, TypeError, UnknownLocaleError):
        locale = Locale.parse(DEFAULT_LANGUAGE)
    return Language(translations(str(locale)), locale)


@cache
def translations(name: str) -> gettext.NullTranslations:
    """The catalog of ``name`` (``es_MX``) falling back to its parent's (``es``), the last one to English's."""
    parent = name.rpartition("_")[0] or (DEFAULT_LANGUAGE if name != DEFAULT_LANGUAGE else "")
    fallback = translations(parent) if parent else gettext.NullTranslations()
    own = _load(name)
    if own is None:
        return fallback
    own.add_fallback(fallback)
    return own


def _load(name: str) -> Translations | None:
    """Read ``<name>/LC_MESSAGES/healthmate.po`` with Babel; fuzzy and untranslated entries fall back."""
    path = LOCALE_DIR / name / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.is_file():
        return None
    with path.open("rb") as po:
        catalog = read_po(po, locale=name, domain=DOMAIN)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def languages() -> list[str]:
    """The languages that have a catalog."""
    return sorted(p.parent.parent.name for p in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))
