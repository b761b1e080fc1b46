"""Simulators of the gateware: the Verilated byte-level board (sim://) and the UART-level board."""
