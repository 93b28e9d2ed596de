"""The drivers: options -> engine, the accuracy run, the performance run, the pre-flight and compare command."""
