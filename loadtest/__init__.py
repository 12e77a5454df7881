"""Load tests: locust gRPC users on the project's client, perf_analyzer, and the report."""
