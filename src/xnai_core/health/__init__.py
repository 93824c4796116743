"""Health checkers and the monitor that schedules them."""
