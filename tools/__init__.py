"""Development tooling that is not part of the runtime package: the tiny offline Kontext model and its
tokenizers, the synthetic full-size model for bench_gpu, and a throwaway redis-server."""
