"""Loading Butler config files: upstream's layout loads, broken files are refused with precise messages."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from butler.config import SCHEMA, ConfigError, UnknownKey, explain_key, load_config, parse_config
from butler.config.declare import leaf_keys
from butler.config.settings import (
    ConnectionLimits,
    EngineSettings,
    MqttSettings,
    TlsSettings,
    UdpServerSettings,
)
from tests.conftest import TEMPLATE, base_config, run_butler, write_config


def template() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    return document


def filled_template() -> dict[str, Any]:
    """The upstream template as an admin fills it in."""
    document = template()
    butler = document["Butler"]
    butler["restServerConfig"].update(enable=True, serverHost="0.0.0.0", serverPort=8080)
    butler["restServerEndpointsEnable"]["butlerping"] = True
    butler["restServerEndpointsEnable"]["scheduler"]["getSchedule"] = True
    butler["cert"] = {
        "clientCert": "/certs/client.pem",
        "clientCertKey": "/certs/client_key.pem",
        "clientCertCA": "/certs/root.pem",
    }
    return document


def errors_of(document: Any, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, base_dir=tmp_path)
    return caught.value.messages


def test_upstream_template_loads_unchanged() -> None:
    settings = load_config(TEMPLATE)
    assert settings.rest.enable is False
    assert (settings.rest.host, settings.rest.port, settings.rest.background_port) == (
        "10.11.12.13",
        8080,
        8081,
    )
    assert settings.endpoints.enabled_leaf_names() == []
    assert (
        "udpServerConfig" not in settings.unsupported_sections
        and "scheduler" not in settings.unsupported_sections
        and "serviceMonitor" not in settings.unsupported_sections
        and "qlikSenseCloud" in settings.unsupported_sections
    )
    assert (settings.scheduler.enable, settings.scheduler.file.name) == (False, "schedule.yaml")
    assert (
        settings.udp.enable is False and settings.udp.task_port == 9998 and settings.udp.session_port == 9997
    )
    assert settings.mqtt.events.task_failure_full == "qliksense/task_failure_full"
    assert "restServerConfig" not in settings.unsupported_sections


def test_filled_in_template_loads(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path / "production.yaml", filled_template()))
    assert settings.rest.enable is True
    assert settings.rest.host == "0.0.0.0"
    assert settings.endpoints.enabled("butlerping")
    assert settings.endpoints.enabled("scheduler.getSchedule")
    assert not settings.endpoints.enabled("scheduler.deleteSchedule")
    assert settings.endpoints.enabled_leaf_names() == ["butlerping", "getSchedule"]
    assert settings.log_level == "info"


def test_enabled_endpoint_names_follow_file_order(tmp_path: Path) -> None:
    document = base_config(butlerping=True, base16ToBase62=True, apiListEnabledEndpoints=True)
    document["Butler"]["restServerEndpointsEnable"]["newRelic"] = {"postNewRelicEvent": True}
    settings = parse_config(document, base_dir=tmp_path)
    assert settings.endpoints.enabled_leaf_names() == [
        "butlerping",
        "base16ToBase62",
        "apiListEnabledEndpoints",
        "postNewRelicEvent",
    ]


def test_port_that_is_not_a_number(tmp_path: Path) -> None:
    document = filled_template()
    document["Butler"]["restServerConfig"]["serverPort"] = "abc"
    assert errors_of(document, tmp_path) == [
        "Butler.restServerConfig.serverPort: expected an integer 1-65535, got 'abc'"
    ]


@pytest.mark.parametrize("port", [0, 70000, True, 80.5])
def test_port_out_of_range_or_wrong_type(tmp_path: Path, port: Any) -> None:
    document = base_config()
    document["Butler"]["restServerConfig"]["serverPort"] = port
    [message] = errors_of(document, tmp_path)
    assert message.startswith("Butler.restServerConfig.serverPort: expected an integer 1-65535, got ")


def test_topics_butler_publishes_to_are_checked(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["mqttConfig"] = {
        "enable": True,
        "taskFailureTopic": "qliksense/+/failed",
        "taskStartResultTopic": "",
        "sessionStartTopic": 5,
        # Butler subscribes to this one, where a wildcard is at home.
        "taskStartTopic": "qliksense/start_task/#",
    }
    assert sorted(errors_of(document, tmp_path)) == [
        "Butler.mqttConfig.sessionStartTopic: expected an MQTT topic such as qliksense/task_failure, got 5",
        "Butler.mqttConfig.taskFailureTopic: the MQTT topic must not contain the wildcard '+' (at character "
        "11): wildcards are for subscribing, a message is published to one topic, got 'qliksense/+/failed'",
        "Butler.mqttConfig.taskStartResultTopic: the MQTT topic must not be empty, got ''",
    ]


def test_missing_required_key(tmp_path: Path) -> None:
    document = base_config()
    del document["Butler"]["restServerConfig"]["serverHost"]
    assert errors_of(document, tmp_path) == [
        "Butler.restServerConfig.serverHost: required key is missing (a string)"
    ]


def test_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    document = base_config()
    rest = document["Butler"]["restServerConfig"]
    rest["serverPrt"] = rest.pop("serverPort")
    assert errors_of(document, tmp_path) == [
        "Butler.restServerConfig.serverPrt: unknown key (did you mean 'serverPort'?)",
        "Butler.restServerConfig.serverPort: required key is missing (an integer 1-65535)",
    ]


def test_wrong_case_gets_a_suggestion(tmp_path: Path) -> None:
    document = base_config(butlerping=True)
    document["Butler"]["restServerEndpointsEnable"]["butlerPing"] = True
    assert errors_of(document, tmp_path) == [
        "Butler.restServerEndpointsEnable.butlerPing: unknown key (did you mean 'butlerping'?)"
    ]


def test_misspelt_section_is_an_error_not_an_ignored_section(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["mqttConfg"] = {"enable": False}
    assert errors_of(document, tmp_path) == ["Butler.mqttConfg: unknown key (did you mean 'mqttConfig'?)"]


def test_unknown_key_without_near_miss(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["somethingElse"] = 1
    assert errors_of(document, tmp_path) == ["Butler.somethingElse: unknown key"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["logLevel"] = "loud"
    document["Butler"]["restServerConfig"]["enable"] = "yes please"
    document["Butler"]["restServerEndpointsEnable"]["butlerping"] = 1
    assert errors_of(document, tmp_path) == [
        "Butler.logLevel: expected one of silly, debug, verbose, info, warn, error, got 'loud'",
        "Butler.restServerConfig.enable: expected true or false, got 'yes please'",
        "Butler.restServerEndpointsEnable.butlerping: expected true or false, got 1",
    ]


def test_section_of_the_wrong_type(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["restServerConfig"] = ["enable", True]
    assert errors_of(document, tmp_path) == ["Butler.restServerConfig: expected a mapping, got a list"]


def test_missing_butler_root(tmp_path: Path) -> None:
    assert errors_of({"butler": {}}, tmp_path) == [
        "butler: unknown key (did you mean 'Butler'?)",
        "Butler: required key is missing (a mapping)",
    ]
    assert errors_of(None, tmp_path) == ["config file: expected a mapping, got null"]


def test_tls_enabled_needs_cert_and_key(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["restServerConfig"]["tls"] = {"enable": True, "cert": None, "key": "", "ca": None}
    assert errors_of(document, tmp_path) == [
        "Butler.restServerConfig.tls.cert: required when tls.enable is true",
        "Butler.restServerConfig.tls.key: required when tls.enable is true",
    ]


def test_relative_tls_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["restServerConfig"]["tls"] = {
        "enable": True,
        "cert": "certs/c.pem",
        "key": "/abs/k.pem",
    }
    (tmp_path / "conf").mkdir()
    settings = load_config(write_config(tmp_path / "conf" / "butler.yaml", document))
    assert settings.rest.tls.cert == (tmp_path / "conf" / "certs" / "c.pem").resolve()
    assert settings.rest.tls.key == Path("/abs/k.pem")


def test_older_config_without_tls_and_new_flags_loads(tmp_path: Path) -> None:
    """Configs written for Butler before 16.0 have no tls section and fewer endpoint flags."""
    document = copy.deepcopy(template())
    del document["Butler"]["restServerConfig"]["tls"]
    del document["Butler"]["restServerEndpointsEnable"]["newRelic"]
    settings = parse_config(document, base_dir=tmp_path)
    assert settings.rest.tls.enable is False


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("Butler:\n  restServerConfig: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as refused:
        load_config(broken)
    [message] = refused.value.messages
    # One line that names the file where YAML found the problem.
    assert f'in "{broken}", line 2' in message and "\n" not in message
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("Butler:\n  logLevel: 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(latin1)


def test_config_check_command(tmp_path: Path) -> None:
    good = run_butler("config", "check", str(TEMPLATE))
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    assert "not supported by this version" in good.stdout and "qlikSenseCloud" in good.stdout

    document = filled_template()
    document["Butler"]["restServerConfig"]["serverPort"] = "abc"
    bad = run_butler("config", "check", str(write_config(tmp_path / "bad.yaml", document)))
    assert bad.returncode != 0
    assert "Butler.restServerConfig.serverPort: expected an integer 1-65535, got 'abc'" in bad.stderr


# --- One declaration per key: defaults, README, upstream's template, --explain -------------------------


def _template_leaves(node: Any, path: str) -> list[str]:
    if not isinstance(node, dict):
        return [path]
    return [leaf for name, value in node.items() for leaf in _template_leaves(value, f"{path}.{name}")]


def test_settings_objects_default_to_the_files_defaults() -> None:
    """A settings class built in code and one read from a file without its keys are the same object."""
    settings = parse_config(base_config(), base_dir=Path())
    for name in ("health_check", "key_value", "certificates", "qrs", "start_task_filter", "mqtt", "files"):
        assert getattr(settings, name) == type(getattr(settings, name))(), name
    assert settings.engine == EngineSettings()
    assert settings.udp == UdpServerSettings()
    assert settings.rest.limits == ConnectionLimits() and settings.rest.tls == TlsSettings()
    assert settings.udp.session_state_file == Path("butler-sessions.json")


def test_every_key_is_in_the_readme_table() -> None:
    """The README's table of keys names every declared key; a row of additions only says "(addition)"."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("Keys used by this version:", 1)[1].split("\n\n")[1]
    declared = {path.removeprefix("."): entry for path, entry in leaf_keys(SCHEMA, "")}
    covered: set[str] = set()
    for row in table.splitlines()[2:]:
        names = re.findall(r"`([^`]+)`", row.split("|")[1])
        parent = names[0].rsplit(".", 1)[0]
        keys = [name if name.startswith("Butler.") else parent + name for name in names]
        listed = {key for key in declared if any(_covers(pattern, key) for pattern in keys)}
        assert listed, f"README names keys that are not declared: {keys}"
        covered |= listed
        additions = {declared[key].addition for key in listed}
        if additions == {True}:
            assert "(addition)" in row, row
        if additions == {False}:
            assert "(addition)" not in row, row
    assert sorted(set(declared) - covered) == []


def _covers(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith(".*") else key == pattern


def test_upstream_keys_and_additions_match_upstreams_template() -> None:
    """Every key of upstream's template is declared as upstream's (or ignored with its section); no
    addition is in upstream's template."""
    declared = {path.removeprefix("."): entry for path, entry in leaf_keys(SCHEMA, "")}
    in_template = _template_leaves(template(), "")
    for key in (leaf.removeprefix(".") for leaf in in_template):
        if key in declared:
            assert not declared[key].addition, key
        else:
            assert "upstream key" in explain_key(key).splitlines()[0], key
    additions = {key for key, entry in declared.items() if entry.addition}
    assert additions and not additions & {leaf.removeprefix(".") for leaf in in_template}


def test_explain_a_key() -> None:
    result = run_butler("config", "check", "--explain", "Butler.configQRS.timeoutSeconds")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Butler.configQRS.timeoutSeconds (addition)",
        "  how long the QRS calls of one request (retries included) may take before the caller gets a 504",
        "  type: an integer 1-3600",
        "  default: 30",
    ]
    assert explain_key("restServerConfig.serverPort").splitlines() == [
        "Butler.restServerConfig.serverPort (upstream key)",
        "  port of the REST API",
        "  type: an integer 1-65535",
        "  default: none, the key is required",
    ]
    assert "default: butler-sessions.json" in explain_key("Butler.udpServerConfig.sessionStateFile")
    assert "resolved against the config file's folder" in explain_key(
        "Butler.udpServerConfig.sessionStateFile"
    )
    assert "default: false" in explain_key("Butler.restServerEndpointsEnable.scheduler.getSchedule")
    assert "restServerEndpointsEnable.keyValueStore" in explain_key("Butler.keyValueStore.enable")
    assert "type: a section with the keys maxConcurrent, maxSize, backpressureThreshold" in explain_key(
        "Butler.udpServerConfig.messageQueue"
    )
    ignored = explain_key("Butler.qlikSenseCloud.enable")
    assert ignored.startswith("Butler.qlikSenseCloud (upstream key)") and "ignored" in ignored


def test_explain_an_unknown_key_suggests_one() -> None:
    result = run_butler("config", "check", "--explain", "Butler.configQRS.timeout")
    assert result.returncode == 1
    assert "Butler.configQRS.timeout is not a config key" in result.stderr
    assert "did you mean 'Butler.configQRS.timeoutSeconds'?" in result.stderr
    with pytest.raises(UnknownKey) as caught:
        explain_key("Butler.logLevel.info")
    assert (caught.value.path, caught.value.suggestion) == ("Butler.logLevel.info", None)


def test_key_value_store_enable_is_noted_when_it_disagrees_with_the_endpoint_flag(tmp_path: Path) -> None:
    document = template()
    document["Butler"]["restServerEndpointsEnable"]["keyValueStore"] = True
    assert document["Butler"]["keyValueStore"]["enable"] is False
    result = run_butler("config", "check", str(write_config(tmp_path / "butler.yaml", document)))
    assert result.returncode == 0, result.stderr
    assert (
        "note: Butler.keyValueStore.enable is false and has no effect: the key-value endpoints are on as "
        "Butler.restServerEndpointsEnable.keyValueStore says"
    ) in result.stdout
    settings = parse_config(document, base_dir=tmp_path)
    assert settings.endpoints.enabled("keyValueStore") and settings.key_value.enable is False
    assert parse_config(template(), base_dir=tmp_path).notes == ()


def test_section_with_only_comments_is_empty(tmp_path: Path) -> None:
    config = tmp_path / "butler.yaml"
    config.write_text(
        "Butler:\n  restServerConfig:\n    enable: true\n    serverHost: 127.0.0.1\n    serverPort: 8080\n"
        "  mqttConfig:\n    # enable: true\n  udpServerConfig:\n    messageQueue:\n      # maxSize: 10\n"
        "  createDirApprovedDirectories:\n    # - /data\n",
        encoding="utf-8",
    )
    settings = load_config(config)
    assert settings.mqtt == MqttSettings() and settings.udp.task_events.queue_size == 200
    assert settings.files.create_dir is None  # unrestricted, as when absent; [] would allow nothing


def test_modules_import_in_any_order() -> None:
    for module in ("butler.mqtt", "butler.files", "butler.config.settings"):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
