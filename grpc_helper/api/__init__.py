"""Generated protobuf and gRPC modules for grpc-helper's own APIs (built from ``protos/grpc_helper/api``)."""
