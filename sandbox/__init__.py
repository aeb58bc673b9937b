"""An isolated, persistent Python REPL worker with a host-call bridge."""
