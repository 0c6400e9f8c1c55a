"""The engine's I/O: turns from the work streams, schedules, triggers, retention, children."""
