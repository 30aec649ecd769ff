#!/usr/bin/env python3
"""The checks deploy/local-cluster runs against its NATS cluster and its
gRPC answers. Each NATS subcommand polls until its condition holds or
--timeout passes; each prints one line saying what it saw, and exits 0 when the condition
held, 1 otherwise (with the reason on stderr).

  meta-leader --monitor PORT,PORT,...
      every node's /jsz names the same JetStream meta leader
  stream --url URL,URL,... [--stream NAME] [--not-led-by NODE]
      the stream has a leader (not NODE); prints its replicas' state, then a line with
      the leader's server name alone
  events --url URL,URL,... --expect N --lead ID --lead-types TYPE,TYPE,...
      the stream holds log positions 1..N, once each and in order, each
      passing the format checks of tests/python/consume_events.py, and lead
      ID's events are of those ce-types, in order
  funnel --campaign KEY --total N   (GetFunnel JSON, grouped by campaign, on stdin)
      the group KEY counts one lead captured, MQL, SQL and won, and all
      groups together N leads captured and N won
  field PATH   (JSON on stdin)
      prints the value at a dotted PATH, e.g. result.leadId

Needs nats-py and jsonschema (the test suite's venv has them).
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

import nats

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY / "tests" / "python"))
from consume_events import Checker, load_schemas  # noqa: E402 (found through the path above)

SCHEMAS = REPOSITORY / "docs" / "schemas" / "leads.v1"

STAGES = ("CAPTURED", "MQL", "SQL", "REJECTED", "WON", "LOST")
# A lead captured, qualified, accepted and won: it passed through every
# stage but REJECTED and LOST in the period, and is WON now.
WON_JOURNEY_PERIOD = {"CAPTURED": 1, "MQL": 1, "SQL": 1, "WON": 1}
WON_JOURNEY_CURRENT = {"WON": 1}


class NotYet(Exception):
    """The condition does not hold (yet); the message says why."""


def poll(timeout, attempt):
    """Calls `attempt()` until it returns without raising, or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Exception as error:  # NATS and HTTP errors too: a node may be electing
            if time.monotonic() >= deadline:
                raise NotYet(f"{error} (still so after {timeout:g} s)") from error
            time.sleep(0.2)


def meta_leader(args):
    def attempt():
        leaders = {}
        for port in args.monitor.split(","):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=2) as response:
                jsz = json.load(response)
            leaders[port] = (jsz.get("meta_cluster") or {}).get("leader")
        if None in leaders.values() or "" in leaders.values() or len(set(leaders.values())) != 1:
            raise NotYet(f"no agreed JetStream meta leader: {leaders}")
        return next(iter(leaders.values()))

    print(f"JetStream meta leader {poll(args.timeout, attempt)}")


async def connect(urls):
    return await nats.connect(servers=urls.split(","), connect_timeout=2, max_reconnect_attempts=1)


def stream(args):
    async def attempt():
        nc = await connect(args.url)
        try:
            info = await nc.jetstream().stream_info(args.stream)
        finally:
            await nc.close()
        cluster = info.cluster
        if cluster is None or not cluster.leader:
            raise NotYet(f"stream {args.stream} has no leader")
        if cluster.leader == args.not_led_by:
            raise NotYet(f"stream {args.stream} is still led by {cluster.leader}")
        return info, cluster

    info, cluster = poll(args.timeout, lambda: asyncio.run(attempt()))
    replicas = ", ".join(
        f"{peer.name} {'offline' if peer.offline else 'current' if peer.current else 'not current'}"
        for peer in cluster.replicas or []
    )
    print(
        f"stream {args.stream}: R{info.config.num_replicas}, {info.state.messages} messages, "
        f"leader {cluster.leader}, followers: {replicas or 'none'}"
    )
    print(cluster.leader)


def events(args):
    """Reads messages 1..N one by one from the stream leader (STREAM.MSG.GET:
    no consumer, which JetStream might place on a node that just died)."""
    lead_types = args.lead_types.split(",")

    async def attempt():
        nc = await connect(args.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(args.stream)
            if info.state.last_seq < args.expect:
                raise NotYet(f"stream {args.stream} holds {info.state.messages} messages, expected {args.expect}")
            checker = Checker(load_schemas(SCHEMAS))
            types = []
            for seq in range(1, args.expect + 1):
                msg = await js.get_msg(args.stream, seq=seq)
                checker.check(msg.subject, msg.headers, msg.data or b"")
                if (msg.headers or {}).get("ce-subject") == args.lead:
                    types.append(msg.headers.get("ce-type", "?"))
            if info.state.messages != args.expect:
                checker.problems.append(f"stream {args.stream} holds {info.state.messages} messages, expected {args.expect}")
        finally:
            await nc.close()
        return checker, types

    checker, types = poll(args.timeout, lambda: asyncio.run(attempt()))
    if types != lead_types:
        checker.problems.append(f"lead {args.lead} has events {types or 'none'} on the stream, expected {lead_types}")
    if checker.problems:
        raise NotYet("; ".join(checker.problems))
    print(
        f"stream {args.stream}: positions 1..{args.expect} once each, in order, in the published format; "
        f"lead {args.lead}: {', '.join(t.removeprefix('leads.v1.') for t in types)}"
    )


def counts(entries):
    """{stage: leads} of a list of StageCount as grpcurl prints them."""
    return {e["stage"].removeprefix("STAGE_"): int(e.get("leads", 0)) for e in entries or []}


def funnel(args):
    answer = json.load(sys.stdin)
    groups = {g.get("key", ""): g for g in answer.get("groups", [])}
    problems = []
    group = groups.get(args.campaign)
    if group is None:
        problems.append(f"no funnel group for campaign {args.campaign!r} (groups: {sorted(groups)})")
    else:
        for part, want in (("period", WON_JOURNEY_PERIOD), ("cohort", WON_JOURNEY_PERIOD), ("current", WON_JOURNEY_CURRENT)):
            got = counts(group.get(part))
            for stage in STAGES:
                if got.get(stage, 0) != want.get(stage, 0):
                    problems.append(f"{part} {stage} of {args.campaign} is {got.get(stage, 0)}, expected {want.get(stage, 0)}")
    captured = sum(counts(g.get("period")).get("CAPTURED", 0) for g in groups.values())
    won = sum(counts(g.get("current")).get("WON", 0) for g in groups.values())
    if (captured, won) != (args.total, args.total):
        problems.append(f"all campaigns: {captured} captured and {won} won, expected {args.total} of each")
    if problems:
        for problem in problems:
            print(f"funnel: {problem}", file=sys.stderr)
        sys.exit(1)
    print(
        f"funnel as of position {answer.get('asOfPosition')}: campaign {args.campaign} "
        f"captured 1, MQL 1, SQL 1, won 1; all campaigns {captured} captured, {won} won"
    )


def field(args):
    value = json.load(sys.stdin)
    for key in args.path.split("."):
        value = value[key]
    print(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run in (("meta-leader", meta_leader), ("stream", stream), ("events", events)):
        command = commands.add_parser(name)
        command.set_defaults(run=run)
        command.add_argument("--timeout", type=float, default=20)
        if name == "meta-leader":
            command.add_argument("--monitor", required=True, help="monitoring ports, comma-separated")
        else:
            command.add_argument("--url", required=True, help="NATS URLs, comma-separated")
            command.add_argument("--stream", default="LEADS_V1_EVENTS")
        if name == "stream":
            command.add_argument("--not-led-by", help="a node that must no longer lead the stream")
        if name == "events":
            command.add_argument("--expect", type=int, required=True, help="log positions the stream must hold")
            command.add_argument("--lead", required=True)
            command.add_argument("--lead-types", required=True, help="ce-types of the lead, comma-separated, in order")
    command = commands.add_parser("funnel")
    command.set_defaults(run=funnel)
    command.add_argument("--campaign", required=True)
    command.add_argument("--total", type=int, required=True)
    command = commands.add_parser("field")
    command.set_defaults(run=field)
    command.add_argument("path")
    args = parser.parse_args()
    try:
        args.run(args)
    except NotYet as error:
        print(f"local-cluster-check {args.command}: {error}", file=sys.stderr)
        sys.exit(1)
    except (KeyError, ValueError) as error:
        print(f"local-cluster-check {args.command}: unexpected input: {error!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
