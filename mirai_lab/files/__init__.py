"""Storage primitives that every layer uses: atomic files, digests, tensor files, caches."""
