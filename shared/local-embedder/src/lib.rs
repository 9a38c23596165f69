//! A sentence-embedding model run in process (`EMBEDDINGS_MODEL=local:<dir>`), so the
//! embedded default gets semantic search with no API and no network: a
//! sentence-transformers folder (config.json, tokenizer.json, model.safetensors, e.g.
//! all-MiniLM-L6-v2) read from disk, never downloaded, run on candle's CPU backend.
//!
//! Why candle: pure Rust from crates.io, so the build needs nothing else and the binary
//! no shared library; ONNX Runtime (the `ort` crate) downloads its native library at
//! build time, which neither CI nor an air-gapped build can do.

mod local_embedder;

pub use local_embedder::{LoadError, LocalEmbedder, ModelFiles};
