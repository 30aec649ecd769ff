#!/usr/bin/env python3
"""Read leadger's event stream from NATS JetStream and check every message
against the published format (docs/consuming-events.md, docs/asyncapi.yaml).

Used by the test suite to check what the relay published, and shown in the
docs as a consumer example. It creates an ephemeral pull consumer on
`leads.v1.events.>` that starts at the beginning of the stream (DeliverPolicy
ALL), fetches until it has --expect messages or --timeout passes, acks each
one, and checks:

- the CloudEvents headers: ce-specversion is 1.0; ce-id, ce-source, ce-type,
  ce-subject, ce-time, ce-datacontenttype (application/json), ce-dataschema,
  ce-leadposition and ce-leadversion are present; values are percent-encoded
  where they must be; ce-id is a UUID v7, unique, and equal to Nats-Msg-Id;
  ce-time is RFC 3339 in UTC with microseconds;
- the order: ce-leadposition is exactly 1..N in delivery order, and each
  lead's ce-leadversion counts 1, 2, 3...;
- the subject is leads.v1.events.<event>.<ce-subject>, <event> matching
  ce-type (ce-subject is the lead id, or sla-policy for SLA policy events);
- the payload validates against the schema whose $id is ce-dataschema, and
  its lead_id is ce-subject;
- once N messages arrived, the stream holds no more than N (nothing was
  published twice).

On success it prints one JSON line
  {"received": N, "first_position": 1, "last_position": N, "types": {ce-type: count}}
and exits 0; otherwise it prints each violation to stderr and exits 1.

Needs nats-py and jsonschema only:
  python3 tests/python/consume_events.py --url nats://127.0.0.1:4222 \
      --stream LEADS_V1_EVENTS --expect 4 --schemas docs/schemas/leads.v1
"""

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import nats
import nats.errors
from jsonschema import Draft202012Validator
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

SUBJECT_FILTER = "leads.v1.events.>"
SUBJECT_PREFIX = "leads.v1.events."
TYPE_PREFIX = "leads.v1."

# ce-type -> the <event> token of the subject.
EVENT_OF_TYPE = {
    "leads.v1.LeadCaptured": "captured",
    "leads.v1.LeadQualified": "qualified",
    "leads.v1.LeadAssigned": "assigned",
    "leads.v1.LeadAccepted": "accepted",
    "leads.v1.LeadRejected": "rejected",
    "leads.v1.LeadClosed": "closed",
    "leads.v1.LeadFeedbackRecorded": "feedback_recorded",
    "leads.v1.LeadErased": "erased",
    "leads.v1.SlaPolicyDefined": "sla_policy_defined",
}

# ce-subject of agreement events (the SLA policy's stream); lead events have
# the lead id.
SLA_POLICY_SUBJECT = "sla-policy"

REQUIRED_CE_HEADERS = (
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-subject",
    "ce-time",
    "ce-datacontenttype",
    "ce-dataschema",
    "ce-leadposition",
    "ce-leadversion",
)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The one shape leadger writes: RFC 3339, UTC, exactly six fraction digits.
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
DECIMAL_RE = re.compile(r"^[1-9][0-9]*$")
# A header value after percent-encoding: printable ASCII except space, '"'
# and '%', or a %XX escape.
ENCODED_VALUE_RE = re.compile(r"^(?:[\x21\x23\x24\x26-\x7e]|%[0-9A-Fa-f]{2})*$")


def load_schemas(directory):
    """Validators of every *.json schema in `directory`, by `$id`."""
    validators = {}
    for path in sorted(Path(directory).glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        schema_id = schema.get("$id")
        if not schema_id:
            raise ValueError(f"{path}: no $id")
        if schema_id in validators:
            raise ValueError(f"{path}: $id {schema_id} is used by another file too")
        validators[schema_id] = Draft202012Validator(
            schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
    if not validators:
        raise ValueError(f"no *.json schemas in {directory}")
    return validators


def decode_header(name, raw, problems):
    """The value of a ce-* header after percent-decoding, or None."""
    if not ENCODED_VALUE_RE.match(raw):
        problems.append(f"{name} {raw!r} is not percent-encoded where it must be")
        return None
    try:
        return urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        problems.append(f"{name} {raw!r} does not percent-decode to UTF-8")
        return None


class Checker:
    """Checks messages one by one, in delivery order."""

    def __init__(self, validators):
        self.validators = validators
        self.seen_ids = set()
        self.last_position = 0
        self.lead_versions = {}
        self.types = Counter()
        self.problems = []

    def check(self, subject, headers, data):
        problems = []
        headers = headers or {}
        ce = {}
        for name in REQUIRED_CE_HEADERS:
            raw = headers.get(name)
            if raw is None:
                problems.append(f"header {name} is missing")
            else:
                ce[name] = decode_header(name, raw, problems)

        position = self._check_position(ce.get("ce-leadposition"), problems)
        where = f"message at position {position}" if position else f"message on {subject}"

        if "ce-specversion" in ce and ce["ce-specversion"] != "1.0":
            problems.append(f"ce-specversion is {ce['ce-specversion']!r}, not '1.0'")
        if "ce-datacontenttype" in ce and ce["ce-datacontenttype"] != "application/json":
            problems.append(f"ce-datacontenttype is {ce['ce-datacontenttype']!r}, not 'application/json'")
        if ce.get("ce-source") == "":
            problems.append("ce-source is empty")

        event_id = ce.get("ce-id")
        if event_id is not None:
            if not UUID_RE.match(event_id) or uuid.UUID(event_id).version != 7:
                problems.append(f"ce-id {event_id!r} is not a lower-case UUID v7")
            if event_id in self.seen_ids:
                problems.append(f"ce-id {event_id} was delivered before")
            self.seen_ids.add(event_id)
            if headers.get("Nats-Msg-Id") != event_id:
                problems.append(f"Nats-Msg-Id {headers.get('Nats-Msg-Id')!r} is not ce-id {event_id}")

        lead_id = ce.get("ce-subject")
        is_agreement = ce.get("ce-type") == "leads.v1.SlaPolicyDefined"
        if is_agreement:
            if lead_id != SLA_POLICY_SUBJECT:
                problems.append(f"ce-subject of an SLA policy event is {lead_id!r}, not {SLA_POLICY_SUBJECT!r}")
        elif lead_id is not None and not UUID_RE.match(lead_id):
            problems.append(f"ce-subject {lead_id!r} is not a lower-case hyphenated UUID")
            lead_id = None

        ce_type = ce.get("ce-type")
        event = EVENT_OF_TYPE.get(ce_type) if ce_type is not None else None
        if ce_type is not None:
            if event is None:
                problems.append(f"ce-type {ce_type!r} is not a leadger event type")
            else:
                self.types[ce_type] += 1
        if event is not None and lead_id is not None:
            expected = f"{SUBJECT_PREFIX}{event}.{lead_id}"
            if subject != expected:
                problems.append(f"subject is {subject!r}, expected {expected!r}")

        self._check_time(ce.get("ce-time"), problems)
        self._check_version(lead_id, ce.get("ce-leadversion"), problems)
        self._check_payload(ce_type, ce.get("ce-dataschema"), None if is_agreement else lead_id, data, problems)

        self.problems.extend(f"{where}: {p}" for p in problems)

    def _check_position(self, text, problems):
        if text is None:
            return None
        if not DECIMAL_RE.match(text):
            problems.append(f"ce-leadposition {text!r} is not a positive decimal")
            return None
        position = int(text)
        if position != self.last_position + 1:
            problems.append(f"ce-leadposition {position} follows {self.last_position}")
        self.last_position = position
        return position

    @staticmethod
    def _check_time(text, problems):
        if text is None:
            return
        if not TIME_RE.match(text):
            problems.append(f"ce-time {text!r} is not RFC 3339 UTC with microseconds (2026-11-24T09:15:00.123456Z)")
            return
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as error:
            problems.append(f"ce-time {text!r} is not a valid time: {error}")

    def _check_version(self, lead_id, text, problems):
        if text is None:
            return
        if not DECIMAL_RE.match(text):
            problems.append(f"ce-leadversion {text!r} is not a positive decimal")
            return
        if lead_id is None:
            return
        version = int(text)
        previous = self.lead_versions.get(lead_id, 0)
        if version != previous + 1:
            problems.append(f"ce-leadversion {version} of lead {lead_id} follows {previous}")
        self.lead_versions[lead_id] = version

    def _check_payload(self, ce_type, dataschema, lead_id, data, problems):
        if dataschema is None:
            return
        if ce_type is not None and not dataschema.startswith(f"urn:leadger:schema:{ce_type}:"):
            problems.append(f"ce-dataschema {dataschema!r} is not a schema of {ce_type}")
        validator = self.validators.get(dataschema)
        if validator is None:
            problems.append(f"no schema with $id {dataschema!r}")
            return
        try:
            payload = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"payload is not JSON: {error}")
            return
        for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"payload {path}: {error.message}")
        if isinstance(payload, dict) and lead_id is not None and payload.get("lead_id") != lead_id:
            problems.append(f"payload lead_id {payload.get('lead_id')!r} is not ce-subject {lead_id}")


async def consume(args, checker):
    """Fetches and checks up to `args.expect` messages; returns how many came."""
    nc = await nats.connect(args.url, connect_timeout=min(args.timeout, 10), max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            SUBJECT_FILTER,
            stream=args.stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT),
        )
        received = 0
        deadline = time.monotonic() + args.timeout
        while received < args.expect:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch = await sub.fetch(min(args.expect - received, 256), timeout=min(left, 5.0))
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                checker.check(msg.subject, msg.headers, msg.data)
                await msg.ack()
                received += 1

        if received == args.expect:
            # Everything expected came: anything more in the stream was
            # published twice or should not exist.
            info = await js.stream_info(args.stream)
            if info.state.messages > args.expect:
                checker.problems.append(
                    f"stream {args.stream} holds {info.state.messages} messages, expected {args.expect}"
                )
        await sub.unsubscribe()
        return received
    finally:
        await nc.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="NATS server URL, e.g. nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="LEADS_V1_EVENTS", help="JetStream stream name (default %(default)s)")
    parser.add_argument("--expect", type=int, required=True, help="number of events the stream must hold")
    parser.add_argument("--schemas", required=True, help="directory of the payload JSON schemas (docs/schemas/leads.v1)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for all events (default %(default)s)")
    args = parser.parse_args()
    if args.expect < 1:
        parser.error("--expect must be at least 1")

    try:
        checker = Checker(load_schemas(args.schemas))
        received = asyncio.run(consume(args, checker))
    except Exception as error:  # a tool's top level: say what failed, exit 1
        print(f"consume_events: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)

    if received < args.expect:
        checker.problems.append(f"received {received} of {args.expect} messages within {args.timeout:g} s")
    if checker.problems:
        for problem in checker.problems:
            print(f"consume_events: {problem}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({
        "received": received,
        "first_position": 1,
        "last_position": checker.last_position,
        "types": dict(sorted(checker.types.items())),
    }))


if __name__ == "__main__":
    main()
