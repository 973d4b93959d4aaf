"""What the agent, the scheduler and the CLI share, so that none imports another's internals:
transport.py (every gRPC channel and server),
settings.py (every default, the environment, the TOML file), http.py (the /metrics server)."""
