"""`envoy-extproc-sdk` 0.1.1 imports `grpc_health_check.v1.health_pb2(_grpc)`: code its
authors generate from gRPC's health.proto in their own build (`make codegen`) and do not
ship. The same generated modules come from PyPI's `grpcio-health-checking` as `grpc_health.v1`;
these modules re-export them under the name the SDK imports. run.sh puts `compat/` on
PYTHONPATH."""
