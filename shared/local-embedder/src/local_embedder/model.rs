//! A sentence-transformers model folder on disk: what it must hold, its identity, and the
//! BERT encoder with mean pooling that turns token ids into unit vectors.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

/// Why a model folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is missing (a sentence-transformers model folder holds config.json, tokenizer.json and model.safetensors)")]
    Missing(PathBuf),
    #[error("{file}: {reason}")]
    Invalid { file: PathBuf, reason: String },
}

/// Tokens per batch (sequences × padded length): enough rows for the matrix products to
/// run at full speed, few enough that attention's scores (batch × 12 heads × length²
/// floats) stay near 25 MB for 256-token chunks, inside a 512 MB function.
const TOKENS_PER_BATCH: usize = 2048;
const MAX_SEQUENCES_PER_BATCH: usize = 64;

/// The folder's files and settings, read without loading the weights (the configuration
/// check at start-up uses this).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: Config,
    pub hidden_size: usize,
    /// Longer texts are truncated to this many tokens (sentence-transformers' max_seq_length).
    pub max_tokens: usize,
}

#[derive(serde::Deserialize)]
struct Shape {
    hidden_size: usize,
    max_position_embeddings: usize,
    #[serde(default)]
    model_type: Option<String>,
}

#[derive(serde::Deserialize)]
struct SentenceConfig {
    max_seq_length: usize,
}

#[derive(serde::Deserialize)]
struct Pooling {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

fn invalid(file: &Path, reason: impl ToString) -> LoadError {
    LoadError::Invalid {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::Missing(file.to_path_buf()),
        _ => invalid(file, e),
    })?;
    serde_json::from_str(&text).map_err(|e| invalid(file, e))
}

impl ModelFiles {
    /// Checks the folder: the three files are there, the model is a BERT encoder, and its
    /// pooling is the mean of token vectors (the one this embedder implements).
    pub fn inspect(dir: &Path) -> Result<Self, LoadError> {
        let config_file = dir.join("config.json");
        let shape: Shape = read_json(&config_file)?;
        if let Some(kind) = shape.model_type.as_deref() {
            if !matches!(kind, "bert" | "roberta" | "xlm-roberta") {
                return Err(invalid(
                    &config_file,
                    format!("model_type {kind:?} is not a BERT encoder"),
                ));
            }
        }
        let config: Config = read_json(&config_file)?;
        for file in ["tokenizer.json", "model.safetensors"] {
            if !dir.join(file).is_file() {
                return Err(LoadError::Missing(dir.join(file)));
            }
        }
        let pooling_file = dir.join("1_Pooling").join("config.json");
        if pooling_file.is_file() {
            let pooling: Pooling = read_json(&pooling_file)?;
            if !pooling.pooling_mode_mean_tokens
                || pooling.pooling_mode_cls_token
                || pooling.pooling_mode_max_tokens
            {
                return Err(invalid(
                    &pooling_file,
                    "only mean pooling is supported (pooling_mode_mean_tokens alone)",
                ));
            }
        }
        let sentence_file = dir.join("sentence_bert_config.json");
        let max_tokens = if sentence_file.is_file() {
            read_json::<SentenceConfig>(&sentence_file)?.max_seq_length
        } else {
            512
        }
        .clamp(8, shape.max_position_embeddings);
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            hidden_size: shape.hidden_size,
            max_tokens,
        })
    }

    /// Names the weights, so vectors of another model (or another fine-tune of the same
    /// one) are never compared with these: the architecture, and a hash of the config, the
    /// tokenizer, the safetensors header and a 4 KiB sample of every MiB of weights (all
    /// of a 90 MB file would add 100 ms to each cold start).
    pub fn fingerprint(&self) -> Result<String, LoadError> {
        use std::hash::Hasher;
        use std::io::{Read, Seek, SeekFrom};
        let mut hash = fnv::FnvHasher::default();
        for name in ["config.json", "tokenizer.json"] {
            let file = self.dir.join(name);
            hash.write(&std::fs::read(&file).map_err(|e| invalid(&file, e))?);
        }
        let weights = self.dir.join("model.safetensors");
        let mut file = std::fs::File::open(&weights).map_err(|e| invalid(&weights, e))?;
        let length = file.metadata().map_err(|e| invalid(&weights, e))?.len();
        hash.write_u64(length);
        let mut block = vec![0u8; 4096];
        let mut offset = 0;
        while offset < length {
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| invalid(&weights, e))?;
            let read = file.read(&mut block).map_err(|e| invalid(&weights, e))?;
            hash.write(&block[..read]);
            offset += 1 << 20;
        }
        Ok(format!(
            "local-bert-{}x{}-{:016x}",
            self.config.num_hidden_layers,
            self.hidden_size,
            hash.finish()
        ))
    }
}

/// The loaded encoder and its tokenizer.
pub struct Encoder {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Encoder {
    /// Loads the weights (memory-mapped, then copied into tensors) and the tokenizer,
    /// set to truncate at the model's length and not to pad (batches pad themselves).
    pub fn load(files: &ModelFiles) -> Result<Self, LoadError> {
        let device = Device::Cpu;
        let weights = files.dir.join("model.safetensors");
        // SAFETY: the file is only read; a file changed under the mapping while loading
        // is the operator's mistake, as with any mapped model file.
        let vars = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| invalid(&weights, e))?;
        let bert = BertModel::load(vars, &files.config).map_err(|e| invalid(&weights, e))?;
        let tokenizer_file = files.dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_file).map_err(|e| invalid(&tokenizer_file, e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: files.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| invalid(&tokenizer_file, e))?;
        Ok(Self {
            bert,
            tokenizer,
            device,
        })
    }

    /// One unit vector per text, in order. Texts are batched by length, so short ones
    /// are not padded to the longest of the call.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| format!("tokenizer: {e}"))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted by length: the batch's last member is its longest. A batch takes
            // only texts of about the same length, as padding costs as much as tokens
            // (the matrix products run over batch × length rows either way).
            let shortest = encodings[order[start]].len();
            let longest = shortest + (shortest / 8).max(4);
            let mut end = start + 1;
            while end < order.len()
                && end - start < MAX_SEQUENCES_PER_BATCH
                && encodings[order[end]].len() <= longest
                && (end - start + 1) * encodings[order[end]].len() <= TOKENS_PER_BATCH
            {
                end += 1;
            }
            let batch: Vec<&Encoding> = order[start..end].iter().map(|&i| &encodings[i]).collect();
            let embedded = self
                .embed_batch(&batch)
                .map_err(|e| format!("model: {e}"))?;
            for (&i, vector) in order[start..end].iter().zip(embedded) {
                vectors[i] = vector;
            }
            start = end;
        }
        Ok(vectors)
    }

    /// The encoder over one padded batch, then the mean of each text's token vectors
    /// (padding masked out), L2-normalised: sentence-transformers' Pooling + Normalize.
    fn embed_batch(&self, batch: &[&Encoding]) -> candle_core::Result<Vec<Vec<f32>>> {
        let length = batch.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * length);
        let mut mask = Vec::with_capacity(batch.len() * length);
        for encoding in batch {
            ids.extend_from_slice(encoding.get_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
            ids.resize(ids.len() + length - encoding.len(), 0);
            mask.resize(mask.len() + length - encoding.len(), 0);
        }
        let ids = Tensor::from_vec(ids, (batch.len(), length), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch.len(), length), &self.device)?;
        let hidden = self.bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let counts = weights.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = hidden
            .broadcast_mul(&weights)?
            .sum(1)?
            .broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2()
    }
}
