#!/usr/bin/env python3
"""Read Vigil's detection results from the `detections` topic (kafka-python + fastavro).

    python consume_detections.py --bootstrap HOST:PORT --from-beginning --frame-id ID

Prints one JSON line per result:
{"frame_id", "source", "seq", "detections": [{"label", "score", "box": [x_min, y_min, x_max, y_max]}]}

Each value is decoded by looking its fingerprint up among every DetectionResult version in
schemas/versions.tsv (also the fingerprints older Vigil wrote) and resolving it to the
current schemas/DetectionResult.avsc, as Vigil's own readers do; a record that does not
decode is reported on stderr (not_avro, unknown_schema, bad_record) and skipped.

Like `vigil tail`, it reads outside any consumer group (it commits nothing), from the end
of the topic unless --from-beginning, with isolation_level=read_committed: the detector
writes each batch in a Kafka transaction, so only committed results are shown. (kafka-python
before 2.1, e.g. 2.0.6, has no isolation_level: it reads read_uncommitted, so it can print
a result whose transaction is later aborted (a detector that dies or is fenced mid-batch)
and, after the batch is retried, the same frame again. The script says so on stderr.)

With --frame-id (repeatable) it prints only those frames' results and exits 0 once it has
seen all of them, or 1 after --timeout (default 60 s) with the missing ids on stderr.
Without --frame-id it prints every result until Ctrl-C or --timeout (then exit 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import kafka.errors
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError, KafkaTimeoutError

    from vigil_wire import DEFAULT_SCHEMAS, Decoder, WireError, bootstrap_failure, client_options
except ModuleNotFoundError as e:
    sys.exit(f"consume_detections: error: {e.name} is not installed: pip install -r requirements.txt")

# kafka-python 2.x raises NoBrokersAvailable when it cannot bootstrap; 3.x a KafkaTimeoutError.
NoBrokersAvailable = getattr(kafka.errors, "NoBrokersAvailable", KafkaTimeoutError)


def say(message: str) -> None:
    print(f"consume_detections: {message}", file=sys.stderr, flush=True)


def fail(status: int, message: str):
    say(f"error: {message}")
    sys.exit(status)


def summary(result: dict) -> dict:
    return {
        "frame_id": result["frame_id"],
        "source": result["source"],
        "seq": result["seq"],
        "detections": [
            {"label": d["label"], "score": round(d["score"], 4),
             "box": [round(d["x_min"], 1), round(d["y_min"], 1), round(d["x_max"], 1), round(d["y_max"], 1)]}
            for d in result["detections"]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, metavar="HOST:PORT[,...]", help="Kafka bootstrap servers")
    ap.add_argument("--topic", default="detections", help="topic to read (default: detections)")
    ap.add_argument("--frame-id", action="extend", nargs="+", default=[], metavar="ID",
                    help="wait for these frames' results (repeatable); exit 0 once all were seen")
    ap.add_argument("--timeout", type=float, metavar="SECONDS",
                    help="give up after this long (default: 60 with --frame-id, else never)")
    ap.add_argument("--from-beginning", action="store_true", help="start at the beginning of the topic, not its end")
    ap.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS, metavar="DIR",
                    help="Vigil's schemas/ directory (default: the repository's, found from this script)")
    ap.add_argument("--api-version", metavar="X.Y",
                    help="broker API version to assume instead of probing it (kafka-python 3.x needs 2.3 for Vigil's in-memory broker)")
    args = ap.parse_args()

    wanted = set(args.frame_id)
    timeout = args.timeout if args.timeout is not None else (60.0 if wanted else None)
    deadline = time.monotonic() + timeout if timeout is not None else None
    try:
        decoder = Decoder(args.schemas, "DetectionResult")
    except WireError as e:
        fail(2, str(e))

    connect_s = min(timeout, 30.0) if timeout is not None else 30.0
    options = client_options(args, KafkaConsumer, int(connect_s * 1000))
    if "isolation_level" in KafkaConsumer.DEFAULT_CONFIG:
        options["isolation_level"] = "read_committed"
    else:
        say(f"warning: kafka-python {kafka.__version__} cannot read read_committed: results of aborted "
            "detector transactions may be printed (and then the frame again); use kafka-python >= 2.1")
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=args.bootstrap.split(","),
            group_id=None,  # no group: assign every partition, commit nothing
            enable_auto_commit=False,
            auto_offset_reset="earliest" if args.from_beginning else "latest",
            **options,
        )
    except NoBrokersAvailable:
        fail(1, bootstrap_failure(args.bootstrap, connect_s))
    except KafkaError as e:
        fail(1, f"cannot connect to {args.bootstrap}: {e}")

    def remaining() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def timed_out(what: str):
        if wanted:
            missing = " ".join(sorted(wanted - seen))
            fail(1, f"timed out after {timeout:g} s {what}; no result for frame id(s): {missing}")
        sys.exit(0)

    seen: set[str] = set()
    try:
        # Wait for the topic (the detector creates it), then read all its partitions.
        partitions = consumer.partitions_for_topic(args.topic)
        waiting_said = False
        while not partitions:
            if remaining() is not None and remaining() <= 0:
                timed_out(f"waiting for topic {args.topic!r}")
            if not waiting_said:
                say(f"waiting for topic {args.topic!r} on {args.bootstrap}")
                waiting_said = True
            time.sleep(1)
            consumer.topics()  # refreshes the metadata
            partitions = consumer.partitions_for_topic(args.topic)
        assigned = [TopicPartition(args.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if args.from_beginning:
            consumer.seek_to_beginning(*assigned)
        else:
            consumer.seek_to_end(*assigned)
        for tp in assigned:
            consumer.position(tp)  # resolve the start now, not at the first poll

        while True:
            left = remaining()
            if left is not None and left <= 0:
                timed_out(f"reading {args.topic!r}")
            batch = consumer.poll(timeout_ms=int(1000 if left is None else max(1, min(1000, left * 1000))))
            for tp, records in batch.items():
                for record in records:
                    try:
                        result = decoder.decode(record.value)
                    except WireError as e:
                        say(f"skipped {tp.topic}[{tp.partition}]@{record.offset}: {e}")
                        continue
                    if wanted and result["frame_id"] not in wanted:
                        continue
                    print(json.dumps(summary(result)), flush=True)
                    seen.add(result["frame_id"])
            if wanted and wanted <= seen:
                sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
