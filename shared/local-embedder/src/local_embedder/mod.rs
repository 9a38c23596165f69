//! The embedder over the loaded model (see the crate's documentation).

mod bert;
mod int8;
mod model;
mod ops;
mod weights;

use std::path::Path;
use std::sync::Arc;

use chatkb_kb::kb::embed::{EmbedError, EmbedFuture, Embedder};

pub use bert::Precision;
pub use model::{LoadError, ModelFiles};

/// The model behind [`Embedder`]. Inference runs on the blocking pool, so a batch of
/// documents never stalls the requests sharing the runtime's threads.
pub struct LocalEmbedder {
    model: String,
    dimensions: usize,
    encoder: Result<Arc<model::Encoder>, String>,
}

impl LocalEmbedder {
    /// Loads the model in `dir`, or says what is wrong with the folder.
    ///
    /// The name ([`ModelFiles::fingerprint`]) is the same at either precision: the vectors
    /// of one are within 0.99 cosine of the other's (0.992 at worst on the reference
    /// texts), so a store keeps searching the vectors it has when the setting, or the
    /// machine and so what `auto` picks, changes.
    pub fn load(dir: &Path, precision: Precision) -> Result<Self, LoadError> {
        let files = ModelFiles::inspect(dir)?;
        let model = files.fingerprint()?;
        let encoder = model::Encoder::load(&files, precision)?;
        Ok(Self {
            model,
            dimensions: files.hidden_size,
            encoder: Ok(Arc::new(encoder)),
        })
    }

    /// [`LocalEmbedder::load`] for a function's cold start, which must not fail on it:
    /// a model that does not load is logged once, and every call then fails as an
    /// unreachable embeddings service does (ingest answers 503 with the reason, search
    /// falls back to keywords) instead of the function not starting at all.
    pub fn open(dir: &Path, dimensions: usize, precision: Precision) -> Self {
        match Self::load(dir, precision) {
            Ok(embedder) => {
                let precision = precision.resolve();
                tracing::info!(model = %embedder.model, dimensions = embedder.dimensions, ?precision, kernel = int8::kernel_name(), "local embedding model loaded");
                if precision == Precision::Int8 && !int8::fast_kernel() {
                    tracing::warn!("EMBEDDINGS_LOCAL_PRECISION=int8 on a CPU without AVX-512 VNNI runs the portable 8-bit kernel, about 10x slower than f32: set auto or f32");
                }
                embedder
            }
            Err(error) => {
                tracing::error!(%error, "the local embedding model did not load: ingest answers 503 and search uses keywords only");
                Self {
                    model: format!("local-unloaded:{}", dir.display()),
                    dimensions,
                    encoder: Err(error.to_string()),
                }
            }
        }
    }

    /// The vectors of `texts`, computed on the calling thread.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encoder = self.encoder.as_ref().map_err(|reason| {
            EmbedError::Unavailable(format!("the local model did not load: {reason}"))
        })?;
        encoder
            .embed(texts)
            .map_err(|reason| EmbedError::Unavailable(format!("local model: {reason}")))
    }
}

impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let encoder = match &self.encoder {
                Ok(encoder) => encoder.clone(),
                Err(_) => return self.embed_blocking(texts),
            };
            let texts = texts.to_vec();
            tokio::task::spawn_blocking(move || encoder.embed(&texts))
                .await
                .map_err(|e| EmbedError::Unavailable(format!("local model: {e}")))?
                .map_err(|reason| EmbedError::Unavailable(format!("local model: {reason}")))
        })
    }
}
