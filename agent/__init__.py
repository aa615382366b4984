"""The node agent: runs on each GPU machine, supervises the engine (vLLM or the simulator),
caches the model, reports health, load and metrics. Imports nothing of the control plane but
`core.wire`, so it ships alone (`python -m agent.version_tool bundle`)."""
