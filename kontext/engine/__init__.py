"""The engine: FluxKontextPipeline behind bytes + parameters in, PNG bytes out; recipes and determinism."""
