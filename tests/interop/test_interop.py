"""Interop with a client nobody here wrote: Confluent's Python client and Avro serdes.

agentlog writes events to a real Kafka in Confluent's wire format, registering their schemas
in agentlog's built-in registry; Python reads them with confluent-kafka's AvroDeserializer,
fetching schemas from that registry. Python writes a TaskSubmitted with AvroSerializer and
agentlog decodes it, also with a producer that may not register schemas (only looks them up).
The registry answers confluent-kafka's SchemaRegistryClient as Confluent's would, errors
included. `make test` runs this against the local Kafka (AGENTLOG_TEST_KAFKA).
"""

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import StringDeserializer, StringSerializer

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("AGENTLOG_BIN", str(ROOT / "target" / "release" / "agentlog"))
BOOTSTRAP = os.environ.get("AGENTLOG_TEST_KAFKA", "")

if not BOOTSTRAP:
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true but AGENTLOG_TEST_KAFKA does not name a broker")
    pytest.skip("AGENTLOG_TEST_KAFKA is not set", allow_module_level=True)


def agentlog_env():
    env = dict(os.environ)
    env["AGENTLOG__LOG__BACKEND"] = "kafka"
    env["AGENTLOG__LOG__KAFKA__BOOTSTRAP_SERVERS"] = BOOTSTRAP
    return env


def agentlog(*args, timeout=60, config=None):
    """Runs the agentlog CLI against the test Kafka; `config` is a TOML file layered over the defaults."""
    options = ["--config", str(config)] if config is not None else []
    done = subprocess.run([BIN, *options, *args], env=agentlog_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"agentlog {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry_url():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [BIN, "registry", "--listen", f"127.0.0.1:{port}"],
        env=agentlog_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/subjects", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"agentlog registry exited: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise RuntimeError("agentlog registry did not become ready within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def new_topic():
    name = f"interop-{uuid.uuid4().hex[:12]}"
    agentlog("topics", "create", "--name", name, "--partitions", "3")
    return name


def test_python_reads_what_agentlog_wrote(registry_url):
    topic = new_topic()
    agentlog("events", "emit-sample", "--topic", topic, "--registry", registry_url, "--count", "3")

    client = SchemaRegistryClient({"url": registry_url})
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"interop-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "key.deserializer": StringDeserializer("utf_8"),
            "value.deserializer": AvroDeserializer(client),
        }
    )
    consumer.subscribe([topic])
    seen = []
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 3 and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            seen.append(message.value())
    finally:
        consumer.close()
    assert len(seen) == 3, f"read {len(seen)} of 3 events"
    seen.sort(key=lambda v: v["task_id"])
    for i, value in enumerate(seen):
        assert value["task_id"] == f"sample-{i}"
        assert value["agent_type"] == "echo"
        assert value["lane"] == "HIGH"
        assert json.loads(value["input"]) == {"n": i}
        assert value["meta"]["tenant"] == "interop"
    # The subject follows TopicRecordNameStrategy, as agentlog's topics carry several types.
    assert f"{topic}-io.agentlog.v1.TaskSubmitted" in client.get_subjects()


def test_agentlog_reads_what_python_wrote(registry_url):
    topic = new_topic()
    schema = (ROOT / "schemas" / "TaskSubmitted.avsc").read_text()
    client = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(
        client,
        schema,
        conf={"subject.name.strategy": topic_record_subject_name_strategy, "auto.register.schemas": True},
    )
    producer = SerializingProducer(
        {"bootstrap.servers": BOOTSTRAP, "key.serializer": StringSerializer("utf_8"), "value.serializer": serializer}
    )
    value = sample_task_submitted("from-python")
    producer.produce(topic, key="from-python", value=value)
    assert producer.flush(30) == 0

    out = agentlog("events", "read", "--topic", topic, "--registry", registry_url, "--max", "1")
    decoded = json.loads(out.strip().splitlines()[-1])
    assert decoded["event"]["task_id"] == "from-python"
    assert decoded["event"]["agent_type"] == "summarize"
    assert decoded["event"]["lane"] == "CRITICAL"
    assert decoded["event"]["labels"] == {"origin": "python"}
    assert decoded["schema_id"] == client.get_latest_version(f"{topic}-io.agentlog.v1.TaskSubmitted").schema_id


ORDER_V1 = json.dumps(
    {"type": "record", "name": "Order", "namespace": "io.agentlog.interop", "fields": [{"name": "id", "type": "string"}]}
)
# V1 plus a field with a default: BACKWARD compatible.
ORDER_V2 = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "namespace": "io.agentlog.interop",
        "fields": [{"name": "id", "type": "string"}, {"name": "qty", "type": "int", "default": 1}],
    }
)
# A new required field: not BACKWARD compatible.
ORDER_BREAKING = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "namespace": "io.agentlog.interop",
        "fields": [{"name": "id", "type": "string"}, {"name": "price", "type": "double"}],
    }
)


def test_client_lookup_schema(registry_url):
    """lookup_schema sends `?normalize=False&deleted=False`: Python's spelling of booleans."""
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"interop-{uuid.uuid4().hex[:12]}-io.agentlog.interop.Order"
    schema_id = client.register_schema(subject, Schema(ORDER_V1, "AVRO"))

    found = client.lookup_schema(subject, Schema(ORDER_V1, "AVRO"))
    assert (found.schema_id, found.subject, found.version) == (schema_id, subject, 1)

    # Misses are Confluent's JSON errors, so the client can tell which miss it was.
    with pytest.raises(SchemaRegistryError) as unknown_schema:
        client.lookup_schema(subject, Schema(ORDER_V2, "AVRO"))
    assert (unknown_schema.value.http_status_code, unknown_schema.value.error_code) == (404, 40403)
    with pytest.raises(SchemaRegistryError) as unknown_subject:
        client.lookup_schema(f"{subject}-missing", Schema(ORDER_V1, "AVRO"))
    assert (unknown_subject.value.http_status_code, unknown_subject.value.error_code) == (404, 40401)


def test_client_test_compatibility(registry_url):
    """test_compatibility sends `?normalize=False&verbose=False` (or `verbose=True`)."""
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"interop-{uuid.uuid4().hex[:12]}-io.agentlog.interop.Order"
    client.register_schema(subject, Schema(ORDER_V1, "AVRO"))

    assert client.test_compatibility(subject, Schema(ORDER_V2, "AVRO")) is True
    assert client.test_compatibility(subject, Schema(ORDER_BREAKING, "AVRO")) is False
    assert client.test_compatibility(subject, Schema(ORDER_BREAKING, "AVRO"), verbose=True) is False
    assert client.test_compatibility_all_versions(subject, Schema(ORDER_V2, "AVRO")) is True
    # Its versions listing sends `deleted=false&deleted_only=false&offset=0&limit=-1`.
    assert client.get_versions(subject) == [1]
    with pytest.raises(SchemaRegistryError) as invalid:
        client.test_compatibility(subject, Schema('{"type": "nosuchtype"}', "AVRO"))
    assert (invalid.value.http_status_code, invalid.value.error_code) == (422, 42201)


def test_locked_down_producer_after_schemas_register(registry_url, tmp_path):
    """A producer that may not register schemas (auto.register.schemas=False) writes a
    TaskSubmitted to a lane topic right after `topics apply` and `schemas register`, before
    agentlog ever wrote to that lane, and agentlog decodes it."""
    prefix = f"interop{uuid.uuid4().hex[:10]}."
    config = tmp_path / "agentlog.toml"
    config.write_text(
        f'[log]\ntopic_prefix = "{prefix}"\n\n'
        '[agents.summarize]\nruntime = { kind = "builtin", name = "echo" }\nlanes = ["critical", "normal"]\npartitions = 2\n'
    )
    agentlog("topics", "apply", config=config)
    registered = agentlog("schemas", "register", "--registry", registry_url, config=config)
    subject = f"{prefix}tasks.summarize.critical-io.agentlog.v1.TaskSubmitted"
    assert f"registered {subject} " in registered, registered
    assert f"registered {prefix}tasks.summarize.normal-io.agentlog.v1.TaskSubmitted " in registered, registered

    client = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(
        client,
        (ROOT / "schemas" / "TaskSubmitted.avsc").read_text(),
        conf={
            "subject.name.strategy": topic_record_subject_name_strategy,
            "auto.register.schemas": False,
            "use.latest.version": False,
        },
    )
    producer = SerializingProducer(
        {"bootstrap.servers": BOOTSTRAP, "key.serializer": StringSerializer("utf_8"), "value.serializer": serializer}
    )
    topic = f"{prefix}tasks.summarize.critical"
    producer.produce(topic, key="locked-down", value=sample_task_submitted("locked-down"))
    assert producer.flush(30) == 0

    out = agentlog("events", "read", "--topic", topic, "--registry", registry_url, "--max", "1", config=config)
    decoded = json.loads(out.strip().splitlines()[-1])
    assert decoded["event"]["task_id"] == "locked-down"
    assert decoded["event"]["lane"] == "CRITICAL"
    assert decoded["schema_id"] == client.get_latest_version(subject).schema_id
    # The producer only looked the schema up: still the one version `schemas register` made.
    assert client.get_versions(subject) == [1]


def sample_task_submitted(task_id):
    """A TaskSubmitted as a Python dict, the way a user's own producer would build it."""
    return {
        "meta": {
            "event_id": str(uuid.uuid4()),
            # fastavro takes a datetime or an int of microseconds for timestamp-micros.
            "occurred_at": int(time.time() * 1_000_000),
            "tenant": "python",
            "correlation_id": task_id,
            "causation_id": None,
            "trace_parent": None,
            "trace_state": None,
            "producer_id": "interop-test",
        },
        "task_id": task_id,
        "agent_type": "summarize",
        "lane": "CRITICAL",
        "input": b'{"text": "hello"}',
        "content_type": "application/json",
        "attempt": 1,
        "max_attempts": 3,
        "timeout_ms": 30_000,
        "deadline": None,
        "not_before": None,
        "ordering_key": None,
        "idempotency_key": "py-1",
        "parent_task_id": None,
        "job_id": None,
        "labels": {"origin": "python"},
    }
