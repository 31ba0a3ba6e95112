"""The `screener` command, run in-process through main() (and twice as a real process): output and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from werkzeug.security import check_password_hash

from screener import cli, store
from screener.csvio import EXPORT_COLUMNS
from screener.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
BAD_PORT = '[sip]\nport = "5060x"\n'
LOOKUP_KEYS = {"input", "e164", "withheld", "valid", "type", "country", "decision", "rule", "reason"}


def _not_a_number(text: str) -> str:
    return ("not a phone number, prefix (digits then *) or class (withheld, invalid, foreign, premium_rate, "
            f"toll_free, shared_cost, mobile, fixed_line, voip, personal_number): {text!r}")


@pytest.fixture
def conf(write_config: Callable[[str], Path]) -> Path:
    return write_config("")


@pytest.fixture
def run(conf: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `screener --config conf ARGS...` in-process; returns (exit status, stdout, stderr)."""

    def run_(*argv: str, config_path: Path | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main(["--config", str(config_path or conf), *argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run_


def _entries(run: Callable[..., tuple[int, str, str]]) -> list[dict]:
    status, out, err = run("list", "show", "--json")
    assert (status, err) == (0, "")
    return json.loads(out)


def _lookup(run: Callable[..., tuple[int, str, str]], *argv: str) -> dict:
    status, out, err = run("lookup", *argv, "--json")
    assert (status, err) == (0, "")
    return json.loads(out)


# --- exit status 2: bad config and bad usage ------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["lookup", "0212345678"],
    ["list", "show"],
    ["list", "add", "block", "0212345678"],
    ["list", "import", "block", "x.csv"],
    ["calls"],
    ["status"],
    ["db", "upgrade"],
    ["init"],
])
def test_bad_config_exits_2_naming_file_and_key(run, write_config, argv: list[str]) -> None:
    path = write_config(BAD_PORT)
    assert run(*argv, config_path=path) == (
        2, "", f'screener: {path}: sip.port must be an integer 1-65535, got "5060x"\n')


def test_missing_config_exits_2(run, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    assert run("list", "show", config_path=path) == (
        2, "", f"screener: {path}: no such file (run `screener init` to create it)\n")


@pytest.mark.parametrize("argv", [
    [],
    ["bogus"],
    ["lookup"],
    ["list"],
    ["list", "add", "grey", "0212345678"],
    ["list", "add", "block"],
    ["list", "import", "block"],
    ["calls", "--limit", "ten"],
    ["user", "add"],
    ["lookup", "0212345678", "--unknown"],
])
def test_bad_usage_exits_2(conf: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(conf), *argv])
    assert exc.value.code == 2
    assert "usage: screener" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["list", "add", "block", "abc"], _not_a_number("abc")),
    (["list", "add", "block", "12a*"], "a prefix must be digits followed by *, got '12a*'"),
    (["list", "add", "block", "*"], "a prefix must be digits followed by *, got '*'"),
    (["list", "remove", "abc"], _not_a_number("abc")),
    (["list", "add", "block", "0212345678", "--from", "09:00"], "a time window needs both from and to"),
    (["list", "add", "block", "0212345678", "--days", "mon-fri", "--to", "18:00"],
     "a time window needs both from and to"),
    (["list", "add", "block", "0212345678", "--from", "25:00", "--to", "26:00"],
     "time must be HH:MM (24-hour), got '25:00'"),
    (["list", "add", "block", "0212345678", "--days", "someday"],
     "days must look like mon-fri or sat,sun, got 'someday'"),
    (["lookup", "0212345678", "--at", "yesterday"], "--at must be an ISO-8601 date and time, got 'yesterday'"),
    (["lookup", "abc"], "not a phone number: 'abc' (e.g. 0212345678, +390212345678, anonymous for a withheld "
     "caller, **9 for an internal call)"),
    (["lookup", "02-12x"], "not a phone number: '02-12x' (e.g. 0212345678, +390212345678, anonymous for a "
     "withheld caller, **9 for an internal call)"),
    (["list", "preset", "xx"], "no preset 'xx'; known: fr, it"),
])
def test_bad_arguments_exit_2_with_the_reason(run, argv: list[str], message: str) -> None:
    assert run(*argv) == (2, "", f"screener: {message}\n")
    assert _entries(run) == []


# --- init -----------------------------------------------------------------------------------------------

def test_init_creates_config_from_the_example_and_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--config", "config.toml", "init"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == ("created config.toml from the example: edit [sip] before `screener run`\n"
                   f"database ready: sqlite:///{tmp_path / 'screener.db'}\n")
    assert (tmp_path / "config.toml").read_text(encoding="utf-8") == (ROOT / "config.example.toml").read_text(
        encoding="utf-8")
    assert (tmp_path / "data").is_dir()
    st = store.Store(f"sqlite:///{tmp_path / 'screener.db'}")
    try:
        assert {"list_entries", "calls", "users", "sip_status"} <= set(inspect(st.engine).get_table_names())
    finally:
        st.dispose()

    # a second run keeps the config it finds
    (tmp_path / "config.toml").write_text('[screening]\ndefault_action = "block"\n', encoding="utf-8")
    assert cli.main(["--config", "config.toml", "init"]) == 0
    assert capsys.readouterr().out == f"database ready: sqlite:///{tmp_path / 'screener.db'}\n"
    assert (tmp_path / "config.toml").read_text(encoding="utf-8") == '[screening]\ndefault_action = "block"\n'


def test_init_applies_the_configured_presets(run, write_config) -> None:
    path = write_config('[screening]\npresets = ["it", "fr"]\n')
    assert run("init", config_path=path)[0] == 0
    assert run("init", config_path=path)[0] == 0  # twice: still one entry per pattern
    entries = _entries(lambda *a: run(*a, config_path=path))
    expected = {e.pattern: (e.list, e.label, f"preset:{n}") for n, p in PRESETS.items() for e in p.entries}
    assert {e["pattern"]: (e["list"], e["label"], e["source"]) for e in entries} == expected
    assert len(entries) == len(expected)


def test_init_never_applies_a_preset_twice(run, write_config) -> None:
    """`make run` runs init before every start: what the user removed or changed stays so."""
    path = write_config('[screening]\npresets = ["it"]\n')
    n = len(PRESETS["it"].entries)
    status, out, _ = run("init", config_path=path)
    assert (status, out.splitlines()[0]) == (0, f"preset it: {n} entries added")
    run("list", "remove", "0844*", config_path=path)
    run("list", "add", "allow", "class:foreign", "--label", "family abroad", "--replace", config_path=path)
    status, out, _ = run("init", config_path=path)
    assert (status, out.startswith("database ready")) == (0, True)
    entries = {e["pattern"]: (e["list"], e["label"]) for e in _entries(lambda *a: run(*a, config_path=path))}
    assert "+390844*" not in entries and entries["class:foreign"] == ("allow", "family abroad")
    # a preset added to the config later is applied once, filling in only what is missing
    path = write_config('[screening]\npresets = ["it", "fr"]\n')
    status, out, _ = run("init", config_path=path)
    assert out.splitlines()[0] == f"preset fr: {len(PRESETS['fr'].entries)} entries added"
    assert "+390844*" not in {e["pattern"] for e in _entries(lambda *a: run(*a, config_path=path))}


# --- lookup ---------------------------------------------------------------------------------------------

def test_lookup_json_of_a_blocked_number(run) -> None:
    assert run("list", "add", "block", "+39 02 1234 5678", "--label", "Ditta") == (
        0, "+390212345678 is on the block list\n", "")
    res = _lookup(run, "0212345678")
    assert LOOKUP_KEYS <= set(res)
    assert {k: res[k] for k in LOOKUP_KEYS} == {
        "input": "0212345678", "e164": "+390212345678", "withheld": False, "valid": True, "type": "fixed_line",
        "country": "IT", "decision": "block", "rule": "+390212345678",
        "reason": "number +390212345678 on the block list (Ditta)"}


# number, the rule to add first (list, pattern) or None, decision, rule, reason, extra values
LOOKUPS = [
    ("0844123456", ("block", "0844*"), "block", "+390844*", "prefix +390844* on the block list",
     {"e164": "+390844123456", "valid": False, "type": "unknown", "country": "IT"}),
    ("+39 0844 123456", ("block", "0844*"), "block", "+390844*", "prefix +390844* on the block list", {}),
    ("0212345678", ("block", "0212345678*"), "block", "+390212345678*",
     "prefix +390212345678* on the block list", {}),
    ("anonymous", ("block", "0844*"), "screen", None, "no rule matched: default screen",
     {"e164": None, "withheld": True, "valid": False, "type": "unknown", "country": None}),
    ("anonymous", ("allow", "withheld"), "allow", "class:withheld", "class:withheld on the allow list",
     {"withheld": True}),
    ("+33612345678", ("screen", "class:foreign"), "screen", "class:foreign", "class:foreign on the screen list",
     {"country": "FR", "type": "mobile"}),
    ("3471234567", None, "screen", None, "no rule matched: default screen", {"type": "mobile"}),
    ("**9", ("block", "class:invalid"), "allow", None, "internal call of the home router", {"e164": None}),
    ('"Kitchen" <sip:**622@fritz.box>', None, "allow", None, "internal call of the home router", {}),
    ("restricted", None, "screen", None, "no rule matched: default screen", {"withheld": True}),
    ("004912345678901234567", None, "screen", None, "no rule matched: default screen",
     {"e164": "+4912345678901234567", "valid": False, "country": "DE"}),
]


@pytest.mark.parametrize(("number", "add", "decision", "rule", "reason", "extra"), LOOKUPS)
def test_lookup(run, number: str, add: tuple[str, str] | None, decision: str, rule: str | None, reason: str,
                extra: dict) -> None:
    if add is not None:
        assert run("list", "add", *add)[0] == 0
    res = _lookup(run, number)
    assert (res["input"], res["decision"], res["rule"], res["reason"]) == (number, decision, rule, reason)
    assert {k: res[k] for k in extra} == extra


def test_lookup_uses_the_configured_default(run, write_config) -> None:
    path = write_config('[screening]\ndefault_action = "allow"\n')
    status, out, _ = run("lookup", "3471234567", "--json", config_path=path)
    assert (status, json.loads(out)["decision"]) == (0, "allow")


@pytest.mark.parametrize(("at", "decision", "at_shown"), [
    ("2026-03-04T12:00", "block", "2026-03-04T12:00:00+01:00"),
    ("2026-03-04T19:00", "screen", "2026-03-04T19:00:00+01:00"),
    # naive --at is local time in the configured zone: 08:30 in Rome is before the window, 17:30 inside it
    ("2026-03-04T08:30", "screen", "2026-03-04T08:30:00+01:00"),
    ("2026-03-04T17:30", "block", "2026-03-04T17:30:00+01:00"),
    # aware --at is converted: 08:30 UTC is 09:30 in Rome, 17:30 UTC is 18:30
    ("2026-03-04T08:30:00+00:00", "block", "2026-03-04T08:30:00+00:00"),
    ("2026-03-04T17:30:00Z", "screen", "2026-03-04T17:30:00+00:00"),
    ("2026-07-01T17:30", "block", "2026-07-01T17:30:00+02:00"),
    ("2026-03-07T12:00", "screen", "2026-03-07T12:00:00+01:00"),
])
def test_lookup_at_with_a_time_window(run, at: str, decision: str, at_shown: str) -> None:
    assert run("list", "add", "block", "3471234567", "--days", "mon-fri", "--from", "09:00", "--to", "18:00") == (
        0, "+393471234567 is on the block list (mon-fri 09:00-18:00)\n", "")
    res = _lookup(run, "3471234567", "--at", at)
    assert (res["decision"], res["at"]) == (decision, at_shown)
    if decision == "block":
        assert res["reason"] == "number +393471234567 on the block list, during mon-fri 09:00-18:00"


def test_lookup_text(run) -> None:
    run("list", "add", "block", "0844*", "--label", "telemarketing")
    status, out, err = run("lookup", "0844123456")
    assert (status, err) == (0, "")
    assert out == ("0844123456: BLOCK — prefix +390844* on the block list (telemarketing)\n"
                   "  number +390844123456  type unknown  country IT  valid no\n")


# --- list -----------------------------------------------------------------------------------------------

def test_list_add_show_and_remove(run) -> None:
    assert run("list", "add", "block", "02 1234 5678", "--label", "Ditta", "--days", "lun-ven",
               "--from", "9:00", "--to", "18:00") == (
        0, "+390212345678 is on the block list (mon-fri 09:00-18:00)\n", "")
    assert run("list", "add", "screen", "class:FOREIGN") == (0, "class:foreign is on the screen list\n", "")
    assert run("list", "add", "allow", "347 123 4567", "--days", "sat,sun") == (
        0, "+393471234567 is on the allow list (sat,sun 00:00-00:00)\n", "")
    entries = _entries(run)
    assert [tuple(e) for e in entries] == [EXPORT_COLUMNS] * 3
    assert entries == [
        {"list": "allow", "pattern": "+393471234567", "label": "", "days": "sat,sun", "from": "00:00",
         "to": "00:00", "source": "user", "hits": 0, "last_hit": ""},
        {"list": "block", "pattern": "+390212345678", "label": "Ditta", "days": "mon-fri", "from": "09:00",
         "to": "18:00", "source": "user", "hits": 0, "last_hit": ""},
        {"list": "screen", "pattern": "class:foreign", "label": "", "days": "", "from": "", "to": "",
         "source": "user", "hits": 0, "last_hit": ""},
    ]
    status, out, err = run("list", "show")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "allow  +393471234567          [sat,sun 00:00-00:00]  (user, 0 hits)",
        "block  +390212345678        Ditta  [mon-fri 09:00-18:00]  (user, 0 hits)",
        "screen class:foreign          (user, 0 hits)",
    ]

    # adding a pattern again moves it, says so, and keeps its label and window
    assert run("list", "add", "allow", "+390212345678") == (0, (
        'was: +390212345678 on the block list as "Ditta", mon-fri 09:00-18:00 (kept its label and time window)\n'
        "+390212345678 is on the allow list (mon-fri 09:00-18:00)\n"), "")
    moved = [e for e in _entries(run) if e["pattern"] == "+390212345678"]
    assert [(e["list"], e["label"], e["days"]) for e in moved] == [("allow", "Ditta", "mon-fri")]

    assert run("list", "remove", "0212345678") == (0, "+390212345678 removed\n", "")
    assert run("list", "remove", "0212345678") == (1, "", "screener: +390212345678 is on no list\n")
    assert run("list", "remove", "0999*") == (1, "", "screener: +390999* is on no list\n")
    assert [e["pattern"] for e in _entries(run)] == ["+393471234567", "class:foreign"]


def test_list_export_to_a_file_and_to_stdout(run, tmp_path: Path) -> None:
    run("list", "add", "block", "0212345678", "--label", "=cmd()", "--days", "mon-fri", "--from", "09:00",
        "--to", "18:00")
    run("list", "add", "screen", "foreign", "--label", "abroad, far")
    out_file = tmp_path / "lists.csv"
    assert run("list", "export", str(out_file)) == (0, "", "")
    text = out_file.read_bytes().decode("utf-8")
    # every cell quoted; a formula neutralised; a plain +number stays a readable number
    assert text == ('"list","pattern","label","days","from","to","source","hits","last_hit"\r\n'
                    '"block","+390212345678","\'=cmd()","mon-fri","09:00","18:00","user","0",""\r\n'
                    '"screen","class:foreign","abroad, far","","","","user","0",""\r\n')
    status, out, err = run("list", "export", "-")
    assert (status, out, err) == (0, text, "")


def test_list_export_then_import_round_trips(run, write_config, tmp_path: Path) -> None:
    for add in (["block", "0844*", "--label", "+telemarketing"], ["block", "0212345678", "--label", "Rossi"],
                ["block", "class:premium_rate"]):
        run("list", "add", *add)
    out_file = tmp_path / "lists.csv"
    run("list", "export", str(out_file))
    other = tmp_path / "other"
    other.mkdir()
    path = other / "config.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{other / "s.db"}"\n', encoding="utf-8")
    assert run("list", "import", "block", str(out_file), config_path=path) == (
        0, "imported 3 entries into the block list\n", "")
    entries = _entries(lambda *a: run(*a, config_path=path))
    assert {(e["pattern"], e["label"], e["source"]) for e in entries} == {
        ("+390844*", "+telemarketing", "import"), ("+390212345678", "Rossi", "import"),
        ("class:premium_rate", "", "import")}


def test_list_import_reports_bad_rows_and_keeps_good_ones(run, tmp_path: Path) -> None:
    f = tmp_path / "rubrica.csv"
    f.write_bytes("Nome;Numero\r\n\r\nRossi;02 1234 5678\r\nBianchi;abc\r\n# a comment\r\nVerdi;0844*\r\n"
                  "Neri;\r\nCaffè;12a*\r\n".encode("cp1252"))
    status, out, err = run("list", "import", "block", str(f))
    assert status == 1
    assert out == "imported 2 entries into the block list; 3 bad rows skipped\n"
    assert err.splitlines() == [
        f"{f}:4: {_not_a_number('abc')}",
        f"{f}:7: no number in this row",
        f"{f}:8: a prefix must be digits followed by *, got '12a*'",
    ]
    assert [(e["list"], e["pattern"], e["label"], e["source"]) for e in _entries(run)] == [
        ("block", "+390212345678", "Rossi", "import"), ("block", "+390844*", "Verdi", "import")]


def test_list_import_of_good_rows_exits_0_and_is_idempotent(run, tmp_path: Path) -> None:
    f = tmp_path / "numbers.csv"
    f.write_text('"Numero";"Nome"\r\n"+39 02 1234 5678";"Rossi"\r\n"347 123 4567";"Bianchi"\r\n"0844*";"tm"\r\n',
                 encoding="utf-8-sig")
    run("list", "add", "screen", "3471234567", "--label", "old")
    for _ in range(2):
        assert run("list", "import", "block", str(f)) == (0, "imported 3 entries into the block list\n", "")
    # moved from the screen list, with the label it had
    assert [(e["list"], e["pattern"], e["label"]) for e in _entries(run)] == [
        ("block", "+390212345678", "Rossi"), ("block", "+390844*", "tm"), ("block", "+393471234567", "old")]


def test_list_import_never_moves_an_allowed_number(run, tmp_path: Path) -> None:
    f = tmp_path / "spam.csv"
    f.write_text("number,label\n0212345678,spam\n3471234567,spam\n0844*,tm\n", encoding="utf-8")
    run("list", "add", "allow", "3471234567", "--label", "mum")
    status, out, err = run("list", "import", "block", str(f))
    assert status == 1
    assert out == "imported 2 entries into the block list; 1 allowed numbers left on the allow list\n"
    assert err == f"{f}:3: +393471234567 is on the allow list: left there (an import never moves an allowed number)\n"
    assert {e["pattern"]: (e["list"], e["label"]) for e in _entries(run)}["+393471234567"] == ("allow", "mum")


def test_list_import_flags_a_dropped_leading_zero(run, tmp_path: Path) -> None:
    f = tmp_path / "excel.csv"
    f.write_text("212345678;Milano\n4930123456;where?\n844123456;tm\n3471234567;mobile\n", encoding="utf-8")
    status, out, err = run("list", "import", "block", str(f))
    assert status == 1  # the ambiguous row is not imported
    assert out == "imported 3 entries into the block list; 1 bad rows skipped; 2 rows to check\n"
    assert err.splitlines() == [
        f"{f}:1: 212345678 read as 02 1234 5678: a spreadsheet had dropped its leading 0 (format the column as text)",
        f"{f}:2: 4930123456 is not a valid number: a spreadsheet dropped its leading 0 (049 3012 3456) or its +"
        " (+4930123456)? Write it in full and import it again",
        f"{f}:3: 844123456 is not a valid number, with or without a leading 0: imported as written; if a spreadsheet"
        " dropped its leading 0, write it with the 0 and import it again",
    ]
    assert [e["pattern"] for e in _entries(run)] == ["+390212345678", "+393471234567", "+39844123456"]


@pytest.mark.parametrize(("data", "what"), [
    (b"PK\x03\x04\x14\x00\x06\x00", "an Excel workbook (.xlsx) or another zip file, not CSV: save it from the "
     'spreadsheet as "CSV UTF-8" or "Unicode text" and import that'),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00", "an Excel 97-2003 workbook (.xls), not CSV: save it from the "
     'spreadsheet as "CSV UTF-8" or "Unicode text" and import that'),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00>\x00", "not a text file: import a list saved as CSV"),
])
def test_list_import_of_a_workbook_is_one_line(run, tmp_path: Path, data: bytes, what: str) -> None:
    f = tmp_path / "lista.xlsx"
    f.write_bytes(data + bytes(range(256)) * 4)
    assert run("list", "import", "block", str(f)) == (1, "", f"screener: {f}: {what}\n")
    assert _entries(run) == []


def test_list_import_of_excel_unicode_text(run, tmp_path: Path) -> None:
    f = tmp_path / "unicode.txt"
    f.write_bytes("Numero\tNome\r\n02 1234 5678\tCaffè Rossi\r\n".encode("utf-16"))
    assert run("list", "import", "block", str(f)) == (0, "imported 1 entries into the block list\n", "")
    assert [(e["pattern"], e["label"]) for e in _entries(run)] == [("+390212345678", "Caffè Rossi")]


# --- list add: moves, replacements, wide prefixes, switching off ----------------------------------------

def test_list_add_over_another_label_needs_replace(run) -> None:
    run("list", "add", "allow", "3471234567", "--label", "mum", "--days", "mon-fri", "--from", "09:00",
        "--to", "18:00")
    assert run("list", "add", "block", "3471234567", "--label", "pest") == (1, "", (
        'screener: +393471234567 on the allow list as "mum", mon-fri 09:00-18:00: nothing changed; add --replace'
        " to replace its label and time window, or leave out --label/--days/--from/--to to keep them\n"))
    assert [(e["list"], e["label"]) for e in _entries(run)] == [("allow", "mum")]
    assert run("list", "add", "block", "3471234567", "--label", "pest", "--replace") == (0, (
        'was: +393471234567 on the allow list as "mum", mon-fri 09:00-18:00\n'
        "+393471234567 is on the block list\n"), "")
    assert [(e["list"], e["label"], e["days"]) for e in _entries(run)] == [("block", "pest", "")]


@pytest.mark.parametrize(("pattern", "canonical", "covers"), [
    ("+39*", "+39*", "every number of +39"),
    ("0*", "+390*", "every number of +39 starting with 0"),
    ("+393*", "+393*", "every number of +39 starting with 3"),
    ("34*", "+3934*", "every number of +39 starting with 34"),
    ("+4*", "+4*", "numbers of several countries"),
])
def test_list_add_of_a_whole_country_or_network_needs_force(run, pattern: str, canonical: str, covers: str) -> None:
    assert run("list", "add", "block", pattern) == (
        1, "", f"screener: {canonical} covers {covers}: add --force if you mean it\n")
    assert _entries(run) == []
    assert run("list", "add", "block", pattern, "--force") == (0, f"{canonical} is on the block list\n", "")


def test_list_add_of_a_narrow_prefix_needs_no_force(run) -> None:
    assert run("list", "add", "block", "347*") == (0, "+39347* is on the block list\n", "")


def test_list_disable_and_enable(run) -> None:
    run("list", "add", "block", "0212345678", "--label", "pest")
    assert _lookup(run, "0212345678")["decision"] == "block"
    assert run("list", "disable", "02 1234 5678") == (0, "+390212345678 on the block list is switched off\n", "")
    assert _lookup(run, "0212345678")["decision"] == "screen"
    assert run("list", "show")[1] == "block  +390212345678        pest  (user, 0 hits)  OFF\n"
    assert run("list", "enable", "0212345678") == (0, "+390212345678 on the block list is switched on\n", "")
    assert _lookup(run, "0212345678")["decision"] == "block"
    assert run("list", "disable", "0299*") == (1, "", "screener: +390299* is on no list\n")
    assert run("list", "disable", "pest") == (2, "", f"screener: {_not_a_number('pest')}\n")


def test_list_add_of_a_switched_off_entry_switches_it_on(run) -> None:
    run("list", "add", "block", "0212345678", "--label", "pest")
    run("list", "disable", "0212345678")
    assert run("list", "add", "block", "0212345678") == (0, (
        'was: +390212345678 on the block list as "pest" (switched off) (kept its label and time window)\n'
        "+390212345678 is on the block list\n"), "")
    assert _lookup(run, "0212345678")["decision"] == "block"


def test_list_import_of_a_missing_file_exits_1(run, tmp_path: Path) -> None:
    f = tmp_path / "missing.csv"
    assert run("list", "import", "block", str(f)) == (1, "", f"screener: {f}: No such file or directory\n")


def test_list_preset(run) -> None:
    n = len(PRESETS["it"].entries)
    assert run("list", "preset", "it") == (0, f"preset it: {n} entries added\n", "")
    assert run("list", "preset", "it") == (
        0, f"preset it: 0 entries added, {n} already had an entry and stay as they are\n", "")
    entries = _entries(run)
    assert len(entries) == n and {e["source"] for e in entries} == {"preset:it"}
    assert _lookup(run, "0844123456")["decision"] == "block"
    assert _lookup(run, "0843123456")["decision"] == "screen"
    assert _lookup(run, "+4930123456")["rule"] == "class:foreign"


# --- calls ----------------------------------------------------------------------------------------------

def _seed_calls(db: store.Store) -> None:
    with db.write() as s:
        s.add_all([
            store.Call(started_at=datetime(2026, 3, 4, 11, 0, tzinfo=UTC), caller_raw="0212345678",
                       e164="+390212345678", name="Rossi", decision="allow", outcome="answered_elsewhere",
                       reason="number +390212345678 on the allow list", rule="allow +390212345678",
                       duration_s=42.0, ended_at=datetime(2026, 3, 4, 11, 0, 42, tzinfo=UTC)),
            store.Call(started_at=datetime(2026, 3, 4, 12, 0, tzinfo=UTC), caller_raw="0844123456",
                       e164="+390844123456", decision="block", outcome="blocked", rule="block +390844*",
                       reason="prefix +390844* on the block list", duration_s=0.0),
            store.Call(started_at=datetime(2026, 7, 1, 8, 0, tzinfo=UTC), caller_raw="anonymous", withheld=True,
                       decision="screen", reason="no rule matched: default screen"),
        ])


def test_calls_json_newest_first(run, db: store.Store) -> None:
    _seed_calls(db)
    status, out, err = run("calls", "--json")
    assert (status, err) == (0, "")
    rows = json.loads(out)
    assert all({"started_at", "caller_raw", "e164", "name", "decision", "outcome", "rule", "reason",
                "duration_s"} <= set(r) for r in rows)
    pick = ("started_at", "caller_raw", "e164", "name", "decision", "outcome", "rule", "duration_s")
    assert [tuple(r[k] for k in pick) for r in rows] == [
        ("2026-07-01T10:00:00+02:00", "anonymous", None, "", "screen", None, "", None),
        ("2026-03-04T13:00:00+01:00", "0844123456", "+390844123456", "", "block", "blocked", "block +390844*", 0.0),
        ("2026-03-04T12:00:00+01:00", "0212345678", "+390212345678", "Rossi", "allow", "answered_elsewhere",
         "allow +390212345678", 42.0),
    ]
    assert rows[2]["reason"] == "number +390212345678 on the allow list"
    assert rows[0]["withheld"] is True

    status, out, _ = run("calls", "--json", "--limit", "2")
    assert (status, [r["caller_raw"] for r in json.loads(out)]) == (0, ["anonymous", "0844123456"])


def test_calls_text(run, db: store.Store) -> None:
    _seed_calls(db)
    status, out, err = run("calls", "--limit", "3")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("2026-07-01T10:00:00  withheld") and "in progress" in lines[0]
    assert lines[2].startswith("2026-03-04T12:00:00  +390212345678") and " 42s " in lines[2]


def test_calls_of_an_empty_log(run) -> None:
    assert run("calls", "--json") == (0, "[]\n", "")


# --- user -----------------------------------------------------------------------------------------------

def _user_hash(db: store.Store, login: str) -> str | None:
    with db.read() as s:
        return s.scalar(select(store.User.password_hash).where(store.User.login == login))


def test_user_add_with_password_stdin(run, db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\r\n"))
    assert run("user", "add", "admin", "--password-stdin") == (0, "user admin saved\n", "")
    first = _user_hash(db, "admin")
    assert first is not None and first.startswith("scrypt:")
    assert check_password_hash(first, "correct horse")
    assert not check_password_hash(first, "correct horse\r")

    # again: the password changes, the user stays one
    monkeypatch.setattr(sys, "stdin", io.StringIO("battery staple\n"))
    assert run("user", "add", "admin", "--password-stdin") == (0, "user admin saved\n", "")
    second = _user_hash(db, "admin")
    assert second is not None and check_password_hash(second, "battery staple")
    assert not check_password_hash(second, "correct horse")
    with db.read() as s:
        assert len(s.scalars(select(store.User)).all()) == 1


@pytest.mark.parametrize("password", ["short\n", "1234567\n", "\n", ""])
def test_user_add_rejects_a_short_password(run, db: store.Store, monkeypatch: pytest.MonkeyPatch,
                                           password: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(password))
    assert run("user", "add", "admin", "--password-stdin") == (
        1, "", "screener: the password must have at least 8 characters\n")
    assert _user_hash(db, "admin") is None


# --- status ---------------------------------------------------------------------------------------------

def test_status_before_the_service_ran(run) -> None:
    assert run("status") == (3, "not running: the SIP service has not run yet\n", "")


@pytest.mark.parametrize(("state", "error", "status", "line"), [
    ("registered", "", 0, "registered since 2026-03-04 12:00:00 CET"),
    ("failed", "403 Forbidden", 1, "failed since 2026-03-04 12:00:00 CET — last error: 403 Forbidden"),
    ("registering", "", 1, "registering since 2026-03-04 12:00:00 CET"),
])
def test_status_prints_the_state(run, db: store.Store, state: str, error: str, status: int, line: str) -> None:
    with db.write() as s:
        store.set_sip_status(s, state, error, now=datetime(2026, 3, 4, 11, 0, tzinfo=UTC))
    assert run("status") == (status, line + "\n", "")


BEAT_SINCE = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)  # 12:00 CET


@pytest.mark.parametrize(("state", "age", "status", "line"), [
    ("registered", 0, 0, "registered since 2026-03-04 12:00:00 CET (pid 4242, heartbeat 0 s ago)"),
    ("registered", 14, 0, "registered since 2026-03-04 12:00:00 CET (pid 4242, heartbeat 14 s ago)"),
    ("registered", 16, 3, "not running: no heartbeat since 2026-03-04 12:05:00 CET (16 s ago, pid 4242)"),
    ("registered", 3600, 3, "not running: no heartbeat since 2026-03-04 12:05:00 CET (3600 s ago, pid 4242)"),
    ("registering", 5, 1, "registering since 2026-03-04 12:00:00 CET (pid 4242, heartbeat 5 s ago)"),
    ("failed", 5, 1, "failed since 2026-03-04 12:00:00 CET (pid 4242, heartbeat 5 s ago) — last error: 403 x"),
    ("failed", 60, 3, "not running: no heartbeat since 2026-03-04 12:05:00 CET (60 s ago, pid 4242)"),
    ("stopped", 0, 3, "not running: stopped since 2026-03-04 12:00:00 CET"),
    ("stopped", 600, 3, "not running: stopped since 2026-03-04 12:00:00 CET"),
])
def test_status_judges_the_heartbeat(run, db: store.Store, monkeypatch: pytest.MonkeyPatch, state: str, age: int,
                                     status: int, line: str) -> None:
    beat = BEAT_SINCE + timedelta(minutes=5)
    with db.write() as s:
        store.write_heartbeat(s, state, "403 x" if state == "failed" else "", BEAT_SINCE, 4242, now=beat)
    monkeypatch.setattr(store, "utcnow", lambda: beat + timedelta(seconds=age))
    assert run("status") == (status, line + "\n", "")


def test_status_warns_of_untrusted_sip(run, db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    beat = BEAT_SINCE + timedelta(minutes=5)
    with db.write() as s:
        store.write_heartbeat(s, "registered", "", BEAT_SINCE, 4242, (57, 3, "198.51.100.7:5060", beat), now=beat)
    monkeypatch.setattr(store, "utcnow", lambda: beat)
    assert run("status") == (0, "registered since 2026-03-04 12:00:00 CET (pid 4242, heartbeat 0 s ago)\n"
                                "warning: 57 SIP message(s) from 3 untrusted address(es) dropped, the last from "
                                "198.51.100.7:5060 at 2026-03-04 12:05:00 CET\n", "")


def test_status_exits_4_when_the_database_cannot_be_read(run, db: store.Store) -> None:
    with db.write() as s:
        s.execute(text("DROP TABLE sip_status"))
    code, out, err = run("status")
    assert (code, err) == (4, "") and out.startswith("unknown: cannot read the database: ")


@pytest.mark.parametrize("lock", ["held", "unreadable"])
def test_status_takes_the_beat_file_when_the_database_cannot_have_it(run, conf: Path, db: store.Store,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     lock: str) -> None:
    # the service beats into its data folder too: a long write lock or a database outage stops only the row's beats
    from screener import config, health

    old = BEAT_SINCE + timedelta(minutes=5)
    with db.write() as s:
        store.write_heartbeat(s, "registered", "", BEAT_SINCE, 4242, now=old)
    now = old + timedelta(seconds=60)
    health.write_beat_file(config.load(conf).data_path / health.BEAT_FILE,
                           health.Beat("registered", BEAT_SINCE, "", now - timedelta(seconds=2), 4242))
    if lock == "unreadable":
        with db.write() as s:
            s.execute(text("DROP TABLE sip_status"))
    monkeypatch.setattr(store, "utcnow", lambda: now)
    assert run("status") == (0, "registered since 2026-03-04 12:00:00 CET (pid 4242, heartbeat 2 s ago)\n", "")


# --- as a real process ----------------------------------------------------------------------------------

def _screener(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "screener.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_process_lookup_after_a_preset(conf: Path, tmp_path: Path) -> None:
    assert _screener("--config", str(conf), "list", "preset", "it", cwd=tmp_path).returncode == 0
    proc = _screener("--config", str(conf), "lookup", "0844 123456", "--json", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    res = json.loads(proc.stdout)
    assert (res["decision"], res["rule"], res["e164"]) == ("block", "+390844*", "+390844123456")


def test_process_bad_config_and_bad_usage(write_config, tmp_path: Path) -> None:
    path = write_config(BAD_PORT)
    proc = _screener("--config", str(path), "status", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f'screener: {path}: sip.port must be an integer 1-65535, got "5060x"\n'
    proc = _screener("--config", str(path), "list", "frobnicate", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr


# --- one-line errors and what an empty result says -------------------------------------------------------

def test_calls_and_list_show_say_when_there_is_nothing(run) -> None:
    assert run("calls") == (0, "no calls logged yet\n", "")
    assert run("list", "show") == (0, "the lists are empty: add a number with `screener list add block NUMBER`, "
                                      "or a preset with `screener list preset it`\n", "")
    assert run("list", "show", "--json") == (0, "[]\n", "")


def test_config_pointing_at_a_folder(run, conf: Path) -> None:
    folder = conf.parent
    assert run("list", "show", config_path=folder) == (
        2, "", f"screener: {folder}: is a folder, not a config file: did you mean `{conf}`?\n")


def test_config_in_latin1_names_the_line(run, conf: Path) -> None:
    line = len(conf.read_bytes().splitlines()) + 2
    conf.write_bytes(conf.read_bytes() + '[sip]\nusername = "citt\xe0"\n'.encode("latin-1"))
    status, out, err = run("calls")
    assert (status, out) == (2, "")
    assert err == f"screener: {conf}:{line}: the file is not UTF-8 (byte 0xe0, perhaps Latin-1): save it as UTF-8\n"


NO_TERMINAL = ("screener: no terminal to ask for the password: give it with --password-file FILE, or on standard "
               "input with --password-stdin\n")


@pytest.mark.parametrize(("argv", "stdin", "result"), [
    ([], "", (2, "", NO_TERMINAL)),
    ([], "correct horse\n", (2, "", NO_TERMINAL)),  # piped without --password-stdin: not read as the password
    (["--password-file", "{dir}/pw"], "", (0, "user admin saved\n", "")),
    (["--password-file", "{dir}/nope"], "", (2, "", "screener: {dir}/nope: No such file or directory\n")),
    (["--password-file", "{dir}"], "", (2, "", "screener: {dir}: Is a directory\n")),
])
def test_user_add_says_how_to_give_the_password(run, db: store.Store, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path, argv: list[str], stdin: str,
                                                result: tuple[int, str, str]) -> None:
    (tmp_path / "pw").write_text("correct horse\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status, out, err = result
    argv = [a.format(dir=tmp_path) for a in argv]
    assert run("user", "add", "admin", *argv) == (status, out, err.format(dir=tmp_path))
    saved = _user_hash(db, "admin")
    assert (saved is not None) == (status == 0)
    assert saved is None or check_password_hash(saved, "correct horse")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_user_add_at_a_terminal_that_ends(run, db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(sys, "stdin", _Terminal(""))
    monkeypatch.setattr(cli.getpass, "getpass", eof)
    assert run("user", "add", "admin") == (2, "", NO_TERMINAL)
    assert _user_hash(db, "admin") is None


def test_user_add_at_a_terminal(run, db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    typed = iter(["correct horse", "correct horse", "correct horse", "horse correct"])
    monkeypatch.setattr(sys, "stdin", _Terminal(""))
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: next(typed))
    assert run("user", "add", "admin") == (0, "user admin saved\n", "")
    assert run("user", "add", "admin") == (1, "", "screener: the passwords differ\n")


@pytest.mark.parametrize(("web", "error", "message"), [
    ("port = 8080", OSError(98, "Address already in use"),
     "web.port 8080 is in use on 127.0.0.1 (another screener, or another program): stop it, or choose another "
     "[web] port"),
    ('host = "192.0.2.7"', OSError(99, "Cannot assign requested address"),
     "web.host 192.0.2.7 is not an address of this machine: use 127.0.0.1, or 0.0.0.0 for every address"),
    ("port = 80", PermissionError(13, "Permission denied"),
     "web.port 80 is below 1024, which only root may use: choose another, e.g. 8080"),
    ('host = "screener.invalid"', __import__("socket").gaierror(-2, "Name or service not known"),
     "web.host screener.invalid is not a known host name or address: use 127.0.0.1, or 0.0.0.0 for every address"),
    ("port = 8080", OSError(24, "Too many open files"),
     "cannot listen on 127.0.0.1:8080 ([web] host, port): Too many open files"),
])
def test_bind_errors_name_the_key(write_config, web: str, error: OSError, message: str) -> None:
    from screener import config

    cfg = config.load(write_config(f"[web]\n{web}\n"))
    err = cli.bind_error(cfg, error)
    assert (str(err), err.status) == (f"{cfg.path}: {message}", 2)


def _held_port() -> tuple[Any, int]:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service_conf(write_config: Callable[[str], Path]) -> Callable[[int], Path]:
    """A config `screener run` starts with: a registrar on loopback that never answers, the dashboard on `port`."""

    def make(port: int) -> Path:
        return write_config(f'[sip]\nserver = "127.0.0.1"\nport = {_free_udp_port()}\nusername = "screener"\n'
                            f'password = "secret-pass"\nsip_port = {_free_udp_port()}\nrtp_port_low = 61000\n'
                            f'rtp_port_high = 61009\n[web]\nport = {port}\n')

    return make


@pytest.mark.parametrize("command", ["web", "run"])
def test_process_dashboard_port_in_use_exits_2(service_conf: Callable[[int], Path], tmp_path: Path,
                                               command: str) -> None:
    held, port = _held_port()
    with held:
        path = service_conf(port)
        proc = _screener("--config", str(path), command, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    # `run` stops: it does not go on without its dashboard
    assert proc.stderr.splitlines()[-1] == (
        f"screener: {path}: web.port {port} is in use on 127.0.0.1 (another screener, or another program): "
        "stop it, or choose another [web] port")
    assert proc.stderr.count("is in use") == 1


@pytest.mark.parametrize("command", ["web", "run"])
def test_process_prints_the_dashboard_url(service_conf: Callable[[int], Path], tmp_path: Path,
                                          command: str) -> None:
    held, port = _held_port()
    held.close()
    proc = subprocess.Popen([sys.executable, "-m", "screener.cli", "--config", str(service_conf(port)), command],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    with proc.stdout:
        try:
            assert proc.stdout.readline() == f"dashboard: http://127.0.0.1:{port}/\n"
        finally:
            proc.terminate()
            # `run` stops cleanly on SIGTERM; `web` alone simply ends
            assert proc.wait(30) == (0 if command == "run" else -15)


CHILD = "import os, sys; fd = int(sys.argv[sys.argv.index('--report-fd') + 1]); "


@pytest.mark.parametrize(("script", "error"), [
    (CHILD + "os.write(fd, b'config.toml: web.port 8080 is in use'); sys.exit(2)", "config.toml: web.port 8080 is in use"),
    (CHILD + "sys.exit(2)", "the dashboard could not start"),
])
def test_web_process_stops_run_when_the_dashboard_cannot_start(cfg: Any, script: str, error: str) -> None:
    import threading

    fatal = threading.Event()
    dashboard = cli.WebProcess(cfg)
    dashboard.argv = [sys.executable, "-c", script]
    dashboard.start(on_fatal=fatal.set)
    assert fatal.wait(30)
    dashboard.stop()
    assert dashboard.error == error


def test_web_process_restarts_a_dashboard_that_served(cfg: Any, tmp_path: Path) -> None:
    """A child that exits later (1: crashed; then 2: its port taken meanwhile) is started again: calls go on."""
    import threading

    starts = tmp_path / "starts"
    script = (CHILD + f"f = open({str(starts)!r}, 'a'); f.write('x'); f.close(); "
              f"n = len(open({str(starts)!r}).read()); os.write(fd, b'busy') if n > 1 else None; "
              "sys.exit(1 if n == 1 else 2)")
    fatal = threading.Event()
    dashboard = cli.WebProcess(cfg)
    dashboard.RESTART_DELAY_S = 0.0
    dashboard.argv = [sys.executable, "-c", script]
    dashboard.start(on_fatal=fatal.set)
    try:
        for _ in range(600):
            if starts.exists() and len(starts.read_text()) >= 3:
                break
            threading.Event().wait(0.05)
    finally:
        dashboard.stop()
    assert len(starts.read_text()) >= 3 and not fatal.is_set() and dashboard.error == ""
