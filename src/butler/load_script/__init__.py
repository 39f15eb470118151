"""``butler_subs.qvs``: the subs a Qlik load script includes to call Butler's REST API."""

from __future__ import annotations

from importlib import resources

SUBS_FILE = "butler_subs.qvs"


def subs_text() -> str:
    return resources.files("butler.load_script").joinpath(SUBS_FILE).read_text(encoding="utf-8")
