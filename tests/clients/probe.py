"""Can this Python Kafka client work with a broker? Bootstrap (metadata), produce with
acks=all, and consume the record back in a consumer group, read_committed where the
client has it. Prints one JSON object: {"client", "ok", "failed_step", "error"}.

    python probe.py BOOTSTRAP TOPIC [CONFIG_JSON]

Runs with kafka-python or confluent-kafka, whichever the interpreter has; CONFIG_JSON is
passed to the client's constructors (e.g. {"api_version": [2, 3]} for kafka-python).
tests/tests/client_compatibility.rs runs it for every client the README lists.
"""

import json
import sys
import time
import uuid

TIMEOUT_S = 20


def kafka_python(bootstrap, topic, config, payload):
    import kafka

    if "api_version" in config:
        config["api_version"] = tuple(config["api_version"])
    common = dict(bootstrap_servers=bootstrap.split(","), request_timeout_ms=TIMEOUT_S * 1000, **config)
    steps = {}
    steps["metadata"] = lambda: kafka.KafkaConsumer(**common).topics()

    def produce():
        producer = kafka.KafkaProducer(acks="all", max_block_ms=TIMEOUT_S * 1000, **common)
        producer.send(topic, key=b"probe", value=payload).get(timeout=TIMEOUT_S)
        producer.close(5)

    def consume():
        extra = {"isolation_level": "read_committed"} if kafka.__version__ >= "2.1" else {}
        consumer = kafka.KafkaConsumer(
            topic, group_id="probe-" + uuid.uuid4().hex[:8], auto_offset_reset="earliest", **common, **extra
        )
        deadline = time.monotonic() + TIMEOUT_S * 3
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                if any(r.value == payload for r in records):
                    consumer.commit()
                    return
        raise TimeoutError("the record was not read back")

    steps["produce"] = produce
    steps["consume"] = consume
    return f"kafka-python {kafka.__version__}", steps


def confluent(bootstrap, topic, config, payload):
    import confluent_kafka
    from confluent_kafka.admin import AdminClient

    common = {"bootstrap.servers": bootstrap, **config}
    steps = {}

    def metadata():
        AdminClient(common).list_topics(timeout=TIMEOUT_S)

    def produce():
        failures = []
        producer = confluent_kafka.Producer({**common, "acks": "all", "message.timeout.ms": TIMEOUT_S * 1000})
        producer.produce(topic, key=b"probe", value=payload, on_delivery=lambda e, m: e and failures.append(e))
        if producer.flush(TIMEOUT_S) or failures:
            raise RuntimeError(f"not delivered: {failures or 'timed out'}")

    def consume():
        consumer = confluent_kafka.Consumer(
            {**common, "group.id": "probe-" + uuid.uuid4().hex[:8], "auto.offset.reset": "earliest",
             "isolation.level": "read_committed"}
        )
        consumer.subscribe([topic])
        deadline = time.monotonic() + TIMEOUT_S * 3
        try:
            while time.monotonic() < deadline:
                message = consumer.poll(1.0)
                if message is not None and not message.error() and message.value() == payload:
                    consumer.commit(message, asynchronous=False)
                    return
            raise TimeoutError("the record was not read back")
        finally:
            consumer.close()

    steps.update(metadata=metadata, produce=produce, consume=consume)
    return f"confluent-kafka {confluent_kafka.__version__}", steps


def main(argv):
    bootstrap, topic = argv[1], argv[2]
    config = json.loads(argv[3]) if len(argv) > 3 else {}
    payload = uuid.uuid4().hex.encode()
    try:
        import kafka  # noqa: F401

        client, steps = kafka_python(bootstrap, topic, config, payload)
    except ImportError:
        client, steps = confluent(bootstrap, topic, config, payload)
    report = {"client": client, "config": config, "ok": True, "failed_step": None, "error": None}
    for name, step in steps.items():
        try:
            step()
        except Exception as e:  # noqa: BLE001 - the probe reports any failure
            report.update(ok=False, failed_step=name, error=f"{type(e).__name__}: {e}")
            break
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv)
