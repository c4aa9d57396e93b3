"""The notes API: `POST /notes` queues a note for the worker, `GET /notes/{note_id}` reads it back.

Plain AWS Lambda code (boto3 + Powertools): the queue URL and table name come from the environment
the template gives the function; nothing here knows where it runs.
"""

from __future__ import annotations

import json
import os
import uuid

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import BadRequestError, NotFoundError

logger = Logger()
app = APIGatewayRestResolver()
sqs = boto3.client("sqs")
table = boto3.resource("dynamodb").Table(os.environ["NOTES_TABLE"])
MAX_TEXT = 10_000


@app.post("/notes")
def create_note() -> Response:
    body = app.current_event.json_body if app.current_event.body else None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        raise BadRequestError(f"send {{\"text\": \"...\"}} with 1 to {MAX_TEXT} characters")
    note_id = uuid.uuid4().hex
    sqs.send_message(QueueUrl=os.environ["NOTES_QUEUE_URL"], MessageBody=json.dumps({"id": note_id, "text": text}))
    logger.info("note queued", extra={"note_id": note_id})
    return Response(202, "application/json", json.dumps({"id": note_id, "status": "queued"}))


@app.get("/notes/<note_id>")
def get_note(note_id: str) -> dict:
    item = table.get_item(Key={"id": note_id}).get("Item")
    if item is None:
        raise NotFoundError(f"no note {note_id} (yet)")
    return {"id": item["id"], "text": item["text"], "words": int(item["words"])}


@app.get("/health")
def health() -> dict:
    return {"status": "healthy", "version": os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")}


@logger.inject_lambda_context
def handler(event: dict, context: object) -> dict:
    return app.resolve(event, context)
