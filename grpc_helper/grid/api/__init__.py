"""Generated protobuf and gRPC modules for the compute grid (built from ``protos/grpc_helper/grid/api``)."""
