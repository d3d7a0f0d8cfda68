"""The daemon and what it serves: scheduler, signals, reload, HTTP routes (unsubscribe, web copies,
health, metrics), admin alerts, sd_notify, logging."""
