//! The knowledge base's own configuration section (read by `config::Settings`).

use std::path::PathBuf;
use std::time::Duration;

use super::vector_index::VectorIndexConfig;
use super::{Fusion, RelevanceFloor};
use crate::secret::Secret;

/// Embeddings, chunking, ingest limits and the PostgreSQL vector index (I1-I6).
#[derive(Debug, Clone)]
pub struct KbSettings {
    /// OpenAI-compatible embeddings endpoint; unset selects the offline embedder.
    pub embeddings_base_url: Option<String>,
    pub embeddings_api_key: Option<Secret>,
    pub embeddings_model: String,
    /// `EMBEDDINGS_MODEL=local:<dir>`: a sentence-transformers folder run in process.
    pub embeddings_local_model: Option<PathBuf>,
    /// `EMBEDDINGS_LOCAL_PRECISION`: the local model's matrix products, `auto` (8-bit
    /// integers where the CPU has AVX-512 VNNI, f32 elsewhere), `int8` or `f32`.
    pub embeddings_local_precision: &'static str,
    pub embeddings_dimensions: usize,
    pub embeddings_timeout: Duration,
    /// Chunk size and overlap in characters.
    pub chunk_size: usize,
    pub chunk_overlap: usize,
    /// The relevance floor: less relevant passages are not used (search, chat). Unset:
    /// the measured default for the offline embedder, none for another (similarities are
    /// not comparable across models; see [`KbSettings::relevance_floor`]).
    pub relevance: Option<RelevanceFloor>,
    /// The vector list's weight in hybrid ranking, 0-1 (`RETRIEVAL_VECTOR_WEIGHT`).
    /// Unset: the offline embedder's measured weight, an even mix for a model.
    pub vector_weight: Option<f64>,
    /// S3 bucket of the documents that S3 events refer to (a local folder in embedded mode).
    pub documents_bucket: Option<String>,
    /// Embedded mode: S3 events name objects under this local folder instead of S3.
    pub documents_dir: Option<PathBuf>,
    pub max_document_bytes: usize,
    pub max_batch_documents: usize,
    /// When bulk writes skip the PostgreSQL HNSW index and when it catches up (`VECTOR_INDEX_*`).
    pub vector_index: VectorIndexConfig,
}

impl KbSettings {
    /// The fusion in force: the weight set, or the embedder's default.
    pub fn fusion(&self) -> Fusion {
        match (self.vector_weight, self.uses_model()) {
            (Some(vector_weight), _) => Fusion { vector_weight },
            (None, false) => Fusion::OFFLINE_DEFAULT,
            (None, true) => Fusion::MODEL_DEFAULT,
        }
    }

    /// A real embedding model (an endpoint, or one run in process), not the offline hashing.
    pub fn uses_model(&self) -> bool {
        self.embeddings_base_url.is_some() || self.embeddings_local_model.is_some()
    }

    /// The floor in force: the one set, or the offline embedder's measured default. A
    /// model's similarities have their own scale (0.2 is unrelated for one model
    /// and close for another), so without a setting it gets no floor and a warning that
    /// says how to measure one.
    pub fn relevance_floor(&self) -> RelevanceFloor {
        match (self.relevance, self.uses_model()) {
            (Some(floor), _) => floor,
            (None, false) => {
                if (
                    self.embeddings_dimensions,
                    self.chunk_size,
                    self.chunk_overlap,
                ) != (384, 1000, 150)
                {
                    tracing::warn!(
                        dimensions = self.embeddings_dimensions,
                        chunk_size = self.chunk_size,
                        chunk_overlap = self.chunk_overlap,
                        "the offline embedder's relevance floor was measured at 384 dimensions and chunks of 1000/150; measure one for these settings with `make eval` and set RETRIEVAL_MIN_SIMILARITY (README, Relevance floor)"
                    );
                }
                RelevanceFloor::OFFLINE_DEFAULT
            }
            (None, true) => {
                tracing::warn!(
                    model = %self.embeddings_model,
                    "RETRIEVAL_MIN_SIMILARITY is not set: with an embedding model every passage counts as relevant; measure a floor for this model with `make eval` (README, Relevance floor)"
                );
                RelevanceFloor::NONE
            }
        }
    }
}

/// How much one ingest may bring: checked here, once, whichever adapter (HTTP, S3) the
/// documents came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    pub max_document_bytes: usize,
    pub max_batch_documents: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_document_bytes: 1_048_576,
            max_batch_documents: 100,
        }
    }
}
