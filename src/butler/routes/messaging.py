"""Messages from load scripts: MQTT (``/v4/mqttpublishmessage``) and Slack (``/v4/slackpostmessage``),
with the old ``/v2`` GET spellings."""

from __future__ import annotations

from butler.http.errors import HttpError
from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services
from butler.slack import message


def mqtt_routes(services: Services) -> list[Route]:
    mqtt = services.mqtt

    async def mqtt_publish(request: ApiRequest) -> Reply:
        if mqtt is None:
            raise HttpError(503, "MQTT is not enabled (Butler.mqttConfig.enable); the message was not sent")
        body = request.body
        await mqtt.publish_now(body["topic"], body["message"])
        return json_reply(body, 201)

    async def v2_mqtt_publish(request: ApiRequest) -> Reply:
        if mqtt is None:
            raise HttpError(503, "MQTT is not enabled (Butler.mqttConfig.enable); the message was not sent")
        await mqtt.publish_now(request.query["topic"], request.query["message"])
        return json_reply({"topic": request.query["topic"], "message": request.query["message"]})

    return [
        Route("PUT", "/v4/mqttpublishmessage", mqtt_publish),
        Route("GET", "/v2/mqttPublishMessage", v2_mqtt_publish),
    ]


def slack_routes(services: Services) -> list[Route]:
    slack = services.slack

    async def send(channel: str, from_user: str, text: str, emoji: str | None) -> None:
        if slack is None:
            raise HttpError(
                503, "No Slack webhook is configured (Butler.slackNotification.restMessage.webhookURL)"
            )
        await slack.post(message(channel, from_user, text, emoji))

    async def slack_post(request: ApiRequest) -> Reply:
        body = request.body
        await send(body["channel"], body["from_user"], body["msg"], body.get("emoji"))
        echo = {key: body[key] for key in ("channel", "from_user", "msg", "emoji") if key in body}
        return json_reply(echo, 201)

    async def v2_slack_post(request: ApiRequest) -> Reply:
        query = request.query
        await send(query["channel"], query["from_user"], query["msg"], query.get("emoji"))
        echo = {key: query[key] for key in ("channel", "msg", "from_user", "emoji") if key in query}
        return json_reply(echo)

    return [
        Route("PUT", "/v4/slackpostmessage", slack_post),
        Route("GET", "/v2/slackPostMessage", v2_slack_post),
    ]
