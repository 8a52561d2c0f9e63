"""Secrets and exposure (issue 18, item 7): Flower credentials that Flower would split, weak
secrets under the production profile, worker /metrics without a token, URLs printed with their
passwords."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from worker.ops.stack import _banner, redacted
from worker.settings import Settings
from worker.testing.processes import Processes, free_port, wait_for

BIN = Path(sys.executable).parent
STRONG = "a-real-secret-of-32-characters!!"


def test_a_comma_in_the_flower_password_or_user_is_refused() -> None:
    """Flower splits FLOWER_BASIC_AUTH on ','; `medic:Tr0ub4dor,3` would let `Basic base64("3")` in."""
    for profile in ("fast", "production"):
        with pytest.raises(ValueError, match="MEDIC_FLOWER_PASSWORD contains ','"):
            Settings(profile=profile, flower_password="Tr0ub4dor,3", allow_weak_secrets=True)
    with pytest.raises(ValueError, match="MEDIC_FLOWER_USER contains ','"):
        Settings(flower_user="ops,x", flower_password=STRONG)
    with pytest.raises(ValueError, match="MEDIC_FLOWER_USER contains ':'"):
        Settings(flower_user="ops:x", flower_password=STRONG)


def _flower_answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        return True
    try:
        return httpx.get(url + "/healthcheck", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_flower_never_lets_in_the_part_after_a_comma(medic_env: dict[str, str], tmp_path: Path) -> None:
    """Given `medic flower` with the password `Tr0ub4dor,3`, Then either it refuses to start, or
    `Basic base64("3")` is refused (before the fix: Flower ran and let it in, 200)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**medic_env, "MEDIC_FLOWER_USER": "medic", "MEDIC_FLOWER_PASSWORD": "Tr0ub4dor,3"}
    log = tmp_path / "flower.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "medic"), "flower", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _flower_answers(url, proc), 30, 0.2, "flower up or gone")
        if proc.poll() is None:
            only_three = base64.b64encode(b"3").decode()
            response = httpx.get(url + "/api/workers", headers={"Authorization": f"Basic {only_three}"}, timeout=5)
            assert response.status_code == 401, "Basic base64('3') got into Flower"
        assert proc.poll() not in (None, 0)
        assert "MEDIC_FLOWER_PASSWORD contains ','" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metrics_token", "change-me-metrics-token"),
        ("metrics_token", "x"),
        ("flower_password", "medic-dev"),
        ("flower_password", "change-me-flower"),
        ("flower_password", "short-but-real"),
        ("database_url", "postgresql+psycopg2://medic:change-me@postgres:5432/medic"),
        ("redis_url", "redis://:hunter2@redis:6379/0"),
    ],
)
def test_production_refuses_placeholders_and_short_secrets(field: str, value: str) -> None:
    with pytest.raises(ValueError, match="weak secrets under MEDIC_PROFILE=production"):
        Settings(profile="production", **{field: value})  # type: ignore[arg-type]
    # a demo on one host may (medic up), and the fast profile is for tests
    Settings(profile="production", allow_weak_secrets=True, **{field: value})  # type: ignore[arg-type]
    Settings(profile="fast", **{field: value})  # type: ignore[arg-type]


def test_production_accepts_real_secrets_and_none() -> None:
    Settings(profile="production")
    Settings(
        profile="production",
        metrics_token=STRONG,
        flower_password=STRONG,
        database_url=f"postgresql+psycopg2://medic:{STRONG}@postgres:5432/medic",
    )


def test_worker_metrics_listen_on_loopback_unless_a_token_guards_them() -> None:
    assert Settings(profile="production").metrics_host == "127.0.0.1"
    with pytest.raises(ValueError, match=r"MEDIC_METRICS_HOST is 0\.0\.0\.0 and MEDIC_METRICS_TOKEN is empty"):
        Settings(profile="production", metrics_host="0.0.0.0")
    assert Settings(profile="production", metrics_host="0.0.0.0", metrics_token=STRONG).metrics_token == STRONG


def _listening_on(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_a_real_workers_metrics_refuse_a_scrape_without_the_token(procs: Processes) -> None:
    port, token = free_port(), f"tok-{uuid.uuid4().hex}"
    procs.worker("metrics-token", queues=f"q-tok-{uuid.uuid4().hex[:6]}", concurrency=1,
                 MEDIC_METRICS_PORT=str(port), MEDIC_METRICS_TOKEN=token)  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: _listening_on(port), 20, 0.1, "metrics port")
    assert _listening_on(port) == {"127.0.0.1"}  # loopback by default
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    served = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/plain")


def test_the_banner_prints_no_password() -> None:
    s = Settings(
        profile="fast",
        redis_url="redis://:r3dis-Secret-pw@redis.example:6379/0",
        database_url="postgresql+psycopg2://medic:pg-Secret-pw@db.example:5432/medic",
        flower_password="medic-dev",
    )
    text = _banner(s, api_url="http://127.0.0.1:8000", flower_port=5555, dev_key="mk_x")
    assert "r3dis-Secret-pw" not in text and "pg-Secret-pw" not in text
    assert "redis://:***@redis.example:6379/0" in text
    assert "postgresql+psycopg2://medic:***@db.example:5432/medic" in text
    assert redacted("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
