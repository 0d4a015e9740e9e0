"""A checkout from Python: lock in a session, keep the session alive, commit.

The stubs come from proto/stocklock/v1/stocklock.proto, generated with
grpcio-tools (scripts/python-example.sh does it, and runs this against a
real service in `make test`):

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/stocklock/v1/stocklock.proto
    PYTHONPATH=gen python examples/python/checkout.py 127.0.0.1:50051

The channel takes client/service-config.json: a 10 s deadline and retries
of transient errors for every unary call. A retry resends the same
request_id, so it never locks or commits twice.
"""

import pathlib
import sys
import threading
import time
import uuid

import grpc
from google.protobuf import duration_pb2

from stocklock.v1 import stocklock_pb2 as pb
from stocklock.v1 import stocklock_pb2_grpc as rpc

SERVICE_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "client" / "service-config.json"
HOLDER = "checkout-py"


def connect(target):
    options = [("grpc.service_config", SERVICE_CONFIG.read_text()), ("grpc.enable_retries", 1)]
    return rpc.InventoryServiceStub(grpc.insecure_channel(target, options=options))


class Session:
    """A session kept alive on one KeepAlive stream, every third of its ttl.

    `lost` is set, with `reason`, when the service says the session ended:
    wait on it (or check it) instead of finding out at Commit.
    """

    def __init__(self, stub, ttl_seconds):
        opened = stub.OpenSession(
            pb.OpenSessionRequest(
                ttl=duration_pb2.Duration(seconds=ttl_seconds), holder=HOLDER, request_id=f"open-{uuid.uuid4()}"
            )
        )
        self.id = opened.session.session_id
        self.lost = threading.Event()
        self.reason = None
        self.keep_alives = 0
        self._stub, self._every = stub, ttl_seconds / 3
        self._closed = threading.Event()
        threading.Thread(target=self._keep_alive, daemon=True).start()

    def _pings(self):
        while not self._closed.is_set():
            yield pb.KeepAliveRequest(session_id=self.id, holder=HOLDER)
            self._closed.wait(self._every)

    def _keep_alive(self):
        backoff = 0.05
        while not self._closed.is_set():
            try:
                for _answer in self._stub.KeepAlive(self._pings()):
                    self.keep_alives += 1
                    backoff = 0.05
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    # SESSION_EXPIRED, SESSION_CLOSED, SESSION_NOT_FOUND: gone for good.
                    self.reason = e.details()
                    self.lost.set()
                    return
                # The service restarting, a connection cut: try again.
                time.sleep(backoff)
                backoff = min(backoff * 2, self._every / 2)

    def lock(self, sku, warehouse, quantity, order_id):
        request = pb.LockRequest(
            sku=sku,
            warehouse_id=warehouse,
            quantity=quantity,
            order_id=order_id,
            holder=HOLDER,
            session_id=self.id,
            request_id=f"lock-{order_id}",
        )
        return self._stub.Lock(request).lock

    def close(self):
        self._closed.set()
        return self._stub.CloseSession(pb.CloseSessionRequest(session_id=self.id, holder=HOLDER))


def available(stub, sku, warehouse):
    return stub.GetAvailability(pb.GetAvailabilityRequest(sku=sku, warehouse_id=warehouse)).records[0].available


def main(target):
    stub = connect(target)
    sku, warehouse = f"PY-{uuid.uuid4().hex[:8]}", "WH-A"
    stub.SetStock(pb.SetStockRequest(sku=sku, warehouse_id=warehouse, physical="10", source_version=1))

    session = Session(stub, ttl_seconds=2)
    lock = session.lock(sku, warehouse, "2", "order-42")
    assert lock.session_id == session.id, lock
    assert available(stub, sku, warehouse) == "8"

    # Payment takes a while: longer than the session's ttl, and nobody
    # renews the lock; the session's keep-alives hold it.
    time.sleep(4.5)
    assert not session.lost.is_set(), session.reason
    assert session.keep_alives >= 4, session.keep_alives
    held = stub.GetLock(pb.GetLockRequest(lock_id=lock.lock_id)).lock
    assert held.quantity == "2", held

    committed = stub.Commit(pb.CommitRequest(lock_id=lock.lock_id, holder=HOLDER, request_id="commit-order-42"))
    assert committed.committed_quantity == "2" and committed.record.physical == "8", committed
    closed = session.close()
    assert closed.closed_now and closed.released == 0, closed
    print(f"checkout from Python: locked and committed 2 of {sku} in session {session.id}, "
          f"kept alive {session.keep_alives} times")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
