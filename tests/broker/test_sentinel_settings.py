"""MEDIC_REDIS_URL naming Redis Sentinels: the settings refuse what kombu or redis-py would
misread, and the broker and medic's own client both ask the Sentinels for the master."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from worker.broker.celery_app import celery_config
from worker.broker.redis_client import Target, _client_for, _close
from worker.settings import Settings, sentinel_nodes

SENTINELS = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"
STRONG = "a-real-secret-of-32-characters!!"


def test_a_sentinel_url_without_a_master_name_is_refused() -> None:
    with pytest.raises(ValueError, match="MEDIC_REDIS_SENTINEL_MASTER is empty"):
        Settings(redis_url=SENTINELS, redis_sentinel_master="")


def test_a_master_name_without_sentinels_is_refused() -> None:
    """Set alone it would be silently ignored: medic would talk to one Redis and never fail over."""
    with pytest.raises(ValueError, match="MEDIC_REDIS_URL is not a sentinel:// URL"):
        Settings(redis_url="redis://127.0.0.1:6379/0", redis_sentinel_master="mymaster")


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://10.0.0.1:26379;redis://10.0.0.2:6379",  # a plain Redis among the Sentinels
        "sentinel://10.0.0.1:26379;",  # an empty part
        "sentinel://:26379",  # no host
        "sentinel://10.0.0.1:port",  # no port number
    ],
)
def test_a_malformed_sentinel_list_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="is not a Sentinel address"):
        Settings(redis_url=url, redis_sentinel_master="mymaster")


def test_the_error_does_not_print_the_password() -> None:
    with pytest.raises(ValueError, match="is not a Sentinel address") as caught:
        Settings(redis_url="sentinel://:hunter2-hunter2-hunter2@h:26379;x", redis_sentinel_master="m")
    assert "hunter2" not in str(caught.value)


def test_every_sentinel_is_listed_with_the_default_port() -> None:
    assert sentinel_nodes(SENTINELS) == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]


def test_the_sentinel_password_counts_as_a_secret() -> None:
    with pytest.raises(ValueError, match="MEDIC_REDIS_SENTINEL_PASSWORD: a placeholder"):
        Settings(
            profile="production",
            redis_url=SENTINELS,
            redis_sentinel_master="mymaster",
            redis_sentinel_password="changeme",
            flower_password=STRONG,
            allow_weak_secrets=False,
        )
    with pytest.raises(ValueError, match="MEDIC_REDIS_URL password: a placeholder"):
        Settings(
            profile="production",
            redis_url="sentinel://:medic-dev@10.0.0.1:26379;sentinel://10.0.0.2:26379",
            redis_sentinel_master="mymaster",
            flower_password=STRONG,
            allow_weak_secrets=False,
        )


def test_the_broker_uses_kombus_sentinel_transport() -> None:
    s = Settings(redis_url=SENTINELS, redis_sentinel_master="mymaster", redis_sentinel_password=STRONG)
    conf = celery_config(s)
    assert conf["broker_url"] == SENTINELS
    options = conf["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == STRONG


def test_a_plain_url_keeps_the_plain_transport() -> None:
    conf = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0", redis_sentinel_master=""))
    assert "master_name" not in conf["broker_transport_options"]


def test_medics_own_client_follows_the_sentinels() -> None:
    """No connection is made here: the client's pool asks the Sentinels on its first command."""
    client = _client_for(Target("sentinel://:master-pw@10.0.0.1:26379/3;sentinel://10.0.0.2", "mymaster", STRONG))
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 3
        assert pool.connection_kwargs["password"] == "master-pw"
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379]
        assert all(s.connection_pool.connection_kwargs["password"] == STRONG for s in sentinels)
    finally:
        _close(client)
