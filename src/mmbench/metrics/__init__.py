"""Task metrics: pure functions first, thin stateful wrappers where a protocol accumulates."""
