"""Broker building blocks without a worker: envelopes, replies, key names, URLs, heartbeats."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest
from redis.crc import key_slot

from spark.broker import ServiceQueue, registry
from spark.broker.connection import (
    ENV_URL,
    MEMORY_URL,
    connect,
    describe,
    is_memory,
    resolve_url,
)
from spark.broker.envelope import (
    FIELD,
    Envelope,
    decode_reply,
    encode_error,
    encode_result,
    retag_reply,
)
from spark.broker.keys import (
    GROUP,
    SERVICES,
    ServiceKeys,
    check_name,
    client_channel,
    reply_key,
    state_key,
)
from spark.errors import (
    INTERNAL_ERROR,
    InternalError,
    InvalidParamsError,
    InvalidRequestError,
    MethodNotFoundError,
    RpcError,
    RpcTimeoutError,
    ServerError,
)


@pytest.fixture
def url(memory_url) -> str:
    # Test names repeat across files; the embedded broker is process-wide, keyed by name.
    return f"{memory_url}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def redis(url):
    client = connect(url)
    try:
        yield client
    finally:
        await client.aclose()


# -- envelopes ----------------------------------------------------------------------


def test_envelope_round_trip_with_every_field():
    env = Envelope(
        id="1f",
        method="user.create",
        params={"name": "ada", "tags": [1, 2.5, None, True]},
        reply_to="client-1",
        deadline=1700000000.25,
        idempotency_key="idem-1",
        state="ns-1",
        enqueued_at=1699999999.5,
    )
    raw = env.encode()
    assert isinstance(raw, bytes)
    assert Envelope.decode(raw) == env


def test_envelope_round_trip_with_array_params():
    env = Envelope(id="2", method="add", params=[1, 2])
    assert Envelope.decode(env.encode()) == env


def test_envelope_encode_omits_unset_fields():
    doc = orjson.loads(Envelope(id="7", method="ping").encode())
    assert doc == {"id": "7", "method": "ping"}
    back = Envelope.decode(Envelope(id="7", method="ping").encode())
    assert back.params is None
    assert back.reply_to is None
    assert back.deadline is None
    assert back.idempotency_key is None
    assert back.state is None


def test_envelope_keeps_empty_params():
    # {} and [] are params (a call with no arguments), not "no params".
    assert Envelope.decode(Envelope(id="1", method="m", params={}).encode()).params == {}
    assert Envelope.decode(Envelope(id="1", method="m", params=[]).encode()).params == []


def test_envelope_integer_deadline_is_accepted():
    assert Envelope.decode(b'{"id":"1","method":"m","deadline":1700000000}').deadline == 1700000000


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="garbage"),
        pytest.param(b'{"id": "1", "method": ', id="truncated"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_envelope_rejects_non_json(raw):
    with pytest.raises(InvalidRequestError, match="not JSON"):
        Envelope.decode(raw)


@pytest.mark.parametrize("raw", [b"[]", b'["1", "m"]', b'"text"', b"42", b"null", b"true"])
def test_envelope_rejects_non_objects(raw):
    with pytest.raises(InvalidRequestError, match="not an object"):
        Envelope.decode(raw)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"method": "m"}, id="no-id"),
        pytest.param({"id": "1"}, id="no-method"),
        pytest.param({}, id="neither"),
        pytest.param({"id": 1, "method": "m"}, id="int-id"),
        pytest.param({"id": None, "method": "m"}, id="null-id"),
        pytest.param({"id": "1", "method": 5}, id="int-method"),
        pytest.param({"id": "1", "method": ["m"]}, id="list-method"),
    ],
)
def test_envelope_rejects_missing_or_bad_id_and_method(doc):
    with pytest.raises(InvalidRequestError, match="id and method"):
        Envelope.decode(orjson.dumps(doc))


@pytest.mark.parametrize("params", ["text", 5, 1.5, True])
def test_envelope_rejects_scalar_params(params):
    with pytest.raises(InvalidRequestError, match="params"):
        Envelope.decode(orjson.dumps({"id": "1", "method": "m", "params": params}))


@pytest.mark.parametrize("deadline", ["soon", "1700000000", [1], {"at": 1}])
def test_envelope_rejects_non_numeric_deadline(deadline):
    with pytest.raises(InvalidRequestError, match="deadline"):
        Envelope.decode(orjson.dumps({"id": "1", "method": "m", "deadline": deadline}))


@pytest.mark.parametrize("field", ["reply_to", "idempotency_key", "state"])
@pytest.mark.parametrize("value", [5, ["x"], {"x": 1}])
def test_envelope_rejects_non_string_routing_fields(field, value):
    with pytest.raises(InvalidRequestError, match=field):
        Envelope.decode(orjson.dumps({"id": "1", "method": "m", field: value}))


def test_envelope_rejection_is_an_invalid_request_error_code():
    with pytest.raises(InvalidRequestError) as info:
        Envelope.decode(b"{}")
    assert info.value.to_dict()["code"] == -32600


def test_envelope_stream_field_is_e():
    assert FIELD == b"e"


# -- replies ------------------------------------------------------------------------


def test_decode_reply_result():
    assert decode_reply(encode_result("9", {"ok": [1, 2]})) == ("9", {"ok": [1, 2]}, None)


def test_decode_reply_null_result():
    assert decode_reply(encode_result("9", None)) == ("9", None, None)


@pytest.mark.parametrize(
    "error",
    [
        MethodNotFoundError(data={"method": "nope"}),
        InvalidParamsError("bad", data={"field": "x"}),
        InternalError(),
        RpcTimeoutError("slow", data={"service": "s"}),
    ],
    ids=lambda e: type(e).__name__,
)
def test_decode_reply_error_gives_the_specific_class(error):
    rid, result, err = decode_reply(encode_error("3", error))
    assert rid == "3"
    assert result is None
    assert type(err) is type(error)
    assert err.to_dict() == error.to_dict()


def test_decode_reply_unknown_server_code_is_a_server_error():
    rid, _, err = decode_reply(b'{"id": "4", "error": {"code": -32050, "message": "odd"}}')
    assert rid == "4"
    assert isinstance(err, ServerError)
    assert err.code == -32050
    assert err.message == "odd"


def test_decode_reply_malformed_error_object():
    _, _, err = decode_reply(b'{"id": "4", "error": "boom"}')
    assert isinstance(err, InternalError)


@pytest.mark.parametrize(
    "raw", [b"garbage", b"", b"[1, 2]", b'"text"', b"42", b"null", b'{"result": 1}']
)
def test_decode_reply_malformed(raw):
    rid, result, err = decode_reply(raw)
    assert rid is None
    assert result is None
    assert isinstance(err, RpcError)
    assert err.code == INTERNAL_ERROR


def test_retag_reply_changes_only_the_id():
    stored = encode_result("first", {"value": 1})
    assert decode_reply(retag_reply(stored, "second")) == ("second", {"value": 1}, None)
    stored_err = encode_error("first", InvalidParamsError(data={"x": 1}))
    rid, _, err = decode_reply(retag_reply(stored_err, "again"))
    assert rid == "again"
    assert isinstance(err, InvalidParamsError)
    assert err.data == {"x": 1}


# -- keys ---------------------------------------------------------------------------


def test_service_keys_share_one_hash_tag():
    keys = ServiceKeys.for_service("billing")
    assert keys.service == "billing"
    assert keys.requests == "spark:{billing}:requests"
    assert keys.dead == "spark:{billing}:dead"
    assert keys.workers == "spark:{billing}:workers"
    assert keys.worker_info == "spark:{billing}:worker-info"
    assert keys.cancel == "spark:{billing}:cancel"
    assert keys.notify == "spark:notify:{billing}"
    assert keys.result("k-1") == "spark:{billing}:result:k-1"
    every = [
        keys.requests,
        keys.dead,
        keys.workers,
        keys.worker_info,
        keys.cancel,
        keys.result("k"),
    ]
    assert {key_slot(k.encode()) for k in every} == {key_slot(b"billing")}


def test_services_spread_over_slots():
    slots = {key_slot(ServiceKeys.for_service(f"svc-{i}").requests.encode()) for i in range(20)}
    assert len(slots) > 1


def test_result_key_keeps_the_service_tag_whatever_the_idempotency_key():
    key = ServiceKeys.for_service("svc").result("a{other}b:c")
    assert key_slot(key.encode()) == key_slot(b"svc")


def test_client_and_state_keys():
    assert reply_key("c1") == "spark:reply:{c1}"
    assert client_channel("c1") == "spark:notify:client:c1"
    assert state_key("ns") == "spark:state:{ns}"


def test_the_readme_keyspace_names_what_the_code_uses():
    """One name for one thing: the operator-facing names in the README are the code's."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    keys = ServiceKeys.for_service("svc")  # the README writes the service as {svc}
    assert f"| `{keys.requests}` | stream, group `{GROUP}` |" in readme
    assert f"| `{SERVICES}` | set |" in readme


@pytest.mark.parametrize(
    "name", ["a", "A", "0", "svc", "user-service", "user_service", "v1.2", "x" * 64]
)
def test_check_name_accepts(name):
    assert check_name("service name", name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("-svc", id="leading-dash"),
        pytest.param("_svc", id="leading-underscore"),
        pytest.param(".svc", id="leading-dot"),
        pytest.param("a b", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("a:b", id="colon"),
        pytest.param("a{b}", id="braces"),
        pytest.param("a*", id="glob"),
        pytest.param("é", id="non-ascii"),
        pytest.param("x" * 65, id="too-long"),
        pytest.param("a\tb", id="tab"),
        pytest.param(None, id="none"),
        pytest.param(5, id="int"),
        pytest.param(b"svc", id="bytes"),
    ],
)
def test_check_name_rejects(name):
    with pytest.raises(ValueError, match="invalid service name"):
        check_name("service name", name)


@pytest.mark.parametrize("name", ["svc\n", "a" * 64 + "\n"])
def test_check_name_rejects_trailing_newline(name):
    with pytest.raises(ValueError):
        check_name("service name", name)


def test_service_keys_check_the_name():
    with pytest.raises(ValueError):
        ServiceKeys.for_service("bad name")


# -- URLs ---------------------------------------------------------------------------


def test_resolve_url_explicit_wins(monkeypatch):
    monkeypatch.setenv(ENV_URL, "redis://env-host:6379/0")
    assert resolve_url("redis://explicit:6379/1") == "redis://explicit:6379/1"


def test_resolve_url_env_beats_default(monkeypatch):
    monkeypatch.setenv(ENV_URL, "redis://env-host:6379/0")
    assert resolve_url(None) == "redis://env-host:6379/0"
    assert resolve_url("") == "redis://env-host:6379/0"
    assert resolve_url(None, default="redis://other/0") == "redis://env-host:6379/0"


@pytest.fixture
def local_redis(monkeypatch):
    """Set whether a Redis 'answers' on localhost:6379, for the default rule."""
    import spark.broker.connection as connection

    def set_listening(listening: bool) -> None:
        monkeypatch.setattr(connection, "_local_redis_listens", lambda: listening)
        connection.default_url.cache_clear()

    yield set_listening
    connection.default_url.cache_clear()


def test_resolve_url_defaults_to_embedded_broker(monkeypatch, local_redis, caplog):
    local_redis(False)
    monkeypatch.delenv(ENV_URL, raising=False)
    assert resolve_url() == MEMORY_URL == "memory://"
    assert resolve_url() == MEMORY_URL
    assert caplog.text.count("embedded broker") == 1  # said once
    assert resolve_url(None, default="redis://fallback/0") == "redis://fallback/0"


def test_resolve_url_defaults_to_a_local_redis_when_one_answers(monkeypatch, local_redis):
    from spark.cli.common import cli_redis_url

    local_redis(True)
    monkeypatch.delenv(ENV_URL, raising=False)
    assert resolve_url() == "redis://localhost:6379/0" == cli_redis_url(None)


def test_resolve_url_ignores_empty_env(monkeypatch, local_redis):
    local_redis(False)
    monkeypatch.setenv(ENV_URL, "")
    assert resolve_url() == MEMORY_URL


def test_is_memory():
    assert is_memory("memory://")
    assert is_memory("memory://named")
    assert not is_memory("redis://localhost")
    assert not is_memory("rediss://localhost")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:hunter2@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://default:p%40ss@host:6380/2", "rediss://default:***@host:6380/2"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("memory://", "memory://"),
    ],
)
def test_describe_hides_passwords(url, shown):
    assert describe(url) == shown


def test_describe_hides_password_query_argument():
    assert "hunter2" not in describe("redis://host:6379/0?password=hunter2")


async def test_memory_urls_with_the_same_name_share_one_broker(url):
    a, b = connect(url), connect(url)
    other = connect(f"{url}-other")
    try:
        await a.set("k", "v")
        assert await b.get("k") == b"v"
        assert await other.get("k") is None
    finally:
        for c in (a, b, other):
            await c.aclose()


async def test_memory_url_with_brackets_connects():
    client = connect(f"memory://test_case[param-{uuid.uuid4().hex[:6]}]")
    try:
        assert await client.ping()
    finally:
        await client.aclose()


# -- worker registry ------------------------------------------------------------------


async def test_registry_live_count_and_workers(redis):
    keys = ServiceKeys.for_service("reg")
    assert await registry.live_count(redis, keys) == 0
    await registry.beat(redis, keys, "w1", ttl=30, info={"pid": 1})
    await registry.beat(redis, keys, "w2", ttl=30, info={"pid": 2})
    assert await registry.live_count(redis, keys) == 2
    live = await registry.live_workers(redis, keys)
    assert set(live) == {"w1", "w2"}
    assert live["w1"]["pid"] == 1
    assert "at" in live["w1"]
    assert await registry.services(redis) == ["reg"]


async def test_registry_expired_heartbeat_is_not_live(redis):
    keys = ServiceKeys.for_service("reg")
    await registry.beat(redis, keys, "old", ttl=-1, info={})
    await registry.beat(redis, keys, "new", ttl=30, info={})
    assert await registry.live_count(redis, keys) == 1
    assert set(await registry.live_workers(redis, keys)) == {"new"}


async def test_registry_leave(redis):
    keys = ServiceKeys.for_service("reg")
    await registry.beat(redis, keys, "w1", ttl=30, info={})
    await registry.leave(redis, keys, "w1")
    assert await registry.live_count(redis, keys) == 0
    assert await redis.hlen(keys.worker_info) == 0


async def test_registry_prune_forgets_dead_workers_but_keeps_their_pending(redis):
    keys = ServiceKeys.for_service("reg")
    await redis.xgroup_create(keys.requests, GROUP, id="0", mkstream=True)
    await redis.xadd(keys.requests, {FIELD: b"{}"})
    # "busy" died holding an entry; "idle" died holding none; "alive" still beats.
    await redis.xreadgroup(GROUP, "busy", {keys.requests: ">"}, count=1)
    await redis.xgroup_createconsumer(keys.requests, GROUP, "idle")
    now = time.time()
    await registry.beat(redis, keys, "busy", ttl=-60, info={})
    await registry.beat(redis, keys, "idle", ttl=-60, info={})
    await registry.beat(redis, keys, "recent", ttl=-1, info={})
    await registry.beat(redis, keys, "alive", ttl=30, info={})

    pruned = await registry.prune(redis, keys, grace=10)

    assert sorted(pruned) == ["busy", "idle"]
    scores = dict(await redis.zrange(keys.workers, 0, -1, withscores=True))
    assert set(scores) == {b"recent", b"alive"}
    assert scores[b"recent"] < now
    assert set(await redis.hkeys(keys.worker_info)) == {b"recent", b"alive"}
    consumers = {c["name"]: c["pending"] for c in await redis.xinfo_consumers(keys.requests, GROUP)}
    # Deleting "busy" would drop the entry it holds: it must stay for reclaiming.
    assert consumers == {b"busy": 1}
    assert (await redis.xpending(keys.requests, GROUP))["pending"] == 1


async def test_registry_prune_without_group_or_dead_workers(redis):
    keys = ServiceKeys.for_service("reg")
    assert await registry.prune(redis, keys, grace=0) == []
    await registry.beat(redis, keys, "gone", ttl=-60, info={})
    # No stream or group yet: prune still forgets the worker.
    assert await registry.prune(redis, keys, grace=1) == ["gone"]
    assert await registry.live_count(redis, keys) == 0
    assert await redis.zcard(keys.workers) == 0


# -- the request stream's bound ---------------------------------------------------------


async def test_service_queue_refuses_past_max_backlog(redis):
    queue = ServiceQueue(redis, "bounded", max_backlog=2)
    envs = [Envelope(id=str(i), method="m").encode() for i in range(3)]
    ids = await queue.enqueue(envs)
    assert ids[0] is not None
    assert ids[1] is not None
    assert ids[2] is None
    assert await redis.xlen(queue.keys.requests) == 2
    # Refusing never drops what was accepted: the accepted entries are intact.
    stored = [fields[FIELD] for _, fields in await redis.xrange(queue.keys.requests)]
    assert stored == envs[:2]
    assert await queue.enqueue([envs[2]]) == [None]


async def test_service_queue_group_serves_entries_enqueued_before_it(redis):
    queue = ServiceQueue(redis, "early")
    [entry_id] = await queue.enqueue([Envelope(id="1", method="m").encode()])
    await queue.ensure_group()
    await queue.ensure_group()  # idempotent
    entries = await queue.read(redis, "c1", count=10, block_ms=1)
    assert [e.entry_id for e in entries] == [entry_id]
    assert Envelope.decode(entries[0].raw).id == "1"
    await queue.finish([entry_id])
    assert await queue.stats() == {"backlog": 0, "pending": 0, "dead": 0}
