//! A sentence-embedding model run in process (`EMBEDDINGS_MODEL=local:<dir>`), so the
//! embedded default gets semantic search with no API and no network: a
//! sentence-transformers folder (config.json, tokenizer.json, model.safetensors, e.g.
//! all-MiniLM-L6-v2) read from disk, never downloaded.
//!
//! Why our own encoder: pure Rust from crates.io, so the build needs nothing else and the
//! binary no shared library (ONNX Runtime, the `ort` crate, downloads its native library
//! at build time, which neither CI nor an air-gapped build can do); and BERT with mean
//! pooling is small enough to write for the one shape it has here (many short texts on a
//! CPU): ragged batches with no padding, and 8-bit integer products (AVX-512 VNNI where
//! the CPU has it). candle, used before, ran f32 only and padded every batch.

mod local_embedder;

pub use local_embedder::{LoadError, LocalEmbedder, ModelFiles, Precision};
