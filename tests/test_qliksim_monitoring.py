"""qliksim's surfaces for Butler's monitors, over real mutual TLS: the server licence, access allocations
with their release and quarantine, users, service status per node, and the 9032 systeminfo service."""

from __future__ import annotations

import datetime
import ssl
from typing import Any

import aiohttp
import pytest

from qliksim.licensing import Licensing
from qliksim.times import instant
from tests.conftest import Control, client_tls
from tests.test_qliksim_qrs import encoded


def today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def valid_to(licence: dict[str, Any]) -> str:
    """What Butler reads: the text after the first ':' of the ``Valid To:`` line."""
    line = next(line for line in licence["keyDetails"].split("\n") if "Valid To:" in line)
    return line.split(":")[1].strip()


def cutoff(days: int) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def users_of(qrs: Any, path: str) -> list[str]:
    status, allocations = await qrs("GET", path)
    assert status == 200, allocations
    return sorted(a["user"]["userId"] for a in allocations)


async def test_server_licence_and_its_expiry(qrs: Any, control: Control) -> None:
    status, licence = await qrs("GET", "license")
    assert status == 200
    assert licence["schemaPath"] == "License" and licence["serial"] == "9999000000001234"
    assert valid_to(licence) == (today() + datetime.timedelta(days=45)).isoformat()
    assert licence["isExpired"] is False and licence["expiredReason"] == ""
    assert await control("PUT", "/license", {"expiresInDays": 10}) == (200, (await qrs("GET", "license"))[1])
    assert valid_to((await qrs("GET", "license"))[1]) == (today() + datetime.timedelta(days=10)).isoformat()
    # Past its date a licence is expired without being marked so.
    await control("PUT", "/license", {"validTo": "2020-06-30"})
    _, licence = await qrs("GET", "license")
    assert (valid_to(licence), licence["isExpired"]) == ("2020-06-30", True)
    await control("PUT", "/license", {"expiresInDays": 300, "expired": True})
    _, licence = await qrs("GET", "license")
    assert licence["isExpired"] is True and licence["expiredReason"]
    await control("PUT", "/license", {"expired": False})
    assert (await qrs("GET", "license"))[1]["isExpired"] is False
    assert (await control("PUT", "/license", {"validTo": "31/12/2025"}))[0] == 400
    assert (await control("PUT", "/license", {"expired": "yes"}))[0] == 400


async def test_allocations_filtered_by_last_use_and_counted(qrs: Any) -> None:
    path = "license/professionalaccesstype"
    assert await users_of(qrs, f"{path}/full") == ["anna", "goran", "peter", "sa_repository"]
    old = "filter=" + encoded(f"lastUsed le '{cutoff(30)}'")
    assert await users_of(qrs, f"{path}/full?{old}") == ["anna", "peter", "sa_repository"]
    assert await users_of(qrs, f"license/analyzeraccesstype/full?{old}") == ["lisa", "maria", "olle"]
    assert await qrs("GET", f"{path}/count?{old}") == (200, {"value": 3})
    # The date forms QRS's documentation shows compare as instants too.
    day = (today() - datetime.timedelta(days=50)).isoformat()
    assert await qrs("GET", f"{path}/count?filter=" + encoded(f"lastUsed le '{day} 00:00:00'")) == (
        200,
        {"value": 1},
    )
    status, condensed = await qrs("GET", path)
    assert status == 200 and len(condensed) == 4 and set(condensed[0]) == {"id", "privileges"}
    _, full = await qrs("GET", f"{path}/full?filter=" + encoded("user.userId eq 'anna'"))
    assert full[0]["schemaPath"] == "License.ProfessionalAccessType"
    assert full[0]["user"]["userDirectory"] == "LAB" and full[0]["quarantined"] is False
    assert await qrs("GET", f"{path}/{full[0]['id']}") == (200, full[0])
    _, overview = await qrs("GET", "license/accesstypeoverview")
    assert overview["schemaPath"] == "AccessTypeOverview"
    professional = {k: v for k, v in overview["professionalAccess"].items() if k != "schemaPath"}
    assert professional == {
        "enabled": True,
        "total": 10,
        "allocated": 4,
        "used": 4,
        "quarantined": 0,
        "excess": 0,
        "available": 6,
    }
    assert overview["analyzerAccess"]["allocated"] == 4 and overview["analyzerAccess"]["total"] == 20
    assert overview["userAccess"]["usedTokens"] == 0 and overview["analyzerTimeAccess"]["enabled"] is False


async def test_bad_requests_get_qrs_statuses(qrs: Any) -> None:
    path = "license/professionalaccesstype/full?filter="
    bad = "lastUsed le '2024-04-01"
    assert await qrs("GET", path + encoded(bad)) == (400, f"Cannot parse the expression: {bad}")
    assert (await qrs("GET", path + encoded("lastUsed le 'yesterday'")))[0] == 400
    assert (await qrs("GET", path + encoded("nosuchfield eq 1")))[0] == 400
    assert (await qrs("GET", path + encoded("lastUsed so 'x'")))[0] == 200  # a string operator on a string
    unknown = "00000000-0000-0000-0000-0000000000aa"
    assert await qrs("GET", f"license/analyzeraccesstype/{unknown}") == (404, "Not found")
    assert await qrs("DELETE", f"license/analyzeraccesstype/{unknown}") == (404, "Not found")
    assert await qrs("GET", "license/tokenaccesstype/full") == (404, "No matching endpoint found")
    assert await qrs("GET", f"user/{unknown}") == (404, "Not found")
    assert await qrs("GET", f"servicestatus/{unknown}") == (404, "Not found")


async def test_release_quarantines_recently_used_access(qrs: Any) -> None:
    path = "license/professionalaccesstype"
    _, allocations = await qrs("GET", f"{path}/full")
    by_user = {a["user"]["userId"]: a["id"] for a in allocations}
    assert await qrs("DELETE", f"{path}/{by_user['goran']}") == (204, "")
    _, goran = await qrs("GET", f"{path}/{by_user['goran']}")
    assert goran["quarantined"] is True
    ends = instant(goran["quarantineEnd"]) - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=6, hours=23) < ends <= datetime.timedelta(days=7)
    _, overview = await qrs("GET", "license/accesstypeoverview")
    counts = overview["professionalAccess"]
    assert (counts["allocated"], counts["used"], counts["quarantined"], counts["available"]) == (3, 3, 1, 6)
    # Released again, it stays as it is until its quarantine ends.
    assert await qrs("DELETE", f"{path}/{by_user['goran']}") == (204, "")
    assert (await qrs("GET", f"{path}/{by_user['goran']}"))[1] == goran
    # Unused for more than seven days, an allocation goes at once.
    assert await qrs("DELETE", f"{path}/{by_user['anna']}") == (204, "")
    assert await qrs("GET", f"{path}/{by_user['anna']}") == (404, "Not found")
    assert await users_of(qrs, f"{path}/full") == ["goran", "peter", "sa_repository"]
    quarantined = "filter=" + encoded("quarantined eq true")
    assert await qrs("GET", f"{path}/count?{quarantined}") == (200, {"value": 1})
    _, overview = await qrs("GET", "license/accesstypeoverview")
    counts = overview["professionalAccess"]
    assert (counts["allocated"], counts["quarantined"], counts["available"]) == (2, 1, 7)
    assert overview["analyzerAccess"]["allocated"] == 4


def test_quarantine_ends_after_seven_days() -> None:
    from qliksim.site import load_site

    site = load_site(None)
    licensing: Licensing = site.licensing
    now = datetime.datetime.now(datetime.UTC)
    table = licensing.table("analyzeraccesstype", now)
    joe = next(i for i, a in table.items() if a["user"]["userId"] == "joe")
    assert licensing.release("analyzeraccesstype", joe, now)
    assert joe in licensing.table("analyzeraccesstype", now + datetime.timedelta(days=6))
    assert licensing.overview(now + datetime.timedelta(days=6))["analyzerAccess"]["quarantined"] == 1
    assert joe not in licensing.table("analyzeraccesstype", now + datetime.timedelta(days=7, seconds=1))
    assert licensing.overview(now + datetime.timedelta(days=8))["analyzerAccess"]["quarantined"] == 0
    # A site that quarantines every release keeps one unused for long.
    licensing.quarantine_rule = "always"
    maria = next(i for i, a in table.items() if a["user"]["userId"] == "maria")
    assert licensing.release("analyzeraccesstype", maria, now)
    assert table[maria]["quarantined"] is True


async def test_allocations_set_by_control_api(qrs: Any, control: Control) -> None:
    status, created = await control(
        "PUT",
        "/access/analyzer",
        {
            "total": 3,
            "allocations": [
                {"user": "LAB\\anna", "lastUsed": "2024-02-01T09:12:00.000Z"},
                {"user": "LAB\\joe", "lastUsedDaysAgo": 2},
                {"user": "LAB\\olle"},
            ],
        },
    )
    assert status == 200 and [a["user"]["userId"] for a in created] == ["anna", "joe", "olle"]
    assert created[2]["lastUsed"] == "1753-01-01T00:00:00.000Z"  # never used
    old = "filter=" + encoded("lastUsed le '2024-04-01T00:00:00.000Z'")
    assert await users_of(qrs, f"license/analyzeraccesstype/full?{old}") == ["anna", "olle"]
    _, overview = await qrs("GET", "license/accesstypeoverview")
    analyzer = overview["analyzerAccess"]
    assert (analyzer["total"], analyzer["allocated"], analyzer["used"], analyzer["available"]) == (3, 3, 2, 0)
    # One allocation per user and type: a new one replaces the user's old one.
    status, joe = await control("POST", "/access/analyzer", {"user": "LAB\\joe", "lastUsedDaysAgo": 40})
    assert status == 201
    assert await users_of(
        qrs, f"license/analyzeraccesstype/full?filter={encoded('lastUsed le ' + repr(cutoff(30)))}"
    ) == [
        "anna",
        "joe",
        "olle",
    ]
    assert (await qrs("GET", f"license/analyzeraccesstype/{joe['id']}"))[1]["lastUsed"] == joe["lastUsed"]
    assert (await control("POST", "/access/analyzer", {"user": "LAB\\nobody"}))[0] == 400
    assert (await control("POST", "/access/analyzer", {"user": "LAB\\joe", "lastUsed": "soon"}))[0] == 400
    assert (await control("PUT", "/access/analyzer", {"allocations": [{"user": "X\\y"}]}))[0] == 400
    assert await users_of(qrs, "license/analyzeraccesstype/full") == ["anna", "joe", "olle"]
    assert (await control("POST", "/access/login", {"user": "LAB\\joe"}))[0] == 404
    _, seen = await control("GET", "/access")
    assert seen["overview"] == (await qrs("GET", "license/accesstypeoverview"))[1]
    assert seen["analyzer"] == (await qrs("GET", "license/analyzeraccesstype/full"))[1]


async def test_users_with_tags_properties_and_flags(qrs: Any) -> None:
    _, allocations = await qrs("GET", "license/professionalaccesstype/full")
    peter_id = next(a["user"]["id"] for a in allocations if a["user"]["userId"] == "peter")
    status, peter = await qrs("GET", f"user/{peter_id}")
    assert status == 200 and peter["schemaPath"] == "User"
    assert [t["name"] for t in peter["tags"]] == ["License do not release"]
    assert (peter["inactive"], peter["blacklisted"], peter["removedExternally"]) == (False, False, False)
    _, lisa = await qrs("GET", "user/full?filter=" + encoded("userId eq 'lisa'"))
    assert [(cp["definition"]["name"], cp["value"]) for cp in lisa[0]["customProperties"]] == [
        ("LicenseManage", "do-not-release")
    ]
    _, inactive = await qrs("GET", "user/full?filter=" + encoded("inactive eq true"))
    assert [(u["userDirectory"], u["userId"]) for u in inactive] == [("LAB", "maria")]
    _, internal = await qrs("GET", "user/full?filter=" + encoded("userDirectory eq 'INTERNAL'"))
    assert sorted(u["userId"] for u in internal) == ["sa_repository", "sa_scheduler"]
    _, tagged = await qrs("GET", "user/count?filter=" + encoded("tags.name eq 'License do not release'"))
    assert tagged == {"value": 1}


def states(statuses: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    return {(s["serverNodeConfiguration"]["name"], s["serviceType"]): s["serviceState"] for s in statuses}


async def test_service_status_per_node_and_stopped_services(qrs: Any, control: Control) -> None:
    status, statuses = await qrs("GET", "servicestatus/full")
    assert status == 200 and len(statuses) == 12
    assert {s["serverNodeConfiguration"]["hostName"] for s in statuses} == {"sense1", "sense2"}
    assert statuses[0]["schemaPath"] == "ServiceStatus" and statuses[0]["timestamp"].endswith("Z")
    assert states(statuses)[("Rim1", 4)] == 4 and states(statuses)[("Rim1", 5)] == 4  # disabled
    assert all(v == 2 for (node, kind), v in states(statuses).items() if node == "Central" or kind < 4)
    assert (await qrs("GET", "servicestatus/count"))[1] == {"value": 12}
    _, engines = await qrs("GET", "servicestatus/full?filter=" + encoded("serviceType eq Engine"))
    assert [s["serverNodeConfiguration"]["name"] for s in engines] == ["Central", "Rim1"]
    assert await qrs("GET", f"servicestatus/{engines[1]['id']}") == (200, engines[1])

    status, node = await control("POST", "/nodes/Rim1/services/scheduler/stop")
    assert status == 200 and node["services"]["scheduler"] == "stopped"
    _, statuses = await qrs("GET", "servicestatus/full")
    assert states(statuses)[("Rim1", 2)] == 3 and states(statuses)[("Central", 2)] == 2
    stopped = next(
        s for s in statuses if s["serverNodeConfiguration"]["name"] == "Rim1" and s["serviceType"] == 2
    )
    assert stopped["timestamp"] > engines[1]["timestamp"]
    _, down = await qrs("GET", "servicestatus?filter=" + encoded("serviceState eq NoCommunication"))
    assert len(down) == 1
    assert (await control("POST", "/nodes/sense2/services/scheduler/start"))[1]["services"]["scheduler"] == (
        "running"
    )
    assert states((await qrs("GET", "servicestatus/full"))[1])[("Rim1", 2)] == 2
    _, nodes = await control("GET", "/nodes")
    assert [(n["name"], n["hostName"], n["central"]) for n in nodes] == [
        ("Central", "sense1", True),
        ("Rim1", "sense2", False),
    ]
    assert (await control("POST", "/nodes/Rim9/services/engine/stop"))[0] == 404
    assert (await control("POST", "/nodes/Rim1/services/nosuch/stop"))[0] == 404
    assert (await control("POST", "/nodes/Rim1/services/printing/start"))[0] == 409


async def test_central_repository_and_engine_stop_their_listeners(
    qrs: Any, control: Control, simulator: Any, site_certs: Any
) -> None:
    assert (await control("POST", "/nodes/Central/services/repository/stop"))[0] == 200
    with pytest.raises(aiohttp.ClientError):
        await qrs("GET", "about")
    assert (await control("POST", "/nodes/Central/services/repository/start"))[0] == 200
    assert (await qrs("GET", "about"))[0] == 200
    await control("POST", "/nodes/Central/services/engine/stop")
    assert states((await qrs("GET", "servicestatus/full"))[1])[("Central", 3)] == 3
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls(site_certs))) as session:
        with pytest.raises(aiohttp.ClientError):
            await session.ws_connect(f"wss://127.0.0.1:{simulator.engine_port}/app/")
        await control("POST", "/nodes/Central/services/engine/start")
        headers = {"X-Qlik-User": "UserDirectory=Internal; UserId=sa_repository"}
        async with session.ws_connect(f"wss://127.0.0.1:{simulator.engine_port}/app/", headers=headers) as ws:
            assert (await ws.receive_json())["method"] == "OnConnected"


async def test_systeminfo_needs_the_client_certificate_only(simulator: Any, site_certs: Any) -> None:
    url = f"https://127.0.0.1:{simulator.systeminfo_port}/v1/systeminfo"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls(site_certs))) as session:
        async with session.get(url) as response:
            assert response.status == 200
            info = await response.json()
        async with session.get(url.replace("systeminfo", "nothing")) as response:
            assert response.status == 404
    assert info["version"] == "14.173.4" and info["senseId"] == "qliksenseserver:14.173.4"
    assert info["releaseLabel"] == "February 2024 Patch 1" and info["productName"] == "Qlik Sense"
    assert set(info) >= {"contentHash", "deploymentType", "deprecatedProductVersion", "copyrightYearRange"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_tls(site_certs, with_client_cert=False))
    ) as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with session.get(url) as response:
                await response.read()


def test_site_file_keys(tmp_path: Any) -> None:
    from qliksim.site import SiteError, load_site

    site = tmp_path / "site.yaml"
    site.write_text(
        "users: [{userDirectory: LAB, userId: a}]\n"
        "nodes: [{name: N1}, {name: N2, hostName: n2.corp}]\n"
        "license: {validTo: '2030-01-31', expired: true}\n"
        "accessQuarantine: always\n"
        "accessTypes: {professional: {total: 1, allocations: [{user: LAB\\a, lastUsed: '2024-03-01'}]}}\n"
        "systemInfo: {version: '14.200.1', releaseLabel: May 2025}\n"
    )
    loaded = load_site(site)
    assert [(n.name, n.host_name, n.central) for n in loaded.nodes] == [
        ("N1", "N1", True),
        ("N2", "n2.corp", False),
    ]
    assert loaded.licensing.licence is not None and loaded.licensing.licence.entity(today())["isExpired"]
    assert loaded.system_info["senseId"] == "qliksenseserver:14.200.1"
    (allocation,) = loaded.collection("professionalaccesstype").values()
    assert allocation["lastUsed"] == "2024-03-01T00:00:00.000Z"
    for bad, message in [
        ("nodes: [{name: A}, {name: B, central: true}, {name: C, central: true}]", "exactly one"),
        ("nodes: [{name: A, disabled: [web]}]", "services are"),
        ("license: {validTo: soon}", "license:"),
        ("accessTypes: {login: {total: 1}}", "accessTypes"),
        ("accessQuarantine: never", "accessQuarantine"),
        ("accessTypes: {analyzer: {allocations: [{user: LAB\\nobody}]}}", "unknown user"),
    ]:
        site.write_text(bad + "\n")
        with pytest.raises(SiteError, match=message):
            load_site(site)
