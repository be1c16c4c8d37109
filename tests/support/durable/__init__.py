"""A stand-in for the Azure Functions host running the Durable extension (tests only)."""
