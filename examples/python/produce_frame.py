#!/usr/bin/env python3
"""Send image files to Vigil's `images` topic, one Frame each (kafka-python + fastavro).

    python produce_frame.py --bootstrap HOST:PORT --source cam-1 ../../samples/dog.jpg

Each image becomes one Frame record (schemas/Frame.avsc, the current version in
schemas/versions.tsv): key = the source id, value = Avro single-object encoding. The
script waits for the broker's acknowledgement (acks=all) of every frame and prints one
JSON line per frame: {"frame_id", "source", "partition", "offset"}.

frame_id is a random UUID, session a random UUID for this run, seq counts from 0 per run
(what `vigil verify` expects per source and session), and the image bytes are sent as
read. Exit status: 0 all sent, 1 Kafka error (unreachable broker, missing topic, refused
record), 2 bad arguments or input (missing file, not an image, bad --source).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

try:
    import kafka.errors
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

    from vigil_wire import (DEFAULT_SCHEMAS, WireError, bootstrap_failure, check_id, client_options, encode,
                            load_current, sniff_encoding)
except ModuleNotFoundError as e:
    sys.exit(f"produce_frame: error: {e.name} is not installed: pip install -r requirements.txt")

# kafka-python 2.x raises NoBrokersAvailable when it cannot bootstrap; 3.x a KafkaTimeoutError.
NoBrokersAvailable = getattr(kafka.errors, "NoBrokersAvailable", KafkaTimeoutError)


def fail(status: int, message: str):
    print(f"produce_frame: error: {message}", file=sys.stderr)
    sys.exit(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, metavar="HOST:PORT[,...]", help="Kafka bootstrap servers")
    ap.add_argument("--topic", default="images", help="topic to send to (default: images)")
    ap.add_argument("--source", required=True, help="source (camera) id: the record key and Frame.source")
    ap.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS, metavar="DIR",
                    help="Vigil's schemas/ directory (default: the repository's, found from this script)")
    ap.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                    help="how long to wait for the broker: to connect, for metadata, for each acknowledgement (default 30)")
    ap.add_argument("--api-version", metavar="X.Y",
                    help="broker API version to assume instead of probing it (kafka-python 3.x needs 2.3 for Vigil's in-memory broker)")
    ap.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    args = ap.parse_args()

    try:
        check_id("source", args.source)
    except ValueError as e:
        fail(2, f"--source: {e}")
    try:
        frame_schema = load_current(args.schemas, "Frame")
    except WireError as e:
        fail(2, str(e))

    # Read every file before connecting: a bad argument sends nothing.
    images = []
    for path in args.images:
        try:
            data = path.read_bytes()
        except OSError as e:
            fail(2, f"{path}: {e.strerror}")
        encoding = sniff_encoding(data)
        if encoding == "UNKNOWN":
            fail(2, f"{path}: not a JPEG, PNG, GIF, BMP or WebP image (the detector would dead-letter it)")
        images.append((path, data, encoding))

    timeout_ms = int(args.timeout * 1000)
    try:
        producer = KafkaProducer(
            bootstrap_servers=args.bootstrap.split(","),
            acks="all",
            retries=5,
            max_in_flight_requests_per_connection=1,  # retries keep the per-source order
            max_block_ms=timeout_ms,  # metadata (topic lookup) and a full buffer
            request_timeout_ms=timeout_ms,
            **client_options(args, KafkaProducer, timeout_ms),
        )
    except NoBrokersAvailable:
        fail(1, bootstrap_failure(args.bootstrap, args.timeout))
    except KafkaError as e:
        fail(1, f"cannot connect to {args.bootstrap}: {e}")

    session = str(uuid.uuid4())
    status = 0
    try:
        for seq, (path, data, encoding) in enumerate(images):
            frame = {
                "frame_id": str(uuid.uuid4()),
                "source": args.source,
                "seq": seq,
                "captured_at_us": time.time_ns() // 1000,
                "encoding": encoding,
                "width": None,
                "height": None,
                "data": data,
                "attributes": {"file": str(path)},
                "session": session,
            }
            value = encode(frame_schema, frame)
            try:
                sent = producer.send(args.topic, key=args.source.encode("utf-8"), value=value)
                meta = sent.get(timeout=args.timeout)
            except MessageSizeTooLargeError as e:
                fail(1, f"{path}: the record ({len(value)} bytes) is too large for the producer or the topic: {e}")
            except KafkaTimeoutError as e:
                fail(1, f"{path}: no acknowledgement within {args.timeout:g} s ({e}): topic {args.topic!r} does "
                        f"not exist on {args.bootstrap} (`vigil detect` creates it; real clusters usually do not "
                        f"create topics on first use), or the broker cannot be reached")
            except KafkaError as e:
                fail(1, f"{path}: not sent: {e}")
            print(json.dumps({"frame_id": frame["frame_id"], "source": args.source,
                              "partition": meta.partition, "offset": meta.offset}), flush=True)
    except KeyboardInterrupt:
        status = 130
    finally:
        producer.close(timeout=5)
    sys.exit(status)


if __name__ == "__main__":
    main()
