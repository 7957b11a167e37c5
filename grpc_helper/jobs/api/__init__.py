"""Generated Jobs API (protos/grpc_helper/jobs/api/jobs.proto)."""
