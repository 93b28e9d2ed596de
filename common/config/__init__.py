"""Run options and model specs: flags + environment -> a typed RunConfig; model.yaml -> a typed spec."""
