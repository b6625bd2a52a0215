"""The lab orchestrator behind lab/p3lab (see docs/lab.md)."""
