"""What medic's tests and benches share: real processes started with one run's environment
(`processes`) and servers of their own (`servers`). Shipped in the package, like
`celery.contrib.testing`, so a bench or an application's own tests import it without path hacks."""
