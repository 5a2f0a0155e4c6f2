"""azure-core's long-running-operation poller against Kiln's starters and status monitor.

The poller is used exactly as Azure SDKs use it: a PipelineClient (with its default policies,
including RequestIdPolicy), the initial 202 response, and LROBasePolling.
"""
import json
import os
import threading
import time

import pytest
from azure.core import PipelineClient
from azure.core.exceptions import HttpResponseError
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LocationPolling, LROBasePolling, OperationResourcePolling
from azure.core.rest import HttpRequest

PUBLIC = os.environ["KILN_PUBLIC"]


def start(client, path, body):
    request = HttpRequest("POST", f"{PUBLIC}{path}", json=body)
    return client.send_request(request, _return_pipeline_response=True)


def poller(client, initial, algorithm):
    return LROPoller(
        client,
        initial,
        lambda pipeline_response: json.loads(pipeline_response.http_response.text()),
        LROBasePolling(timeout=1, lro_algorithms=[algorithm]),
    )


REPORT = {"customer_id": "py-1", "operation": "daily", "delay_seconds": 1}


def test_operation_location_polling_reaches_the_result():
    client = PipelineClient(base_url=PUBLIC)
    initial = start(client, "/api/jobs/reports", REPORT)
    assert initial.http_response.status_code == 202
    result = poller(client, initial, OperationResourcePolling()).result(timeout=60)
    assert result["status"] == "Succeeded"
    assert result["result"]["result"] == {"customerId": "py-1", "operation": "daily"}


def test_the_seed_request_is_accepted_and_polled_to_the_seed_output():
    # The seed document's request (delay shortened), its 202 body fields, and its final output.
    client = PipelineClient(base_url=PUBLIC)
    seed = {"customer_id": "cust-123", "operation": "rebuild-report", "delay_seconds": 1}
    initial = start(client, "/api/jobs/reports", seed)
    accepted = json.loads(initial.http_response.text())
    assert accepted["status"] == "accepted"
    assert accepted["statusQueryGetUri"] == initial.http_response.headers["Location"]
    result = poller(client, initial, OperationResourcePolling()).result(timeout=60)
    assert result["runtimeStatus"] == "Completed"
    assert result["output"] == {
        "status": "completed",
        "instanceId": accepted["instanceId"],
        "result": {"customerId": "cust-123", "operation": "rebuild-report"},
    }


def test_location_polling_reaches_the_result():
    client = PipelineClient(base_url=PUBLIC)
    initial = start(client, "/api/jobs/reports", REPORT)
    operation = poller(client, initial, LocationPolling())
    result = operation.result(timeout=60)
    assert operation.status() == "Succeeded"
    assert result["output"]["result"]["customerId"] == "py-1"


def test_default_algorithm_selection_prefers_operation_location():
    client = PipelineClient(base_url=PUBLIC)
    initial = start(client, "/api/jobs/reports", REPORT)
    operation = LROPoller(client, initial, lambda r: json.loads(r.http_response.text()), LROBasePolling(timeout=1))
    assert operation.result(timeout=60)["status"] == "Succeeded"


def test_a_failed_job_raises_through_operation_location():
    client = PipelineClient(base_url=PUBLIC)
    initial = start(client, "/api/jobs/reports", {"customer_id": "closed-py-2", "delay_seconds": 0})
    operation = poller(client, initial, OperationResourcePolling())
    with pytest.raises(HttpResponseError):
        operation.result(timeout=60)
    assert operation.status() == "Failed"


def test_a_failed_job_is_visible_in_the_location_body():
    # LocationPolling treats any final 2xx as success and does not read the body; the failure is
    # in the status monitor's body (or a 500 with returnInternalServerErrorOnFailure=true).
    client = PipelineClient(base_url=PUBLIC)
    initial = start(client, "/api/jobs/reports", {"customer_id": "closed-py-3", "delay_seconds": 0})
    result = poller(client, initial, LocationPolling()).result(timeout=60)
    assert result["status"] == "Failed"
    assert result["error"]["type"] == "AccountClosed"


def test_a_canceled_job_ends_the_poller_as_canceled():
    client = PipelineClient(base_url=PUBLIC)
    initial = start(client, "/api/approvals", {"subject": "py", "timeout_seconds": 600})
    status_url = initial.http_response.headers["Operation-Location"]

    def cancel_soon():
        time.sleep(0.5)
        response = client.send_request(HttpRequest("DELETE", status_url))
        assert response.status_code == 202

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    operation = poller(client, initial, OperationResourcePolling())
    with pytest.raises(HttpResponseError):
        operation.result(timeout=60)
    canceller.join()
    assert operation.status() == "Canceled"
