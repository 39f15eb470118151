"""``butler demo --with-mqtt --task-filter``: its own Mosquitto, the allow-list of Butler's task-start
documentation, and the URLs it prints (the status page among them)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import signal
import socket
from pathlib import Path

import pytest
import yaml

from butler.demo import ALLOW_LIST, TASK_NOT_ALLOWED, _instructions, _Shown, find_mosquitto
from tests.conftest import free_port
from tests.test_task_start import APP1, APP2, answer, start_demo

NEEDED = ("mosquitto_sub", "mosquitto_pub", "curl", "bash")


async def shell(command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.skipif(
    find_mosquitto() is None or not all(map(shutil.which, NEEDED)), reason="needs mosquitto and curl"
)
async def test_demo_with_mqtt_and_the_task_filter(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    process, text = await start_demo(state, port, "--with-mqtt", "--task-filter")
    try:
        base = f"http://localhost:{port}"
        assert re.search(rf"^  Status page +{re.escape(base)}/status$", text, re.MULTILINE)
        page = await shell(f"curl -sf {base}/status")
        assert "<h2>Connections</h2>" in page and "<h2>Recent alerts</h2>" in page
        assert re.search(r"^  Task allow-list +on$", text, re.MULTILINE)
        broker = re.search(r"^  MQTT broker +127\.0\.0\.1:(\d+) ", text, re.MULTILINE)
        assert broker is not None, text
        mqtt_port = int(broker.group(1))
        config = yaml.safe_load((state / "butler-demo.yaml").read_text())["Butler"]
        assert config["startTaskFilter"] == {"enable": True, "allowTask": ALLOW_LIST}
        assert config["mqttConfig"] == {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": mqtt_port}

        # The documentation's filter example, run as printed: one task denied, one id invalid.
        example = text[text.index("  curl", text.index("The task allow-list is on")) :]
        example = example[: example.index("'\n") + 1]
        printed = json.loads(await shell(example))
        short = "fb0f317d-da91-4b86-aafa-0174ae1e8c8"
        assert printed == answer(started=[APP1, APP2], invalid=[short], denied=[TASK_NOT_ALLOWED])

        # A task-start message through the demo's broker, denied by the allow-list: its outcome is
        # published. Sent until the subscriber has it, as the subscriber may not be subscribed yet (a
        # denied task starts nothing, however often it is asked for).
        sub = await asyncio.create_subprocess_exec(
            *("mosquitto_sub", "-p", str(mqtt_port), "-t", "qliksense/start_task/result", "-C", "1"),
            *("-W", "30"),
            stdout=asyncio.subprocess.PIPE,
        )
        assert sub.stdout is not None
        reading = asyncio.ensure_future(sub.stdout.readline())
        async with asyncio.timeout(30):
            while not reading.done():
                await shell(f"mosquitto_pub -p {mqtt_port} -t qliksense/start_task -m {TASK_NOT_ALLOWED}")
                await asyncio.wait([reading], timeout=0.5)
        result = json.loads(reading.result())["result"]
        assert result["tasksId"]["denied"] == [{"taskId": TASK_NOT_ALLOWED}]
        await sub.wait()
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    with pytest.raises(OSError):  # the demo's Mosquitto stopped with it
        socket.create_connection(("127.0.0.1", mqtt_port), timeout=1).close()


def test_instructions_without_mqtt_or_filter(tmp_path: Path) -> None:
    shown = _Shown(
        "http://localhost:8080", "http://127.0.0.1:1", tmp_path, 0, tmp_path, True, None, True, False
    )
    text = _instructions(shown)
    assert "  MQTT broker         off (mosquitto is not installed)\n" in text
    assert "  Task allow-list     off (butler demo --task-filter)\n" in text
    assert "  Status page         http://localhost:8080/status\n" in text
    assert "mosquitto_pub" not in text and TASK_NOT_ALLOWED not in text
    quiet = _instructions(dataclasses.replace(shown, mqtt_wanted=False))
    assert "  MQTT broker         off (butler demo --with-mqtt)\n" in quiet
