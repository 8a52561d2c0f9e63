"""Keys and secrets: `medic keys create --queues / list / revoke`, the dev key `medic up` reuses,
and Flower's password kept off the command line."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from worker.ledger import apikeys, db
from worker.ledger.models import api_keys
from worker.ops import processes
from worker.ops.cli import main
from worker.settings import Settings


def _medic(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _rows(tenant: str) -> list[sa.Row[tuple[object, ...]]]:
    with db.connect() as conn:
        return list(conn.execute(sa.select(api_keys).where(api_keys.c.tenant == tenant)))


def test_keys_create_with_queues_list_and_revoke(medic_env: dict[str, str]) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    code, out = _medic("keys", "create", "--tenant", tenant, "--scopes", "submit", "--queues", "declared-extra,default")
    assert code == 0, out
    raw = out.strip().splitlines()[-1]
    with db.connect() as conn:
        key = apikeys.lookup(conn, raw)
    assert key is not None and key.queues == frozenset({"declared-extra", "default"})

    code, out = _medic("keys", "list", "--tenant", tenant)
    assert code == 0, out
    (row,) = _rows(tenant)
    assert str(row.id) in out and row.prefix in out and "declared-extra,default" in out and "active" in out
    assert raw not in out and row.key_hash not in out  # never the key, nor its hash

    code, out = _medic("keys", "revoke", str(row.id))
    assert code == 0, out
    with db.connect() as conn:
        assert apikeys.lookup(conn, raw) is None
    assert "revoked" in _medic("keys", "list", "--tenant", tenant)[1]
    assert _medic("keys", "revoke", str(row.id))[0] != 0  # already revoked: says so, exits non-zero
    assert _medic("keys", "revoke", str(uuid.uuid4()))[0] != 0


def test_keys_create_refuses_an_undeclared_or_internal_queue(medic_env: dict[str, str]) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    for queue in ("medic.control", "undeclared-queue"):
        code, out = _medic("keys", "create", "--tenant", tenant, "--queues", queue)
        assert code != 0 and "unknown queue" in out, out
    assert _rows(tenant) == []


def test_medic_up_reuses_its_dev_key_from_a_private_file(medic_env: dict[str, str], tmp_path: Path) -> None:
    from worker.ops.stack import dev_key

    path = tmp_path / "state" / "dev-key"
    with db.connect() as conn:
        before = len(apikeys.list_keys(conn, tenant="dev"))
    first = dev_key(path)
    second = dev_key(path)
    assert first == second
    with db.connect() as conn:
        assert len(apikeys.list_keys(conn, tenant="dev")) == before + 1
        key = apikeys.lookup(conn, first)
    assert key is not None and key.tenant == "dev" and key.allows(apikeys.Scope.ADMIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first

    with db.begin() as conn:  # revoked (or another ledger): a new key, and the file rewritten
        assert apikeys.revoke_key(conn, key.id)
    third = dev_key(path)
    assert third != first and path.read_text().strip() == third
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    path.write_text("mk_not-a-key\n")  # garbage: replaced, never trusted
    path.chmod(0o644)
    fourth = dev_key(path)
    assert fourth not in (first, third) and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_flower_password_is_in_the_environment_not_on_the_command_line() -> None:
    s = Settings(flower_user="ops", flower_password="s3cret-pw")
    argv = processes.flower_cmd(s, 5555)
    assert not any("s3cret-pw" in part for part in argv), argv
    assert not any("basic_auth" in part for part in argv), argv
    assert processes.flower_env(s) == {"FLOWER_BASIC_AUTH": "ops:s3cret-pw"}
