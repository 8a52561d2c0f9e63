"""medic's thin HTTP layer: admission, job routes, health and metrics. Imports `worker`, never the reverse."""
