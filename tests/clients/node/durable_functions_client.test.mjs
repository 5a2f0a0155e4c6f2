// Durable Functions' Node client (durable-functions 3.x) against Kiln's management API, reached
// through the loopback listener as `rpcBaseUrl`. Run by tests/clients/run.sh with `node --test`.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";

const require = createRequire(`${process.env.KILN_NODE_MODULES}/`);
const { DurableClient } = require("durable-functions/lib/src/durableClient/DurableClient");
const { OrchestrationClientInputData } = require("durable-functions/lib/src/durableClient/OrchestrationClientInputData");
const { OrchestrationRuntimeStatus } = require("durable-functions");

const base = `${process.env.KILN_PAGED_MANAGEMENT}/runtime/webhooks/durabletask`;
const instance = `${base}/instances/INSTANCEID`;
const client = new DurableClient(
  new OrchestrationClientInputData(
    "kiln",
    {
      createNewInstancePostUri: `${base}/orchestrators/{functionName}[/{instanceId}]`,
      createAndWaitOnNewInstancePostUri: `${base}/orchestrators/{functionName}[/{instanceId}]?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}`,
    },
    {
      id: "INSTANCEID",
      statusQueryGetUri: instance,
      sendEventPostUri: `${instance}/raiseEvent/{eventName}`,
      terminatePostUri: `${instance}/terminate?reason={text}`,
      rewindPostUri: `${instance}/rewind?reason={text}`,
      purgeHistoryDeleteUri: instance,
      restartPostUri: `${instance}/restart`,
      suspendPostUri: `${instance}/suspend?reason={text}`,
      resumePostUri: `${instance}/resume?reason={text}`,
    },
    base,
    "",
    `${base}/`,
  ),
);

const finished = ["Completed", "Failed", "Terminated"];

async function until(id, statuses) {
  for (let i = 0; i < 300; i++) {
    const status = await client.getStatus(id);
    if (statuses.includes(status.runtimeStatus)) return status;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${id} never reached ${statuses}`);
}

test("start, status and list across pages", async () => {
  const ids = [];
  for (let i = 0; i < 5; i++) {
    ids.push(await client.startNew("report_job", { instanceId: `node-${i}`, input: { customer_id: `n${i}`, operation: "monthly", delay_seconds: 0 } }));
  }
  assert.deepEqual(ids, ["node-0", "node-1", "node-2", "node-3", "node-4"]);
  for (const id of ids) {
    const status = await until(id, finished);
    assert.equal(status.runtimeStatus, "Completed");
    assert.equal(status.name, "report_job");
    assert.deepEqual(status.output.result, { customerId: id.replace("node-", "n"), operation: "monthly" });
  }
  // The server pages lists by 2 here: the client must follow x-ms-continuation-token.
  const all = await client.getStatusAll();
  const listed = all.map((s) => s.instanceId).filter((id) => id.startsWith("node-"));
  assert.deepEqual(listed.sort(), ids);
  const completed = await client.getStatusBy({ runtimeStatus: [OrchestrationRuntimeStatus.Completed] });
  assert.ok(completed.length >= 5 && completed.every((s) => s.runtimeStatus === "Completed"));
});

test("raise an event, suspend, resume, terminate", async () => {
  const approved = await client.startNew("approval", { input: { subject: "node", timeout_seconds: 600 } });
  await until(approved, ["Running"]);
  await client.suspend(approved, "pause");
  await until(approved, ["Suspended"]);
  await client.resume(approved, "go on");
  await until(approved, ["Running"]);
  await client.raiseEvent(approved, "Approval", { approved: true, by: "node" });
  assert.deepEqual((await until(approved, finished)).output, { outcome: "approved", by: "node" });

  const stopped = await client.startNew("approval", { input: { subject: "stop", timeout_seconds: 600 } });
  await until(stopped, ["Running"]);
  await client.terminate(stopped, "no longer needed");
  const status = await until(stopped, finished);
  assert.equal(status.runtimeStatus, "Terminated");
  assert.equal(status.output, "no longer needed");
  // A finished instance: the client accepts 410 for events and terminate.
  await client.raiseEvent(stopped, "Approval", { approved: false, by: "late" });
  await client.terminate(stopped, "again");
});

test("rewind and purge", async () => {
  const failed = await client.startNew("report_job", { input: { customer_id: "closed-n", delay_seconds: 0 } });
  assert.equal((await until(failed, finished)).runtimeStatus, "Failed");
  await client.rewind(failed, "try again");
  // Wait until the rewound run has failed again (the status alone cannot tell the runs apart).
  for (let i = 0; ; i++) {
    const raw = await (await fetch(`${base}/instances/${failed}?showHistory=true`)).json();
    const rewound = raw.historyEvents.some((e) => e.EventType === "ExecutionRewound");
    if (rewound && raw.runtimeStatus === "Failed") break;
    assert.ok(i < 300, "the rewind never ran");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal((await client.purgeInstanceHistory(failed)).instancesDeleted, 1);
  assert.equal((await client.purgeInstanceHistory(failed)).instancesDeleted, 0);
  const purged = await client.purgeInstanceHistoryBy({
    createdTimeFrom: new Date(Date.now() - 3600_000),
    runtimeStatus: [OrchestrationRuntimeStatus.Completed],
  });
  assert.ok(purged.instancesDeleted >= 5);
  await assert.rejects(client.getStatus("no-such-instance"));
});
