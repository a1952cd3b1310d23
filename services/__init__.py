"""Long-running services quarry starts and talks to: the Prefect server and worker, deployments, model
servers. Not stages: nothing here runs inside a flow's data path."""
