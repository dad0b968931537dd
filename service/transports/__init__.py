"""Transports: Modbus TCP, Modbus RTU (serial), Modbus RTU over TCP, and serial lines."""
