"""English and Italian: the language comes from the session (set by the switcher) or Accept-Language."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, redirect, request, session
from flask_babel import Babel, get_locale

from web.auth import _safe_next

bp = Blueprint("i18n", __name__)
LANGUAGES = ("en", "it")
babel = Babel()


def select_locale() -> str:
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    return request.accept_languages.best_match(LANGUAGES) or "en"


@bp.post("/language")
def set_language() -> Response:
    """Remember the chosen language in the session and go back where the user was."""
    lang = request.form.get("lang", "")
    if lang in LANGUAGES:
        session["lang"] = lang
    return redirect(_safe_next(request.form.get("next")) or "/")


def init_app(app: Flask) -> None:
    app.config.setdefault("BABEL_DEFAULT_LOCALE", "en")
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", "translations")
    babel.init_app(app, locale_selector=select_locale)
    app.add_template_global(get_locale)
    app.register_blueprint(bp)
