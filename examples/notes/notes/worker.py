"""The notes worker: stores each queued note with its word count, reporting failures per message.

A message that fails (a note the worker cannot store) is returned in `batchItemFailures`, so only
it comes back; after the queue's maxReceiveCount it goes to the dead-letter queue.
"""

from __future__ import annotations

import json
import os

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

logger = Logger()
processor = BatchProcessor(event_type=EventType.SQS)
table = boto3.resource("dynamodb").Table(os.environ["NOTES_TABLE"])


def store(record: SQSRecord) -> None:
    note = json.loads(record.body)
    if not isinstance(note, dict) or not isinstance(note.get("id"), str) or not isinstance(note.get("text"), str):
        raise ValueError(f"not a note: {record.body[:200]!r}")
    table.put_item(Item={"id": note["id"], "text": note["text"], "words": len(note["text"].split())})


@logger.inject_lambda_context
def handler(event: dict, context: object) -> dict:
    return process_partial_response(event=event, record_handler=store, processor=processor, context=context)
