"""The English the core writes into rows and errors, translated for display (web/labels.py); the label tables
cover every code the core has."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from werkzeug.exceptions import NotFound

from screener import audio, rules, service
from screener.numbers import parse_caller
from screener.presets import PRESETS
from screener.store import OUTCOMES
from web.labels import CORE_TEXTS, LABELS, core_text, entry_label, http_error, label, rule_text, source_text

NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # a Wednesday, 11:00 in Rome


def _decided(*entries: rules.Rule, number: str = "+390844123456") -> rules.Decision:
    ruleset = rules.RuleSet(tuple(entries), "IT", ZoneInfo("Europe/Rome"), "screen")
    return rules.decide(parse_caller(number, "IT"), ruleset, NOW)


WORKDAYS = rules.make_window("mon-fri", "09:00", "18:00")
# Every kind of text the core writes, made by the core itself where it can be, else as service.py writes it;
# each with the Italian the dashboard shows.
CASES = [
    (_decided().reason, "nessuna regola applicabile: predefinito filtra"),
    (_decided(rules.Rule("block", "+390844*", "0844: market research, advertising and sales calls")).reason,
     "prefisso +390844* nella lista bloccati (0844: ricerche di mercato, pubblicità e vendite)"),
    (_decided(rules.Rule("block", "+390844123456", "Energia (srl)", WORKDAYS)).reason,
     "numero +390844123456 nella lista bloccati (Energia (srl)), negli orari lun-ven 09:00-18:00"),
    (_decided(rules.Rule("screen", "+390844*", "", WORKDAYS)).reason,
     "prefisso +390844* nella lista da filtrare, negli orari lun-ven 09:00-18:00"),
    (_decided(rules.Rule("screen", "class:foreign"), number="+33162000000").reason,
     "numeri esteri nella lista da filtrare"),
    (rules.decide(parse_caller("**610", "IT"), rules.RuleSet(), NOW).reason
     if parse_caller("**610", "IT").internal else "internal call of the home router",
     "chiamata interna del router di casa"),
    ("withheld, but the asserted number is blocked: number +390212345678 on the block list",
     "anonimo, ma il numero dichiarato dall'operatore è bloccato: numero +390212345678 nella lista bloccati"),
    ("phonebook name marked as spam: SPAM Energia", "nome in rubrica segnato come spam: SPAM Energia"),
    ("known contact in the phonebook: Mamma", "contatto noto in rubrica: Mamma"),
    ("refused with 503: more than 16 calls at once", "rifiutata con 503: più di 16 chiamate contemporanee"),
    ("no rule matched: default screen; cannot screen: requires precondition; left ringing; nobody answered "
     "within 60 s: ended with 480",
     "nessuna regola applicabile: predefinito filtra; impossibile filtrare: requires precondition; lasciata "
     "squillare; nessuno ha risposto entro 60 s: chiusa con 480"),
    ("no rule matched: default screen; too many calls screened at once: left ringing (answered elsewhere)",
     "nessuna regola applicabile: predefinito filtra; troppe chiamate filtrate insieme: lasciata squillare "
     "(risposta altrove)"),
    ("too many calls screened at once: left ringing", "troppe chiamate filtrate insieme: lasciata squillare"),
    ("internal error: RuntimeError: boom", "errore interno: RuntimeError: boom"),
    (f"no rule matched: default screen; {audio.SILENT_MESSAGE}",
     "nessuna regola applicabile: predefinito filtra; messaggio muto"),
    ("no rule matched", "nessuna regola applicabile"),
    ("refused with 488: something new", "rifiutata con 488: something new"),
    ("something the service will write one day", "something the service will write one day"),
    # ring-through: the texts as the handler writes them
    ("no rule matched: default screen; " + service._HOUSE_RESULTS["no_answer"].format(timeout=25, code=0),
     "nessuna regola applicabile: predefinito filtra; in casa nessuno ha risposto entro 25 s"),
    (service._HOUSE_RESULTS["busy"].format(timeout=25, code=486), "in casa era occupato (486)"),
    (service._HOUSE_RESULTS["declined"].format(timeout=25, code=603), "in casa hanno rifiutato (603)"),
    (service._HOUSE_RESULTS["failed"].format(timeout=25, code=408),
     "non è stato possibile far squillare i telefoni di casa (408)"),
    ("the house could not be rung: no free media port",
     "non è stato possibile far squillare i telefoni di casa: nessuna porta audio libera"),
    ("the caller hung up while the house rang", "il chiamante ha riattaccato mentre in casa squillava"),
    ("the caller hung up while the household was deciding", "il chiamante ha riattaccato mentre in casa si decideva"),
    ("the household sent it to voicemail", "in casa l’hanno passata alla segreteria"),
    ("the household answered but did not choose", "in casa hanno risposto ma non hanno scelto"),
    ("withheld number: nothing to put on the block list", "numero nascosto: niente da mettere nella lista di blocco"),
    ("too many calls put through at once: voicemail", "troppe chiamate passate alla casa insieme: segreteria"),
    ("too many calls screened at once: put through unscreened",
     "troppe chiamate filtrate insieme: passata alla casa senza filtro"),
    *((service._BRIDGE_ENDS[k], it) for k, it in (
        ("caller", "il chiamante ha riattaccato"), ("household", "in casa hanno riattaccato"),
        ("timeout", "terminata dopo la durata massima della conversazione"),
        ("stopped", "terminata da un arresto del servizio"))),
]


def _error(f: object, *args: object) -> str:
    try:
        f(*args)  # type: ignore[operator]
    except ValueError as e:
        return str(e)
    raise AssertionError("no error")


# the pattern and window errors a list form or an import report shows
ERRORS = [
    (_error(rules.normalize_pattern, "08x4*", "IT"), "un prefisso deve essere fatto di cifre seguite da *"),
    (_error(rules.normalize_pattern, "not a number", "IT"), "non è un numero di telefono, un prefisso"),
    (_error(rules.parse_days, "monday-funday"), "i giorni vanno scritti come lun-ven"),
    (_error(rules.parse_time, "25:00"), "l'ora va scritta come HH:MM"),
    (_error(rules.make_window, "mon", "09:00", ""), "una fascia oraria ha bisogno"),
    ("no number in this row", "nessun numero in questa riga"),
    ("unreadable CSV: line contains NUL", "CSV illeggibile: line contains NUL"),
]


@pytest.fixture
def italian(app: Flask) -> Iterator[Flask]:
    with app.test_request_context(headers={"Accept-Language": "it"}):
        yield app


@pytest.mark.parametrize(("english", "italian_text"), CASES)
def test_reasons_are_translated(italian: Flask, english: str, italian_text: str) -> None:
    assert core_text(english) == italian_text


@pytest.mark.parametrize(("english", "start"), ERRORS)
def test_form_and_import_errors_are_translated(italian: Flask, english: str, start: str) -> None:
    assert core_text(english).startswith(start)


def test_every_core_text_has_a_case() -> None:
    samples = [e for e, _ in CASES] + [e for e, _ in ERRORS]
    for rx, _msg, _parts in CORE_TEXTS:
        assert any(rx.search(s) for s in samples), rx.pattern


@pytest.mark.parametrize(("rule", "italian_text"), [
    ("block +390844*", "blocca +390844*"),
    ("screen class:withheld", "filtra numeri anonimi"),
    ("allow +390212345678 (sat,sun 22:00-06:00)", "consenti +390212345678 (sab,dom 22:00-06:00)"),
    ("block +39089* (daily 20:00-09:00)", "blocca +39089* (tutti i giorni 20:00-09:00)"),
    ("", ""),
])
def test_rules_are_translated(italian: Flask, rule: str, italian_text: str) -> None:
    assert rule_text(rule) == italian_text


@pytest.mark.parametrize(("source", "italian_text"), [
    ("dashboard", "pannello web"), ("csv import", "importazione CSV"), ("import", "importazione CSV"),
    ("verified", "chiamante verificato"), ("preset it", "preimpostazione it"), ("preset:fr", "preimpostazione fr"),
    ("user", "aggiunta a mano"), ("cli", "riga di comando"), ("something else", "something else"),
])
def test_sources_are_translated(italian: Flask, source: str, italian_text: str) -> None:
    assert source_text(source) == italian_text


def test_label_tables_cover_every_code(italian: Flask) -> None:
    assert set(OUTCOMES) <= set(LABELS["outcome"])
    assert set(rules.ACTIONS) == set(LABELS["decision"]) == set(LABELS["list"])
    assert set(rules.CLASSES) == set(LABELS["class"])
    assert set(audio.PROMPT_NAMES) == set(LABELS["prompt"])
    assert set(PRESETS) == set(LABELS["preset"])
    for name, preset in PRESETS.items():
        assert str(LABELS["preset"][name]._args[0]) == preset.title, name  # the table follows the presets
        for e in preset.entries:
            assert entry_label(e.label) != e.label, e.label  # every preset entry's label is translated
    assert label("outcome", "nonsense") == "nonsense" and entry_label("my own words") == "my own words"


def test_error_pages_say_it_in_italian(italian: Flask) -> None:
    assert http_error(NotFound())[1:] == ("Non trovata", "Questa pagina non esiste. Il collegamento può essere "
                                                          "vecchio, o la voce è stata eliminata.")
    assert http_error(NotFound("Mine, already translated."))[2] == "Mine, already translated."
