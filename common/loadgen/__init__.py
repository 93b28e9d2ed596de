"""MLPerf LoadGen scenarios (SingleStream, MultiStream, Server, Offline) over any backend's Runner (docs/loadgen.md).

The optional `mlcommons-loadgen` package (requirements-loadgen.txt) is imported only when a run starts."""
