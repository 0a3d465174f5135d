"""The Kafka broker's faster start (issue 12): archive keys and fallbacks, storage templates, the
Metadata request the training run sends. No JVM is started here."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from testenv_api import KAFKA_EXTERNAL_PORT, KAFKA_INTERNAL_PORT
from testenv_harness.ground.errors import ToolchainError
from testenv_harness.provision import imagebuild
from testenv_harness.services.kafka import cds as kafka_cds
from testenv_harness.services.kafka import runtime as kafka_runtime
from testenv_harness.services.kafka import wire as kafka_wire
from testenv_operator.catalog import kafka_environment

JARS = [("kafka_2.13-4.1.1.jar", 100, 1), ("kafka-clients-4.1.1.jar", 200, 2)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Kafka cache of its own: libs/ with two jars, and a fake JDK beside it."""
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path / "cache"))
    libs = kafka_runtime.libs_dir()
    libs.mkdir(parents=True)
    for name, _, _ in JARS:
        (libs / name).write_bytes(b"jar")
    return libs.parent


@pytest.fixture
def java(tmp_path: Path) -> str:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "lib" / "server").mkdir(parents=True)
    (home / "bin" / "java").write_text("")
    (home / "lib" / "server" / "libjvm.so").write_bytes(b"jvm")
    (home / "release").write_text('JAVA_VERSION="17.0.15"\n')
    return str(home / "bin" / "java")


# -- the archive ------------------------------------------------------------------------------


def test_the_archive_key_changes_with_the_jvm_the_jars_and_the_flags() -> None:
    key = kafka_cds.archive_key("jdk 17.0.15", JARS, ["-Xmx512m"])
    assert key == kafka_cds.archive_key("jdk 17.0.15", JARS, ["-Xmx512m"])
    touched = [JARS[0], (JARS[1][0], JARS[1][1], 3)]  # same size, new modification time
    others = [
        kafka_cds.archive_key("jdk 17.0.16", JARS, ["-Xmx512m"]),
        kafka_cds.archive_key("jdk 17.0.15", touched, ["-Xmx512m"]),
        kafka_cds.archive_key("jdk 17.0.15", JARS[:1], ["-Xmx512m"]),
        kafka_cds.archive_key("jdk 17.0.15", JARS, ["-Xmx1g"]),
    ]
    assert key not in others
    assert len(set(others)) == len(others)


def test_the_jvm_identity_follows_an_update_of_libjvm(java: str) -> None:
    before = kafka_cds.jvm_identity(java)
    assert 'JAVA_VERSION="17.0.15"' in before
    (Path(java).parent.parent / "lib" / "server" / "libjvm.so").write_bytes(b"a patched jvm")
    assert kafka_cds.jvm_identity(java) != before


def test_the_archive_path_is_named_by_its_key_next_to_the_jars(cache: Path, java: str) -> None:
    path = kafka_cds.archive_path(java)
    assert path.parent == cache / "cds"
    assert path.name.startswith("broker-")
    assert path.suffix == ".jsa"
    (kafka_runtime.libs_dir() / "kafka-clients-4.1.1.jar").write_bytes(b"another build")
    assert kafka_cds.archive_path(java) != path, "new jars need an archive of their own"


def test_the_flags_fall_back_quietly_when_the_archive_cannot_be_used(tmp_path: Path) -> None:
    flags = kafka_cds.use_flags(tmp_path / "broker.jsa")
    assert f"-XX:SharedArchiveFile={tmp_path / 'broker.jsa'}" in flags
    assert "-Xshare:auto" in flags, "never -Xshare:on: that refuses to start without the archive"
    assert "-Xlog:cds*=off" in flags


def test_an_existing_archive_is_used_without_training(
    cache: Path, java: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = kafka_cds.archive_path(java)
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"archive")
    monkeypatch.setattr(kafka_cds, "_make", lambda *_: pytest.fail("trained again"))
    assert kafka_cds.ensure(java, report=lambda _: None) == archive


def test_a_failed_training_is_noted_and_not_retried_at_every_start(
    cache: Path, java: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = []

    def fail(java: str, archive: Path) -> None:
        attempts.append(archive)
        raise ToolchainError("the training broker exited (1)")

    monkeypatch.setattr(kafka_cds, "_make", fail)
    said: list[str] = []
    assert kafka_cds.ensure(java, report=said.append) is None
    assert "start without a class-data archive: the training broker exited (1)" in said[-1]
    assert kafka_cds.ensure(java, report=said.append) is None
    assert len(attempts) == 1, "a broker start does not pay for the same failure twice"
    assert kafka_cds.ensure(java, report=said.append, retry_failed=True) is None
    assert len(attempts) == 2, "`testenv tools` tries again"


def test_a_successful_training_clears_the_failure_note(
    cache: Path, java: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = kafka_cds.archive_path(java)
    archive.parent.mkdir(parents=True)
    archive.with_suffix(".failed").write_text("earlier failure")
    monkeypatch.setattr(kafka_cds, "_make", lambda java, path: path.write_bytes(b"archive"))
    assert kafka_cds.ensure(java, report=lambda _: None, retry_failed=True) == archive
    assert not archive.with_suffix(".failed").exists()


# -- storage templates ------------------------------------------------------------------------


def _properties(data: Path, external: int = 40000, **overrides: str) -> dict[str, str]:
    env = kafka_environment("ns", "kafka", external)
    ports = {KAFKA_EXTERNAL_PORT: external, KAFKA_INTERNAL_PORT: external + 1}
    return {**kafka_runtime.server_properties(env, ports, data), **overrides}


def test_brokers_differing_only_in_ports_and_data_dir_share_a_template(cache: Path) -> None:
    one = _properties(Path("/w0/data"), 40000)
    two = _properties(Path("/worker-12/data"), 41234)
    assert one["listeners"] != two["listeners"]
    assert kafka_runtime.storage_template_key(one) == kafka_runtime.storage_template_key(two)


@pytest.mark.parametrize(
    ("name", "value"),
    [("cluster.id", "another-cluster-id"), ("node.id", "2"), ("process.roles", "broker")],
)
def test_what_the_formatter_writes_from_changes_the_template(cache: Path, name: str, value: str) -> None:
    data = Path("/w0/data")
    assert kafka_runtime.storage_template_key(_properties(data)) != kafka_runtime.storage_template_key(
        _properties(data, **{name: value})
    )


@pytest.mark.parametrize("overrides", [{"log.dirs": "/a,/b"}, {"metadata.log.dir": "/meta"}])
def test_layouts_a_template_does_not_cover_go_to_the_formatter(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str]
) -> None:
    properties = _properties(tmp_path / "data", **overrides)
    assert kafka_runtime.storage_template_key(properties) is None
    formatted: list[Path] = []
    monkeypatch.setattr(kafka_runtime, "format_storage", lambda java, conf, *_: formatted.append(conf))
    kafka_runtime.prepare_storage("java", properties, tmp_path / "server.properties", tmp_path / "log4j")
    assert formatted == [tmp_path / "server.properties"], "formatted in place, with the broker's own config"


def test_the_formatter_runs_once_per_template_and_every_broker_gets_a_copy(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[Path] = []

    def fake_format(java: str, conf: Path, cluster_id: str, log4j: Path, jvm: object) -> None:
        data = Path(dict(line.split("=", 1) for line in conf.read_text().splitlines())["log.dirs"])
        data.mkdir(parents=True)
        (data / "meta.properties").write_text(f"cluster.id={cluster_id}\n")
        runs.append(data)

    monkeypatch.setattr(kafka_runtime, "format_storage", fake_format)
    for worker in ("w0", "w1"):
        properties = _properties(tmp_path / worker / "data")
        kafka_runtime.prepare_storage("java", properties, tmp_path / "conf", tmp_path / "log4j")
        copied = (tmp_path / worker / "data" / "meta.properties").read_text()
        assert copied == f"cluster.id={properties['cluster.id']}\n"
    assert len(runs) == 1
    assert not runs[0].exists(), "formatted in a staging folder, then renamed into place"


# -- the training's Metadata request ----------------------------------------------------------


def test_the_metadata_request_asks_for_the_topic_with_auto_creation() -> None:
    request = kafka_wire.frame(3, 4, 1, kafka_wire.metadata_body(["t"], True))
    (size,) = struct.unpack_from(">i", request)
    assert size == len(request) - 4
    assert struct.unpack_from(">hhih", request, 4) == (3, 4, 1, len(kafka_wire.CLIENT_ID))
    assert request.endswith(struct.pack(">i", 1) + b"\x00\x01t" + b"\x01")


def _metadata_response(topic_error: int) -> bytes:
    broker = struct.pack(">i", 1) + struct.pack(">h", 9) + b"localhost" + struct.pack(">ih", 9094, -1)
    cluster = struct.pack(">h", 4) + b"abcd" + struct.pack(">i", 1)
    topic = struct.pack(">hh", topic_error, 1) + b"t" + b"\x00" + struct.pack(">i", 0)
    return struct.pack(">ii", 0, 1) + broker + cluster + struct.pack(">i", 1) + topic


def test_the_topic_error_is_read_past_brokers_cluster_id_and_controller() -> None:
    assert kafka_wire.first_topic_error(_metadata_response(0)) == 0
    assert kafka_wire.first_topic_error(_metadata_response(5)) == 5  # LEADER_NOT_AVAILABLE


def _answer_with(response: bytes) -> int:
    server = socket.create_server(("127.0.0.1", 0))
    port: int = server.getsockname()[1]

    def handle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            correlated = struct.pack(">i", 1) + response
            conn.sendall(struct.pack(">i", len(correlated)) + correlated)
        server.close()

    threading.Thread(target=handle, daemon=True).start()
    return port


def test_topic_ready_once_the_broker_reports_the_topic_without_error() -> None:
    assert kafka_wire.topic_ready(_answer_with(_metadata_response(0)), "t") is True
    assert kafka_wire.topic_ready(_answer_with(_metadata_response(5)), "t") is False


# -- the image's training configuration -------------------------------------------------------


def test_the_image_trains_with_the_operators_kafka_environment() -> None:
    lines = imagebuild.kafka_training_env().splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert env["KAFKA_LISTENERS"] == kafka_environment("x", "kafka", 1)["KAFKA_LISTENERS"]
    assert env["CLUSTER_ID"] == kafka_environment("x", "kafka", 1)["CLUSTER_ID"]
    assert "kafka-training" in imagebuild.IMAGES["kafka"].extras
