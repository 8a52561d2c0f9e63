"""medic's Lua scripts: one `.lua` file each, read once and run with EVALSHA (`register_script`),
so a call sends the script's hash, not its text."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from redis.commands.core import Script

from worker.broker.redis_client import get_redis


@cache
def _script(name: str) -> Script:
    source = files(__package__).joinpath(f"{name}.lua").read_text()
    return get_redis().register_script(source)


def run_script(name: str, keys: list[str], args: list[Any]) -> Any:
    """Run script `name` on this process's client (it is loaded into Redis on its first call)."""
    return _script(name)(keys=keys, args=args, client=get_redis())
