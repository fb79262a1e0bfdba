"""The process: startup, the main loop, the intake, shutdown."""
