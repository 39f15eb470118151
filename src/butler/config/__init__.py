"""Loading and validating Butler's YAML config file (everything under ``Butler:``).

The layout and key names are upstream Butler's, so an existing config file loads unchanged. Sections of
upstream features this project does not implement are accepted and reported once, so the admin knows they
have no effect; a key that is neither ours nor upstream's is an error, with a suggestion for near misses.
Every key is declared once, in the settings class that carries it (``butler.config.settings``); the
validation tree here is derived from those declarations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from butler.config.declare import UnknownKey, build, explain, leaf_keys, section_of
from butler.config.schema import Key, Section, validate
from butler.config.settings import ENDPOINT_FLAGS, UPSTREAM_SECTIONS, Settings

__all__ = [
    "ENDPOINT_FLAGS",
    "SCHEMA",
    "ConfigError",
    "Settings",
    "UnknownKey",
    "declared_keys",
    "explain_key",
    "load_config",
    "parse_config",
]

#: The whole config file, derived from the settings classes.
SCHEMA = Section(
    keys={"Butler": Key(section_of(Settings), required=True, help="Butler's settings")}, nullable=False
)


class ConfigError(Exception):
    """The config file cannot be used. ``messages`` has one line per problem, each naming the key path."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


def load_config(path: str | Path) -> Settings:
    """Read, validate and convert a Butler config file. Raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        # Read from the file itself, so that YAML's messages name it rather than "<unicode string>".
        with path.open(encoding="utf-8-sig") as stream:
            document = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid YAML: {' '.join(str(exc).split())}"]) from exc
    return parse_config(document, base_dir=path.resolve().parent, source=path)


def parse_config(document: Any, *, base_dir: Path, source: Path | None = None) -> Settings:
    """Validate an already parsed config document. Relative file paths are resolved against ``base_dir``."""
    values, errors = validate(SCHEMA, document, "config file")
    # Messages name keys from the root of the YAML document, as admins read them.
    errors = [e.removeprefix("config file.") for e in errors]
    if errors:
        raise ConfigError(errors)
    present = document["Butler"]
    settings: Settings = build(
        Settings,
        values["Butler"],
        base_dir,
        source=source,
        unsupported_sections=tuple(name for name in present if name in UPSTREAM_SECTIONS),
        notes=tuple(_notes(present, values["Butler"])),
    )
    _check_across_keys(settings)
    return settings


def explain_key(path: str) -> str:
    """What a config key means, its type and default. ``Butler.`` may be left out. Raises UnknownKey."""
    if path.split(".", 1)[0].lower() != "butler":
        path = f"Butler.{path}"
    return explain(SCHEMA, path)


def declared_keys() -> list[str]:
    """The full path of every key Butler reads (sections excluded), in declaration order."""
    return [path for path, _ in leaf_keys(SCHEMA, "")]


def _check_across_keys(settings: Settings) -> None:
    """Rules that tie one key to another."""
    tls = settings.rest.tls
    if tls.enable:
        missing = [name for name in ("cert", "key") if getattr(tls, name) is None]
        if missing:
            raise ConfigError(
                [f"Butler.restServerConfig.tls.{name}: required when tls.enable is true" for name in missing]
            )
    if problems := settings.influx.problems():
        raise ConfigError(problems)
    udp = settings.udp
    if udp.task_port == udp.session_port != 0:
        raise ConfigError(
            [
                "Butler.udpServerConfig.portSessionConnectionEvents: must differ from portTaskFailure "
                f"({udp.task_port}); the two kinds of event need a port each"
            ]
        )


def _notes(present: dict[str, Any], butler: dict[str, Any]) -> list[str]:
    notes = []
    written = present.get("keyValueStore") or {}
    flag = butler["restServerEndpointsEnable"]["keyValueStore"]
    # Upstream's template sets keyValueStore.enable false next to the endpoint flag, and upstream reads only
    # the flag: honouring the switch would turn off the store of every config copied from the template.
    if isinstance(written, dict) and "enable" in written and written["enable"] is not flag:
        state = "on" if flag else "off"
        notes.append(
            f"Butler.keyValueStore.enable is {str(written['enable']).lower()} and has no effect: the "
            f"key-value endpoints are {state} as Butler.restServerEndpointsEnable.keyValueStore says"
        )
    return notes
