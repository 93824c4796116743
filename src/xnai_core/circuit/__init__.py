"""Circuit breakers: config, pure state machine, stores, the breaker, the registry."""
