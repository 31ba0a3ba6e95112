"""First run in the browser: the first user (with the setup code from the console), then the line.

While there is no user, every page but this one leads here. The line's page fills [sip] and [screening] from a
profile (a FRITZ!Box in Italy, a provider directly, another router) through screener.config_edit, which checks
the values before it writes; the running service notices the file within a second and registers, and the check
page says in words what the registrar answered.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import login_user

from screener import config_edit, presets, users
from screener.config_edit import PROFILES, EditError
from screener.health import BEAT_FILE, NOT_CONFIGURED, freshest, judge, read_beat_file
from screener.presets import PRESETS
from screener.store import get_sip_status, utcnow
from web import auth, db
from web.security import RateLimiter

bp = Blueprint("setup", __name__, url_prefix="/setup")
OPEN_WITHOUT_USER = frozenset({"setup.first_user", "static", "i18n.set_language"})
CODE_LIMIT, CODE_WINDOW = 5, 60.0  # setup code attempts per address, as for logins
CODE_LIMIT_ALL = 30  # and from every address together: 10^8 codes stay out of reach
CHECK_FOR_S = 30.0  # the check page waits this long for the registrar's answer

PROFILE_TITLES = {
    "fritzbox_it": _l("FRITZ!Box in Italy"),
    "provider": _l("Straight to the provider"),
    "other_router": _l("Another router"),
}
PROFILE_TEXTS = {
    "fritzbox_it": _l("screener becomes an IP phone of your FRITZ!Box. Blocked callers are answered and hung up at "
                      "once (this silences the other phones on a FRITZ!Box), prompts and dashboard are in Italian, "
                      "and the Italian preset blocks 0844 telemarketing and premium-rate callers."),
    "provider": _l("screener registers to your VoIP provider as one more device on your number, beside your "
                   "router. Blocked callers are declined with 603 before the phones ring."),
    "other_router": _l("screener becomes an IP phone of another home router or PBX. Blocked callers are answered "
                       "and hung up at once, which silences the other phones on any router."),
}
FIELD_LABELS = {
    "sip.server": _l("Address of the router or SIP server"),
    "sip.username": _l("User name of the IP phone (SIP account)"),
    "sip.password": _l("Password of the IP phone (SIP account)"),
    "sip.domain": _l("SIP domain (the part after @; empty: the server)"),
    "sip.auth_username": _l("Authentication user, where it differs (TIM: +39 and your number)"),
    "sip.outbound_proxy": _l("Outbound proxy, host:port (only if the provider names one)"),
    "sip.keepalive_interval": _l("Keepalive every how many seconds (keeps the router's NAT open)"),
    "sip.port": _l("Port of the SIP server"),
}
FIELD_HINTS = {
    ("fritzbox_it", "sip.server"): _l("fritz.box or 192.168.178.1"),
    ("fritzbox_it", "sip.username"): _l("as chosen under Telefonia > Dispositivi di telefonia (Telefonie > "
                                        "Telefoniegeräte)"),
    ("provider", "sip.server"): _l("the registrar from the provider's SIP data, e.g. voip.provider.it"),
}


# -- no user yet: only the setup page -------------------------------------------------------------------------


def _require_first_user() -> Response | None:
    if current_app.extensions.get("screener.has_user") or request.endpoint in OPEN_WITHOUT_USER:
        return None
    if request.endpoint is None:
        return None
    if users.has_users(db.session()):
        current_app.extensions["screener.has_user"] = True  # users are never all removed: no need to ask again
        return None
    return redirect(url_for("setup.first_user"), 303)


def _limiters() -> tuple[RateLimiter, RateLimiter]:
    return current_app.extensions["screener.setup_limiters"]  # type: ignore[no-any-return]


@bp.route("/first-user", methods=["GET", "POST"])
def first_user() -> str | Response | tuple[str, int, dict[str, str]]:
    """The first user, made with the setup code printed on the console."""
    s = db.session()
    if users.has_users(s):
        current_app.extensions["screener.has_user"] = True
        return redirect(url_for("auth.login"))
    if request.method == "GET":
        return render_template("setup_first_user.html", login="admin")
    login = request.form.get("login", "").strip()
    per_address, everyone = _limiters()
    key = "addr " + (request.remote_addr or "?")
    wait, stamp = per_address.try_hit([key])
    wait_all, stamp_all = everyone.try_hit(["all"]) if not wait else (0.0, 0.0)
    if wait or wait_all:
        if stamp:
            per_address.forgive([key], stamp)
        body = render_template("setup_first_user.html", login=login,
                               error=_("Too many wrong setup codes. Try again in a minute."))
        return body, 429, {"Retry-After": str(int(max(wait, wait_all)) + 1)}

    def form_error(message: str, field: str) -> tuple[str, int, dict[str, str]]:
        return render_template("setup_first_user.html", login=login, error=message, field=field), 400, {}

    if not users.code_matches(db.data_path(), request.form.get("code", "")):
        return form_error(_("Wrong setup code. It is printed on the console where screener was started "
                            "(make run, screener run or the service log)."), "code")
    per_address.forgive([key], stamp)
    everyone.forgive(["all"], stamp_all)
    password = request.form.get("password", "")
    if not login or len(login) > 64 or any(c.isspace() for c in login):
        return form_error(_("The user name must have 1-64 characters and no spaces."), "login")
    if len(password) < users.MIN_PASSWORD:
        return form_error(_("The password must have at least %(n)d characters.", n=users.MIN_PASSWORD), "password")
    if password != request.form.get("again", ""):
        return form_error(_("The two passwords differ."), "again")
    user = users.save_user(s, login, password)
    s.commit()
    users.clear_code(db.data_path())  # used: it opens nothing any more
    current_app.extensions["screener.has_user"] = True
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang
    login_user(auth.LoginUser(user.id, user.login, auth._registry().create(user)))
    return redirect(url_for("setup.index"))


# -- the line ----------------------------------------------------------------------------------------------


@bp.get("")
def index() -> str:
    """Choose a profile."""
    cfg = db.config()
    return render_template("setup.html", profiles=list(PROFILES), titles=PROFILE_TITLES, texts=PROFILE_TEXTS,
                           configured=not cfg.sip.missing, server=cfg.sip.server)


def _values(profile: str, form: Any | None) -> dict[str, str]:
    """What the form shows: the typed text, else the config's value when it has an account, else the profile's."""
    cfg = db.config()
    p = PROFILES[profile]
    out: dict[str, str] = {}
    for key in p.asks:
        if key == "sip.password":
            out[key] = ""
            continue
        if form is not None:
            out[key] = form.get(key, "")
            continue
        current = getattr(cfg.sip, key.split(".", 1)[1])
        if key == "sip.server" and current and cfg.sip.port != 5060:
            current = f"{current}:{cfg.sip.port}"
        keep = not cfg.sip.missing or key != "sip.server"
        value = current if keep and current not in ("", None) else p.defaults.get(key, current)
        out[key] = "" if value is None else str(value)
    return out


@bp.route("/line/<profile>", methods=["GET", "POST"])
def line(profile: str) -> str | Response | tuple[str, int]:
    """The line's settings for one profile; saved, checked and applied by the running service."""
    if profile not in PROFILES:
        return redirect(url_for("setup.index"))
    cfg = db.config()
    p = PROFILES[profile]

    def page(error: str = "", field: str = "", form: Any | None = None) -> str:
        return render_template("setup_line.html", profile=profile, title=PROFILE_TITLES[profile],
                               text=PROFILE_TEXTS[profile], asks=p.asks, labels=FIELD_LABELS,
                               hints={k: h for (pr, k), h in FIELD_HINTS.items() if pr == profile},
                               values=_values(profile, form), error=error, field=field,
                               has_password=bool(cfg.sip.password), path=cfg.path)

    if request.method == "GET":
        return page()
    if not cfg.path:
        return page(_("screener runs without a config file: there is nothing to write to."), "", request.form), 400
    answers = {k: request.form.get(k, "") for k in p.asks}
    try:
        if not cfg.sip.password and not answers.get("sip.password"):
            raise EditError(_("The password is needed."), "sip.password")
        new = config_edit.edit(cfg.path, config_edit.profile_changes(profile, answers), template=config_edit.EXAMPLE)
    except EditError as e:
        return page(str(e), e.key, request.form), 400
    saved = time.time()
    current_app.extensions["screener.config"] = new
    if p.ui_language:
        session["lang"] = p.ui_language
    presets.apply_configured(db.session(), [n for n in new.screening.presets if n in PRESETS])
    return redirect(url_for("setup.check", t=f"{saved:.3f}"))


def verdict(state: str | None, error: str, running: bool) -> tuple[str, str]:
    """(css class, words) for a registration result."""
    if not running:
        return "failed", _("The SIP service is not running: start it with make run (or screener run).")
    if state == "registered":
        return "registered", _("Registered: screener is now a phone on your line.")
    if state == NOT_CONFIGURED:
        return "pending", _("The SIP service has no account yet: %(e)s.", e=error)
    if state != "failed":
        return "pending", _("Checking the registration…")
    low = error.lower()
    if low.startswith(("no answer from", "cannot resolve", "no local address", "cannot bind")):
        return "failed", _("The registrar was not reached (%(e)s). Check its address, and that this machine and the "
                           "router are on the same network.", e=error)
    if low[:3] in ("401", "403", "407"):
        return "failed", _("The registrar refused the user name or password (%(e)s). Check them against the IP "
                           "phone set up in the router or the provider's SIP data.", e=error)
    if low[:3] == "404":
        return "failed", _("The registrar does not know this user name (%(e)s).", e=error)
    return "failed", _("Registration failed: %(e)s", e=error)


@bp.get("/check")
def check() -> str:
    """What the registrar answered to the settings saved at `t`; reloads itself until there is an answer."""
    try:
        saved = float(request.args.get("t", "0"))
    except ValueError:
        saved = 0.0
    status = freshest(get_sip_status(db.session()), read_beat_file(db.data_path() / BEAT_FILE))
    now = utcnow()
    health = judge(status.state if status else None, status.heartbeat_at if status else None, now)
    fresh = status is not None and status.since is not None and _ts(status.since) >= saved - 0.5
    state = status.state if status is not None and fresh else None
    css, words = verdict(state, (status.last_error or "") if state else "", health.running)
    waited = time.time() - saved
    done = css != "pending" or waited > CHECK_FOR_S
    if css == "pending" and waited > CHECK_FOR_S:
        css, words = "failed", _("No answer from the SIP service within %(n)d seconds: %(w)s", n=int(CHECK_FOR_S),
                                 w=words)
    return render_template("setup_check.html", css=css, words=words, done=done, cfg=db.config())


def _ts(when: datetime) -> float:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def init_app(app: Flask) -> None:
    app.extensions["screener.setup_limiters"] = (RateLimiter(CODE_LIMIT, CODE_WINDOW),
                                                 RateLimiter(CODE_LIMIT_ALL, CODE_WINDOW))
    app.before_request_funcs.setdefault(None, []).insert(0, _require_first_user)
    app.register_blueprint(bp)
