//! Node runtime for wasmkube.
