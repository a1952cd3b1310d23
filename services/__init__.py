"""Long-running processes the pipeline talks to (inference servers), kept apart from the pure stage code in tasks/."""
