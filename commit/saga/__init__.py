"""Sagas: definitions the cluster drives, and services with actions, compensations and event consumers.

    from commit.saga import Saga, SagaClient, Service, Fail
    saga = Saga().step("reserve", service="inventory", action="reserve", compensation="release", input={...})
    final = await SagaClient(db).run(saga)     # completed, compensated or stuck, with its history

docs/SAGAS.md explains the model, the guarantees and the barrier.
"""

from commit.saga.barrier import Barrier
from commit.saga.client import Saga, SagaClient
from commit.saga.remote import ServiceConnections, call_step, deliver_event, open_service_connections
from commit.saga.service import EventContext, Fail, RunningService, Service, StepContext, open_service, run_service

__all__ = [
    "Barrier",
    "EventContext",
    "Fail",
    "RunningService",
    "Saga",
    "SagaClient",
    "Service",
    "ServiceConnections",
    "StepContext",
    "call_step",
    "deliver_event",
    "open_service",
    "open_service_connections",
    "run_service",
]
