"""Simulated devices for tests, driver authors and ``gatebeat demo`` (127.0.0.1 and ptys only)."""
