"""gatebeat's bundled drivers: one module per device type; the file name is the driver name."""
