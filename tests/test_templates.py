"""Alert templates render as upstream's handlebars.js renders them, byte for byte.

handlebars.js itself (tests/handlebars: the version of the lock file, with upstream's ``eq`` helper) renders
the same templates from the same contexts, and the outputs are compared. tests/handlebars/templates holds
upstream Butler 16.0.4's 20 shipped templates, unchanged.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import butler
from butler.alerts.templates import (
    MAX_DEPTH,
    Template,
    TemplateError,
    compile_template,
    js_number,
    load_template,
)
from butler.errors import BadRequest

HANDLEBARS = Path(__file__).resolve().parent / "handlebars"
#: Upstream's templates, as Butler ships them (unchanged) for its users and its demo.
TEMPLATES = Path(butler.__file__).resolve().parent / "alert_templates"
UPSTREAM = sorted(TEMPLATES.glob("*/*.handlebars"))


Reference = Callable[[list[tuple[str, Any]]], list[dict[str, str]]]


@pytest.fixture(scope="session")
def handlebars_js() -> Reference:
    """Renders (template, context) pairs with handlebars.js: ``{"out": text}`` or ``{"error": message}`` each.

    tests/handlebars holds the packages of its lock file, installed by ``scripts/ensure-test-services``
    (which ``make test`` runs first), so that the test itself needs no network."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: scripts/ensure-test-services installs it")
    locked = json.loads((HANDLEBARS / "package-lock.json").read_text())["packages"]
    try:
        installed = json.loads((HANDLEBARS / "node_modules" / ".package-lock.json").read_text())["packages"]
    except FileNotFoundError:
        installed = {}
    # npm's record of what it installed lists the lock file's packages, without the project itself ("")
    # and without optional ones it skipped.
    wanted = {name: entry for name, entry in locked.items() if name and not entry.get("optional")}
    if {name: entry for name, entry in installed.items() if not entry.get("optional")} != wanted:
        pytest.fail(
            "tests/handlebars/node_modules is not what package-lock.json says: "
            "run scripts/ensure-test-services"
        )

    def render(cases: list[tuple[str, Any]]) -> list[dict[str, str]]:
        request = {"cases": [{"template": t, "context": c} for t, c in cases]}
        done = subprocess.run(
            ["node", "render.js"],
            cwd=HANDLEBARS,
            input=json.dumps(request).encode(),
            capture_output=True,
            check=True,
            timeout=120,
        )
        results: list[dict[str, str]] = json.loads(done.stdout)
        assert len(results) == len(cases)
        return results

    return render


def python_render(text: str, context: Any) -> dict[str, str]:
    """What Butler makes of it, in the shape of the reference's answers."""
    try:
        return {"out": compile_template(text, "case").render(context)}
    except TemplateError as e:
        return {"error": str(e)}


def first_difference(got: str, want: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
    )
    near = slice(max(0, at - 60), at + 60)
    return f"first difference at {at}:\n  got  {got[near]!r}\n  want {want[near]!r}"


# --- contexts ---------------------------------------------------------------------------------------------


def times(prefix: str, utc: str) -> dict[str, str]:
    local = "Monday, January 15, 2024 at 11:30:00 AM Central European Standard Time"
    return {
        f"{prefix}TimeUTC": utc,
        f"{prefix}TimeLocal1": "2024-01-15 11:30:00",
        f"{prefix}TimeLocal2": "1/15/2024, 11:30 AM",
        f"{prefix}TimeLocal3": "Jan 15, 2024, 11:30:00 AM",
        f"{prefix}TimeLocal4": local,
        f"{prefix}TimeLocal5": local,
    }


TASK_ID = "f1e2d3c4-0000-1111-2222-333344445555"
APP_ID = "a1b2c3d4-aaaa-bbbb-cccc-ddddeeeeffff"

#: A failed reload with every field of upstream's reload templates, plus the service and preload ones.
FAILED_RELOAD: dict[str, Any] = {
    "hostName": "sense1.corp.local",
    "host": "sense1.corp.local",
    "user": "INTERNAL\\sa_scheduler",
    "taskName": "Reload Sales",
    "taskId": TASK_ID,
    "tasId": TASK_ID,
    "taskCustomProperties": [
        {"name": "Butler_FailedAlertEnableEmail", "value": "Yes"},
        {"name": "Owner", "value": "Sales & Ops"},
    ],
    "taskTags": ["butler", "prod"],
    "taskIsManuallyTriggered": False,
    "taskIsPartialReload": False,
    "taskMaxRetries": 0,
    "taskModifiedByUsername": "DOMAIN\\admin",
    "taskModifiedDate": "2024-01-10T08:00:00.000Z",
    "taskSessionTimeout": 1440,
    "taskNextExecution": "Never",
    "appName": "Sales <2024>",
    "appId": APP_ID,
    "appUrl": f"https://sense/virt/sense/app/{APP_ID}",
    "appDescription": 'Sales app, "daily"',
    "appFileSize": 1234567,
    "appLastSuccessfulReload": "2024-01-14T10:00:00.000Z",
    "appLastModifiedDate": "2024-01-14T10:00:00.000Z",
    "appLastModifiedByUserName": "DOMAIN\\dev",
    "appPublishTime": "2023-12-01T09:00:00.000Z",
    "appPublished": True,
    "appStreamName": "Everyone",
    "appCustomProperties": [{"name": "Area", "value": "Sales"}],
    "appTags": ["finance", "daily"],
    "logTimeStamp": "2024-01-15 10:31:00,123",
    "logLevel": "ERROR",
    "logMessage": "Max retries reached",
    "executingNodeName": "sense1",
    "executionDuration": {"hours": 0, "minutes": 1, "seconds": 5},
    "executionStartTime": times("start", "2024-01-15T10:30:00.000Z"),
    "executionStopTime": times("stop", "2024-01-15T10:31:05.000Z"),
    "executionStatusNum": 8,
    "executionStatusText": "FinishedFail",
    "executionDetails": [
        {
            "timestampUTC": "2024-01-15T10:30:00.000Z",
            "timestampLocal1": "2024-01-15 11:30:00",
            "timestampLocal2": "1/15/2024",
            "message": "Changing task state from NeverStarted to Triggered",
            "detailsType": 2,
        },
        {
            "timestampUTC": "2024-01-15T10:31:05.000Z",
            "timestampLocal1": "2024-01-15 11:31:05",
            "timestampLocal2": "1/15/2024",
            "message": "Changing task state from Started to FinishedFail",
            "detailsType": 2,
        },
    ],
    "executionDetailsConcatenated": (
        "2024-01-15T10:30:00.000Z\\tTriggered\\n2024-01-15T10:31:05.000Z\\tFailed\\n"
    ),
    "executionDetailsText": "N/A",
    "scriptLogSize": 4321,
    "scriptLogSizeRows": 120,
    "scriptLogSizeCharacters": 4300,
    "scriptLogHead": "20240115T103000.000+0100 Execution started.\r\n20240115T103000.001+0100 Version 14.0",
    "scriptLogTail": "20240115T103105.000+0100 Error: Field 'x' not found\r\n20240115T103105.001+0100 Failed",
    "scriptLogHeadCount": 15,
    "scriptLogTailCount": 15,
    "qlikSenseQMC": "https://my.qliksense.net/qmc",
    "qlikSenseHub": "https://my.qliksense.net/hub",
    "genericUrls": [
        {
            "id": "ptarmiganlabs_com",
            "linkText": "Ptarmigan Labs home page",
            "comment": "Link to Ptarmigan Labs home page",
            "url": "https://ptarmiganlabs.com",
        },
        {
            "id": "butler_docs",
            "linkText": "Butler documentation",
            "comment": "Docs",
            "url": "https://butler.ptarmiganlabs.com/docs?a=1&b=2",
        },
        {"id": "other", "linkText": "Other", "comment": "", "url": "https://example.com"},
    ],
    "appOwnerName": "Jane O'Hara",
    "appOwnerUserId": "jane",
    "appOwnerUserDirectory": "CORP",
    "appOwnerEmail": "jane@corp.example",
    "serviceStatus": "STOPPED",
    "servicePrevStatus": "RUNNING",
    "serviceName": "QlikSenseEngineService",
    "serviceDisplayName": "Qlik Sense Engine Service",
    "serviceFriendlyName": "Engine",
    "serviceStartType": "Automatic",
    "serviceExePath": "C:\\Program Files\\Qlik\\Sense\\Engine\\Engine.exe",
    "emailRecipients": {"taskSpecific": ["a@x.example"], "common": ["b@x.example", "c@x.example"]},
    "butlerVersion": "16.0.4",
}

NASTY = (
    "q\"uo'te `tick` =eq <b>bold</b> &amp; & back\\slash\nnew\r\nline \t tab \\n 😀 \U0001d518 é "
    '\u2028 \x00 {{x}} }} {"json": "x"}'
)

#: Values JavaScript prints or tests in its own way, each put in place of the realistic ones.
ODD_VALUES: list[Any] = [
    NASTY,
    "",
    " ",
    "0",
    0,
    1.5,
    1e21,
    -0.0,
    1e-7,
    123456789012,
    2**53 + 1,
    0.1 + 0.2,
    100.0,
    -42,
    True,
    False,
    None,
    {"a": 1},
    {},
    [1, "two", None, [3, 4], True, 1.5],
    [],
    [{"a": 1}],
    ["<&>", "`="],
]


def _contexts() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("failed-reload", FAILED_RELOAD), ("empty", {})]
    for i, value in enumerate(ODD_VALUES):
        strings = {k: value if isinstance(v, str) else v for k, v in FAILED_RELOAD.items()}
        out.append((f"every-string-is-{i}", strings))
        out.append((f"every-field-is-{i}", dict.fromkeys(FAILED_RELOAD, value)))
    missing = {k: v for k, v in FAILED_RELOAD.items() if not k.startswith(("app", "execution", "script"))}
    out.append(("fields-missing", missing))
    shapes = dict(
        FAILED_RELOAD,
        executionStartTime=None,
        executionDuration="x",
        genericUrls={"id": "butler_docs", "2": {"url": "u2"}, "1": {"url": "u1"}},
        executionDetails=[],
        taskTags=[None, True, 1.5, {"a": 1}, [1, [2]]],
        appCustomProperties=None,
    )
    out.append(("other-shapes", shapes))
    nasty = dict(
        FAILED_RELOAD,
        genericUrls=[{"id": "butler_docs", "url": NASTY, "linkText": NASTY}, "str", 5, None, [1, 2], {}],
        executionDetails=[{"message": NASTY, "timestampLocal1": 1.5}, None],
        taskTags="tags",
        appTags={"x": "y", "z": [1]},
        taskCustomProperties=[{"name": {"n": 1}, "value": [NASTY]}],
    )
    out.append(("nasty-lists", nasty))
    return out


CONTEXTS = _contexts()


@pytest.fixture(scope="module")
def shipped_reference(handlebars_js: Reference) -> dict[tuple[str, str], dict[str, str]]:
    """handlebars.js's output for every shipped template and context, in one run of Node."""
    keys = [(str(path), name) for path in UPSTREAM for name, _ in CONTEXTS]
    cases = [(path.read_text(encoding="utf-8"), context) for path in UPSTREAM for _, context in CONTEXTS]
    return dict(zip(keys, handlebars_js(cases), strict=True))


def test_the_upstream_templates_are_all_here() -> None:
    assert len(UPSTREAM) == 20


@pytest.mark.parametrize("path", UPSTREAM, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_shipped_template_renders_as_handlebars_js(
    path: Path, shipped_reference: dict[tuple[str, str], dict[str, str]]
) -> None:
    template = load_template(path)
    checked = 0
    for name, context in CONTEXTS:
        want = shipped_reference[(str(path), name)]
        assert "out" in want, f"handlebars.js failed on {name}: {want}"
        got = template.render(context)
        assert got == want["out"], f"context {name}: {first_difference(got, want['out'])}"
        checked += 1
    assert checked == len(CONTEXTS)


def test_the_realistic_context_fills_the_templates(
    shipped_reference: dict[tuple[str, str], dict[str, str]],
) -> None:
    """The comparison means something: the shipped templates do print the realistic values."""

    def reference(name: str) -> str:
        return shipped_reference[(str(TEMPLATES / name), "failed-reload")]["out"]

    out = reference("email/failed-reload-qseow.handlebars")
    assert "Sales &lt;2024&gt;" in out
    assert "https://butler.ptarmiganlabs.com/docs?a&#x3D;1&amp;b&#x3D;2" in out
    assert "Changing task state from Started to FinishedFail" in out
    slack = reference("slack/failed-reload-qseow.handlebars")
    assert TASK_ID in slack
    teams = reference("teams/failed-reload-qseow.handlebars")
    assert TASK_ID in teams  # through the tasId alias


# --- constructs, one by one -------------------------------------------------------------------------------

CONSTRUCTS: list[tuple[str, str, dict[str, Any]]] = [
    ("escaping", "{{x}}", {"x": "& < > \" ' ` = plain &amp;"}),
    ("raw", "{{{x}}}", {"x": "& < > \" ' ` ="}),
    ("raw-ampersand", "{{&x}}", {"x": "<a>"}),
    ("raw-spaced", "{{{ x }}}", {"x": "<a>"}),
    ("each-data", "{{#each l}}{{@index}}:{{@first}}:{{@last}}:{{this}};{{/each}}", {"l": ["a", "b", "c"]}),
    (
        "each-object",
        "{{#each o}}{{@key}}={{this}}|{{/each}}",
        {"o": {"b": 1, "a": 2, "2": 3, "1": 4, "01": 5}},
    ),
    ("each-else", "{{#each l}}x{{else}}none{{/each}}", {"l": []}),
    ("each-missing", "{{#each nope}}x{{else}}none{{/each}}", {}),
    ("each-string", "{{#each s}}[{{this}}]{{else}}no{{/each}}", {"s": "abc"}),
    ("each-number", "{{#each n}}[{{this}}]{{else}}no{{/each}}", {"n": 5}),
    ("each-as", "{{#each l as |item i|}}{{i}}={{item}} {{/each}}", {"l": ["a", "b"]}),
    (
        "each-nested",
        "{{#each l}}{{#each this}}{{@../index}}.{{@index}}={{this}} {{/each}}{{/each}}",
        {"l": [[1], [2, 3]]},
    ),
    ("each-scope", "{{#each l}}[{{top}}|{{../top}}|{{@root.top}}]{{/each}}", {"l": [1], "top": "T"}),
    (
        "if-truthiness",
        "".join(f"{{{{#if {k}}}}}Y{{{{else}}}}N{{{{/if}}}}" for k in "abcdefghij"),
        {"a": 0, "b": [], "c": {}, "d": "", "e": " ", "f": None, "g": False, "h": -0.0, "i": [0], "j": 0.5},
    ),
    ("if-include-zero", "{{#if a includeZero=true}}Y{{else}}N{{/if}}", {"a": 0}),
    ("if-else-if", "{{#if a}}A{{else if b}}B{{else}}C{{/if}}", {"a": False, "b": 1}),
    ("unless", "{{#unless a}}U{{else}}E{{/unless}}{{#unless b}}U{{/unless}}", {"a": False, "b": 1}),
    ("inverse-section", "{{^a}}inverse{{/a}}{{^b}}no{{/b}}", {"a": False, "b": 1}),
    (
        "section",
        "{{#o}}{{a}}{{/o}}|{{#l}}{{this}}{{/l}}|{{#t}}yes{{/t}}",
        {"o": {"a": 1}, "l": [1, 2], "t": True},
    ),
    ("with", "{{#with o}}{{a}}{{/with}}{{#with nope}}x{{else}}none{{/with}}", {"o": {"a": "A"}}),
    ("lookup", "{{lookup o k}} {{lookup l 1}}", {"o": {"x": "X"}, "k": "x", "l": ["a", "b"]}),
    (
        "whitespace-control",
        "a  {{~x~}}  b\n  {{~#if y~}}\n  Y  \n{{~/if~}}  c {{~! c ~}} d",
        {"x": "X", "y": True},
    ),
    ("comments", "a{{! c }}b{{!-- {{x}} }} --}}c\n  {{! standalone }}\nd\n{{!--\nmulti\n--}}\ne", {"x": 1}),
    ("standalone-lines", "<ul>\n  {{#each l}}\n  <li>{{this}}</li>\n  {{/each}}\n</ul>\n", {"l": [1, 2]}),
    (
        "standalone-crlf",
        "<ul>\r\n  {{#each l}}\r\n  <li>{{this}}</li>\r\n  {{/each}}\r\n</ul>\r\n {{!-- c --}}\r\nz",
        {"l": [1]},
    ),
    ("standalone-else", "{{#if a}}\n yes\n{{else}}\n no\n{{/if}}\n", {"a": False}),
    ("standalone-first-line", "  {{#if a}}  \nA\n  {{/if}}", {"a": True}),
    (
        "eq",
        '{{#each g}}{{#if (eq id "butler_docs")}}D{{else}}-{{/if}}{{/each}}',
        {"g": [{"id": "butler_docs"}, {}]},
    ),
    (
        "eq-types",
        "{{#if (eq n 1)}}a{{/if}}{{#if (eq s 1)}}b{{/if}}{{#if (eq x y)}}c{{/if}}{{#if (eq t true)}}d{{/if}}",
        {"n": 1, "s": "1", "t": True},
    ),
    (
        "eq-objects",
        "{{#if (eq o o)}}same{{/if}}{{#if (eq o p)}}equal{{/if}}{{#if (eq z null)}}null{{/if}}",
        {"o": {"a": 1}, "p": {"a": 1}, "z": None},
    ),
    ("eq-printed", "{{eq a b}} {{eq 1 2}}", {"a": "x", "b": "x"}),
    ("this", "{{this}}|{{this.a}}|{{./a}}|{{this/a}}", {"a": "A"}),
    (
        "paths",
        "{{a.b.c}}|{{a.[b].c}}|{{l.[1]}}|{{l.1}}|{{[my key]}}|{{ä}}|{{a.missing.deep}}",
        {"a": {"b": {"c": "C"}}, "l": ["x", "y"], "my key": 2, "ä": 1},
    ),
    (
        "numbers",
        " ".join(f"{{{{n{i}}}}}" for i in range(12)),
        {
            f"n{i}": v
            for i, v in enumerate(
                [
                    1.5,
                    1e21,
                    1e-7,
                    1.2e-6,
                    123456789012345680000,
                    0.1,
                    -2.5e-10,
                    2**53,
                    100,
                    1.7976931348623157e308,
                    5e-324,
                    -1e300,
                ]
            )
        },
    ),
    (
        "arrays",
        "{{a}}|{{b}}|{{c}}|{{{d}}}|{{d}}",
        {"a": [1, None, True, [2, [3]]], "b": [], "c": [{"x": 1}], "d": [1.5, "<&>"]},
    ),
    ("objects", "{{a}}|{{{a}}}|{{b}}", {"a": {}, "b": {"x": [1]}}),
    ("nulls", "[{{a}}][{{b}}][{{c.d}}][{{e.f.g}}]", {"a": None, "c": None, "e": {"f": None}}),
    ("booleans", "{{a}} {{b}}", {"a": True, "b": False}),
    ("literals", '{{#if "x"}}s{{/if}}{{#if 0}}z{{/if}}{{#if true}}t{{/if}}', {}),
    ("astral-and-controls", "{{x}}", {"x": "😀\U0001d518\u2028\u0000<\r\n\t\\"}),
    ("escaped-mustache", "\\{{x}} {{x}} \\\\{{x}}", {"x": 1}),
    ("tag-spacing", "{{  x  }}{{{ x }}}{{# if x }}y{{/ if }}", {"x": "<"}),
    ("raw-block", "{{{{raw}}}}{{x}}{{{{/raw}}}}", {"x": 1, "raw": True}),
    ("empty-template", "", {"x": 1}),
]


@pytest.fixture(scope="module")
def constructs_reference(handlebars_js: Reference) -> list[dict[str, str]]:
    return handlebars_js([(template, context) for _, template, context in CONSTRUCTS])


@pytest.mark.parametrize("index", range(len(CONSTRUCTS)), ids=[name for name, _, _ in CONSTRUCTS])
def test_construct_renders_as_handlebars_js(index: int, constructs_reference: list[dict[str, str]]) -> None:
    _, template, context = CONSTRUCTS[index]
    want = constructs_reference[index]
    got = python_render(template, context)
    if "error" in want:
        assert "error" in got, f"handlebars.js fails ({want['error']!r}), Butler rendered {got!r}"
    else:
        assert got == want


def test_numbers_print_as_in_javascript(handlebars_js: Reference) -> None:
    """Random doubles of every magnitude, and integers around 2**53, print as JavaScript prints them."""
    rng = random.Random(20240115)
    doubles = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(600)]
    values: list[float | int] = [d for d in doubles if d == d and abs(d) != float("inf")]
    values += [rng.uniform(-1e6, 1e6) for _ in range(200)] + [2**53 + i for i in range(-3, 4)] + [10**25 + 1]
    template = "{{#each n}}{{this}} {{/each}}"
    want = handlebars_js([(template, {"n": values})])[0]["out"]
    assert compile_template(template).render({"n": values}) == want
    assert want.split() == [js_number(v) for v in values]


ERRORS = [
    ("unclosed-block", "{{#if x}}a"),
    ("mismatched-block", "{{#if x}}a{{/each}}"),
    ("unclosed-tag", "a {{x"),
    ("stray-else", "{{else}}"),
]
RENDER_ERRORS = [("partial", "a{{> footer}}b"), ("helper", "{{nope a}}")]


@pytest.fixture(scope="module")
def errors_reference(handlebars_js: Reference) -> dict[str, dict[str, str]]:
    results = handlebars_js([(text, {"a": 1}) for _, text in ERRORS + RENDER_ERRORS])
    return {name: r for (name, _), r in zip(ERRORS + RENDER_ERRORS, results, strict=True)}


@pytest.mark.parametrize(("name", "text"), ERRORS, ids=[n for n, _ in ERRORS])
def test_syntax_error_names_the_source(
    name: str, text: str, errors_reference: dict[str, dict[str, str]]
) -> None:
    assert "error" in errors_reference[name]
    with pytest.raises(TemplateError) as caught:
        compile_template(text, "/etc/butler/failed.handlebars")
    assert "/etc/butler/failed.handlebars" in str(caught.value)
    assert isinstance(caught.value, BadRequest)


@pytest.mark.parametrize(("name", "text"), RENDER_ERRORS, ids=[n for n, _ in RENDER_ERRORS])
def test_render_failure_is_a_template_error(
    name: str, text: str, errors_reference: dict[str, dict[str, str]]
) -> None:
    assert "error" in errors_reference[name]
    template = compile_template(text, "mine.handlebars")
    with pytest.raises(TemplateError, match=r"mine\.handlebars"):
        template.render({"a": 1})


# --- without Node -----------------------------------------------------------------------------------------


def test_escaping_table() -> None:
    out = compile_template("{{x}}|{{{x}}}").render({"x": "&<>\"'`=/\\é"})
    assert out == "&amp;&lt;&gt;&quot;&#x27;&#x60;&#x3D;/\\é|&<>\"'`=/\\é"


def test_values_print_as_javascript_prints_them() -> None:
    template = compile_template("{{a}}|{{b}}|{{c}}|{{d}}|{{e}}|{{f}}|{{g}}|{{h}}")
    context = {
        "a": 1.5,
        "b": True,
        "c": False,
        "d": None,
        "e": {"x": 1},
        "f": [1, [2, None], "x"],
        "g": 1e21,
        "h": 0,
    }
    assert template.render(context) == "1.5|true|false||[object Object]|1,2,,x|1e+21|0"
    assert template.render({}) == "|||||||"


def test_generic_urls_choose_by_eq() -> None:
    template = compile_template('{{#each genericUrls}}{{#if (eq id "butler_docs")}}<{{url}}>{{/if}}{{/each}}')
    assert template.render(FAILED_RELOAD) == "<https://butler.ptarmiganlabs.com/docs?a&#x3D;1&amp;b&#x3D;2>"


def test_source_is_kept() -> None:
    assert compile_template("x", "here").source == "here"
    assert compile_template("x").source == "<template>"


def test_load_template_caches_by_path_and_modification(tmp_path: Path) -> None:
    path = tmp_path / "t.handlebars"
    path.write_bytes(b"one {{x}}\r\n")
    first = load_template(path)
    assert isinstance(first, Template)
    assert first.source == str(path)
    assert load_template(path) is first
    assert first.render({"x": 1}) == "one 1\r\n"  # line ends as written
    path.write_bytes(b"two {{x}}\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = load_template(path)
    assert second is not first
    assert second.render({"x": 2}) == "two 2\n"


def test_load_template_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"missing\.handlebars: cannot be read"):
        load_template(tmp_path / "missing.handlebars")
    with pytest.raises(TemplateError, match="cannot be read"):
        load_template(tmp_path)
    bad = tmp_path / "bad.handlebars"
    bad.write_text("{{#each x}}")
    with pytest.raises(TemplateError, match=r"bad\.handlebars: is not a valid template"):
        load_template(bad)
    invalid_utf8 = tmp_path / "latin1.handlebars"
    invalid_utf8.write_bytes(b"caf\xe9 {{x}}")
    assert load_template(invalid_utf8).render({"x": 1}) == "caf\ufffd 1"


def test_hostile_data_is_bounded() -> None:
    """Deep nesting, huge strings and long lists render quickly, without recursion errors."""
    deep_dict: dict[str, Any] = {}
    node = deep_dict
    for _ in range(100_000):
        node["a"] = {}
        node = node["a"]
    deep_list: list[Any] = []
    items = deep_list
    for _ in range(100_000):
        items.append([])
        items = items[0]
    huge = "<&>\"'`=" * 2_000_000
    template = compile_template(
        "{{d}}|{{l}}|{{d.a.a.a}}|{{#each l}}{{this}}{{/each}}|{{#each many}}{{this}}{{/each}}|{{{h}}}|{{h}}"
    )
    started = time.monotonic()
    out = template.render({"d": deep_dict, "l": deep_list, "h": huge, "many": list(range(50_000))})
    assert time.monotonic() - started < 20
    assert out.startswith("[object Object]||[object Object]||0123")
    assert out.endswith("&lt;&amp;&gt;&quot;&#x27;&#x60;&#x3D;")
    assert len(out) > len(huge) * 6


def test_nesting_deeper_than_templates_reach_is_cut() -> None:
    context: dict[str, Any] = {}
    node = context
    for _ in range(MAX_DEPTH + 5):
        node["a"] = {"v": "x"}
        node = node["a"]
    path = ".".join(["a"] * (MAX_DEPTH - 1))
    assert compile_template("{{" + path + ".v}}").render(context) == "x"
    deeper = ".".join(["a"] * (MAX_DEPTH + 2))
    assert compile_template("{{" + deeper + ".v}}").render(context) == ""


def test_deeply_nested_template_is_an_error() -> None:
    with pytest.raises(TemplateError, match="deep"):
        compile_template("{{#if a}}" * 5000 + "{{/if}}" * 5000, "deep.handlebars")
