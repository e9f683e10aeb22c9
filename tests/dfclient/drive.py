"""Drive duro with the real Durable Functions Python client.

`azure-functions-durable`'s DurableOrchestrationClient speaks the management
API when its binding's rpcBaseUrl points at duro's
/runtime/webhooks/durabletask/. This script uses it as an app would: start,
status, raise, list by filters, terminate, suspend, resume, restart and
purge, and signal_entity / read_entity_state, against a running `duro serve` of
the scenario app with the test entities.

Usage: python drive.py http://127.0.0.1:PORT [ADMIN_KEY]

With an admin key, every request the client's HTTP sessions make carries it
as `Authorization: Bearer`, as a deployment would configure the client's
session (the client has no setting of its own for a key on rpcBaseUrl).
Prints one line per check and "N passed, N failed" at the end; exits 1 if
any check failed.
"""

import asyncio
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

import aiohttp
from azure.durable_functions import (DurableOrchestrationClient, EntityId,
                                     OrchestrationRuntimeStatus)


def send_admin_key(key):
    """Every aiohttp session the client opens sends `key` as a bearer token."""
    opened = aiohttp.ClientSession.__init__

    def with_key(self, *args, **kwargs):
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Authorization", f"Bearer {key}")
        opened(self, *args, headers=headers, **kwargs)

    aiohttp.ClientSession.__init__ = with_key

PASSED = []
FAILED = []


def check(name, ok, detail=""):
    (PASSED if ok else FAILED).append(name)
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)


async def wait_for(client, instance_id, statuses, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        status = await client.get_status(instance_id)
        if status.runtime_status in statuses or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


async def expect_error(coro):
    try:
        await coro
    except Exception as e:  # the client raises plain Exceptions
        return str(e)
    return None


async def main(base):
    binding = json.dumps({
        "taskHubName": "duro",
        "creationUrls": {},
        "managementUrls": {},
        "rpcBaseUrl": f"{base}/runtime/webhooks/durabletask/",
    })
    client = DurableOrchestrationClient(binding)
    since = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=1)
    Running = OrchestrationRuntimeStatus.Running
    Completed = OrchestrationRuntimeStatus.Completed

    # start_new + get_status
    a = await client.start_new("Workflow", None, "py-a")
    check("start_new returns an id", isinstance(a, str) and len(a) > 0, a)
    status = await wait_for(client, a, [Running])
    check("get_status sees Running", status.runtime_status == Running, status.to_json())
    check("get_status has the name", status.name == "Workflow", status.to_json())
    check("get_status has a created time", status.created_time is not None, status.to_json())
    # The client serialises the input before posting it as JSON, so duro
    # stores the JSON text of the input as a string (as Durable Functions does).
    check("get_status has the input", status.input_ in ("py-a", '"py-a"'), status.input_)

    b = await client.start_new("Workflow", "py-fixed-id", "py-b")
    check("start_new with an instance id", b == "py-fixed-id", b)
    error = await expect_error(client.start_new("NoSuchOrchestration", None, 1))
    check("start_new of an unknown orchestration raises its message",
          error is not None and "NoSuchOrchestration" in error, error)

    missing = await client.get_status("py-no-such-instance")
    check("get_status of an unknown id is empty", not missing, vars(missing))

    # raise_event completes the Workflow
    await client.raise_event(a, "Workflow", "go")
    status = await wait_for(client, a, [Completed])
    check("raise_event completes the orchestration", status.runtime_status == Completed,
          status.to_json())
    check("the output is the orchestration's", isinstance(status.output, str)
          and status.output.startswith("Workflow for"), status.output)
    error = await expect_error(client.raise_event(a, "Workflow", "late"))
    check("raise_event on a finished instance raises (410)", error is not None
          and "gone" in error, error)
    error = await expect_error(client.raise_event("py-no-such-instance", "Workflow", 1))
    check("raise_event on an unknown id raises (404)", error is not None
          and "No instance" in error, error)

    # listing: all, by status, by time and by prefix (trailing-slash route)
    everything = await client.get_status_all()
    ids = {s.instance_id for s in everything}
    check("get_status_all lists both", {a, b} <= ids, ids)
    running = await client.get_status_by(runtime_status=[Running])
    check("get_status_by(status) filters", b in {s.instance_id for s in running}
          and a not in {s.instance_id for s in running}, [s.instance_id for s in running])
    recent = await client.get_status_by(created_time_from=since,
                                        created_time_to=datetime.utcnow() + timedelta(minutes=1))
    check("get_status_by(time window) filters", {a, b} <= {s.instance_id for s in recent},
          [s.instance_id for s in recent])
    future = await client.get_status_by(created_time_from=datetime.utcnow() + timedelta(days=1))
    check("get_status_by(future window) is empty", future == [], future)
    by_prefix = await client.get_status_by(instance_id_prefix="py-fixed")
    check("get_status_by(prefix) filters", [s.instance_id for s in by_prefix] == [b],
          [s.instance_id for s in by_prefix])

    # suspend / resume
    await client.suspend(b, "pause")
    status = await wait_for(client, b, [OrchestrationRuntimeStatus.Suspended])
    check("suspend", status.runtime_status == OrchestrationRuntimeStatus.Suspended,
          status.to_json())
    await client.resume(b, "go on")
    status = await wait_for(client, b, [Running])
    check("resume", status.runtime_status == Running, status.to_json())

    # purge of a running instance is refused (412), of a finished one works
    error = await expect_error(client.purge_instance_history(b))
    check("purge of a running instance raises (412)", error is not None and "412" in error,
          error)

    # terminate
    await client.terminate(b, "enough")
    status = await wait_for(client, b, [OrchestrationRuntimeStatus.Terminated])
    check("terminate", status.runtime_status == OrchestrationRuntimeStatus.Terminated,
          status.to_json())
    error = await expect_error(client.terminate("py-no-such-instance", "x"))
    check("terminate of an unknown id raises (404)", error is not None
          and "No instance" in error, error)

    # restart, with a new id and with the same one
    restarted = await client.restart(a, restart_with_new_instance_id=True)
    new_id = restarted["id"] if isinstance(restarted, dict) else restarted
    check("restart with a new id", isinstance(new_id, str) and new_id != a, restarted)
    status = await wait_for(client, new_id, [Running])
    check("the restarted instance runs with the same input",
          status.runtime_status == Running and status.input_ in ("py-a", '"py-a"'),
          status.to_json())
    same = await client.restart(b, restart_with_new_instance_id=False)
    same_id = same["id"] if isinstance(same, dict) else same
    check("restart under the same id", same_id == b, same)
    status = await wait_for(client, b, [Running])
    check("the same id runs again", status.runtime_status == Running, status.to_json())
    error = await expect_error(client.restart("py-no-such-instance"))
    check("restart of an unknown id raises (404)", error is not None
          and "No instance" in error, error)

    # purge one, then purge by filter
    result = await client.purge_instance_history(a)
    check("purge_instance_history of a finished instance", result.instances_deleted == 1,
          result.instances_deleted)
    result = await client.purge_instance_history("py-no-such-instance")
    check("purge_instance_history of an unknown id deletes nothing",
          result.instances_deleted == 0, result.instances_deleted)
    for instance_id in (new_id, b):
        await client.terminate(instance_id, "cleanup")
        await wait_for(client, instance_id, [OrchestrationRuntimeStatus.Terminated])
    result = await client.purge_instance_history_by(
        created_time_from=since,
        runtime_status=[OrchestrationRuntimeStatus.Terminated])
    check("purge_instance_history_by(time, status)", result.instances_deleted == 2,
          result.instances_deleted)
    left = await client.get_status_all()
    check("nothing is left", [s.instance_id for s in left] == [],
          [s.instance_id for s in left])

    # entities: signal_entity twice, then read_entity_state until both ran
    counter = EntityId("Counter", "py")
    await client.signal_entity(counter, "add", 5)
    await client.signal_entity(counter, "add", 2)
    deadline = time.monotonic() + 30
    while True:
        read = await client.read_entity_state(counter)
        if (read.entity_exists and read.entity_state == 7) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    check("signal_entity then read_entity_state", read.entity_exists
          and read.entity_state == 7, vars(read))
    missing = await client.read_entity_state(EntityId("Counter", "py-never"))
    check("read_entity_state of an entity without state", not missing.entity_exists,
          vars(missing))
    error = await expect_error(client.signal_entity(EntityId("NoSuchEntity", "x"), "add", 1))
    check("signal_entity of an unknown entity raises", error is not None, error)
    left = await client.get_status_all()
    check("entities are not listed as instances", [s.instance_id for s in left] == [],
          [s.instance_id for s in left])

    print(f"{len(PASSED)} passed, {len(FAILED)} failed", flush=True)
    try:  # the client keeps one aiohttp session; close it politely
        from azure.durable_functions.models.utils import http_utils
        await http_utils._close_session()
    except Exception:
        pass
    return 1 if FAILED else 0


if __name__ == "__main__":
    if len(sys.argv) > 2:
        send_admin_key(sys.argv[2])
    sys.exit(asyncio.run(main(sys.argv[1].rstrip("/"))))
