from grpc_health.v1.health_pb2 import *  # noqa: F401,F403
