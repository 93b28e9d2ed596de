"""The runtimes behind one interface (backends), INT8 quantisation, recorded outputs, device telemetry."""
