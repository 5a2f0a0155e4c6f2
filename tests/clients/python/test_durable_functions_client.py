"""Durable Functions' Python client (azure-functions-durable 1.x) against Kiln's management API,
reached through the loopback listener as `rpcBaseUrl`, exactly as a Functions host would hand it."""
import asyncio
import datetime
import json
import os
import urllib.request

from azure.durable_functions import DurableOrchestrationClient, OrchestrationRuntimeStatus

MANAGEMENT = os.environ["KILN_MANAGEMENT"]
# The client keeps one aiohttp session for the process, bound to the loop that first used it.
LOOP = asyncio.new_event_loop()
BASE = f"{MANAGEMENT}/runtime/webhooks/durabletask"


def client():
    instance = f"{BASE}/instances/INSTANCEID"
    binding = {
        "taskHubName": "kiln",
        "creationUrls": {
            "createNewInstancePostUri": f"{BASE}/orchestrators/{{functionName}}[/{{instanceId}}]",
            "createAndWaitOnNewInstancePostUri": f"{BASE}/orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}",
        },
        "managementUrls": {
            "id": "INSTANCEID",
            "statusQueryGetUri": instance,
            "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}",
            "terminatePostUri": f"{instance}/terminate?reason={{text}}",
            "rewindPostUri": f"{instance}/rewind?reason={{text}}",
            "purgeHistoryDeleteUri": instance,
            "restartPostUri": f"{instance}/restart",
            "suspendPostUri": f"{instance}/suspend?reason={{text}}",
            "resumePostUri": f"{instance}/resume?reason={{text}}",
        },
        "baseUrl": BASE,
        "requiredQueryStringParameters": "",
        "rpcBaseUrl": f"{BASE}/",
    }
    return DurableOrchestrationClient(json.dumps(binding))


async def until(df, instance_id, statuses):
    for _ in range(300):
        status = await df.get_status(instance_id)
        if status.runtime_status in statuses:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{instance_id} never reached {statuses}")


DONE = [OrchestrationRuntimeStatus.Completed, OrchestrationRuntimeStatus.Failed, OrchestrationRuntimeStatus.Terminated]


def test_the_seed_starters_call_starts_the_job_by_its_documented_name():
    # The seed document's starter: client.start_new("report_job_orchestrator", None, body.model_dump()).
    async def scenario():
        df = client()
        body = {"customer_id": "cust-123", "operation": "rebuild-report", "delay_seconds": 0}
        instance_id = await df.start_new("report_job_orchestrator", None, body)
        status = await until(df, instance_id, DONE)
        assert status.runtime_status == OrchestrationRuntimeStatus.Completed
        assert status.name == "report_job_orchestrator"
        assert status.output == {
            "status": "completed",
            "instanceId": instance_id,
            "result": {"customerId": "cust-123", "operation": "rebuild-report"},
        }

    LOOP.run_until_complete(scenario())


def test_start_status_and_list():
    async def scenario():
        df = client()
        instance_id = await df.start_new("report_job", None, {"customer_id": "dfpy", "operation": "weekly", "delay_seconds": 0})
        status = await until(df, instance_id, DONE)
        assert status.runtime_status == OrchestrationRuntimeStatus.Completed
        assert status.output["result"] == {"customerId": "dfpy", "operation": "weekly"}
        assert status.name == "report_job"
        chosen = await df.start_new("report_job", "dfpy-chosen", {"customer_id": "x", "operation": "daily", "delay_seconds": 0})
        assert chosen == "dfpy-chosen"
        await until(df, chosen, DONE)
        everything = await df.get_status_all()
        assert {s.instance_id for s in everything} >= {instance_id, chosen}
        completed = await df.get_status_by(runtime_status=[OrchestrationRuntimeStatus.Completed])
        assert all(s.runtime_status == OrchestrationRuntimeStatus.Completed for s in completed)
        missing = await df.get_status("no-such-instance")
        assert not missing

    LOOP.run_until_complete(scenario())


def test_events_terminate_suspend_resume():
    async def scenario():
        df = client()
        approved = await df.start_new("approval", None, {"subject": "dfpy", "timeout_seconds": 600})
        await until(df, approved, [OrchestrationRuntimeStatus.Running])
        await df.suspend(approved, "pause")
        await until(df, approved, [OrchestrationRuntimeStatus.Suspended])
        await df.resume(approved, "go on")
        await until(df, approved, [OrchestrationRuntimeStatus.Running])
        await df.raise_event(approved, "Approval", {"approved": True, "by": "python"})
        status = await until(df, approved, DONE)
        assert status.output == {"outcome": "approved", "by": "python"}

        stopped = await df.start_new("approval", None, {"subject": "stop", "timeout_seconds": 600})
        await until(df, stopped, [OrchestrationRuntimeStatus.Running])
        await df.terminate(stopped, "no longer needed")
        status = await until(df, stopped, DONE)
        assert status.runtime_status == OrchestrationRuntimeStatus.Terminated
        assert status.output == "no longer needed"

    LOOP.run_until_complete(scenario())


def test_rewind_and_purge():
    async def scenario():
        df = client()
        failed = await df.start_new("report_job", None, {"customer_id": "closed-dfpy", "delay_seconds": 0})
        status = await until(df, failed, DONE)
        assert status.runtime_status == OrchestrationRuntimeStatus.Failed
        await df.rewind(failed, "try again")
        # The client's status object drops `historyEvents`, so look at the history directly.
        for _ in range(300):
            with urllib.request.urlopen(f"{BASE}/instances/{failed}?showHistory=true") as response:
                raw = json.load(response)
            rewound = any(e["EventType"] == "ExecutionRewound" for e in raw.get("historyEvents", []))
            if rewound and raw["runtimeStatus"] == "Failed":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the rewind never ran")
        result = await df.purge_instance_history(failed)
        assert result.instances_deleted == 1
        gone = await df.purge_instance_history(failed)
        assert gone.instances_deleted == 0
        done = await df.start_new("report_job", None, {"customer_id": "p", "operation": "daily", "delay_seconds": 0})
        await until(df, done, DONE)
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
        purged = await df.purge_instance_history_by(created_time_from=since, runtime_status=[OrchestrationRuntimeStatus.Completed])
        assert purged.instances_deleted >= 1

    LOOP.run_until_complete(scenario())
