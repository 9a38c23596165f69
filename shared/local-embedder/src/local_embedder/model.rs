//! A sentence-transformers model folder on disk: what it must hold, its identity, and the
//! BERT encoder with mean pooling that turns token ids into unit vectors.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationParams};

use super::bert::{Bert, Precision, Shape};
use super::ops::Activation;
use super::weights::{self, MappedTable, Weights};

/// Why a model folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is missing (a sentence-transformers model folder holds config.json, tokenizer.json and model.safetensors)")]
    Missing(PathBuf),
    #[error("{file}: {reason}")]
    Invalid { file: PathBuf, reason: String },
}

/// Tokens per batch: enough rows for the products to be split across threads (21 tasks of
/// 48), few enough that the batch's activations stay small beside the model (for MiniLM,
/// 1,024 tokens × about 12 × 384 floats at the widest step: 19 MB). 4,096 was no faster
/// and peaked 48 MB higher (`make bench-embed`).
const TOKENS_PER_BATCH: usize = 1024;

/// The folder's files and settings, read without loading the weights (the configuration
/// check at start-up uses this).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: Config,
    shape: Shape,
    pub hidden_size: usize,
    /// Longer texts are truncated to this many tokens (sentence-transformers' max_seq_length).
    pub max_tokens: usize,
}

/// config.json's fields the encoder needs (Hugging Face's `BertConfig`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "Config::default_activation")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "Config::default_token_types")]
    pub type_vocab_size: usize,
    #[serde(default = "Config::default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl Config {
    fn default_activation() -> String {
        "gelu".into()
    }
    fn default_token_types() -> usize {
        2
    }
    fn default_eps() -> f64 {
        1e-12
    }
}

#[derive(serde::Deserialize)]
struct ModelType {
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
        let kind: ModelType = read_json(&config_file)?;
        let roberta = match kind.model_type.as_deref() {
            None | Some("bert") => false,
            Some("roberta" | "xlm-roberta") => true,
            Some(kind) => {
                return Err(invalid(
                    &config_file,
                    format!("model_type {kind:?} is not a BERT encoder"),
                ))
            }
        };
        let config: Config = read_json(&config_file)?;
        let activation = Activation::parse(&config.hidden_act).ok_or_else(|| {
            invalid(
                &config_file,
                format!(
                    "hidden_act {:?} is not supported (gelu, gelu_new, relu)",
                    config.hidden_act
                ),
            )
        })?;
        let position_offset = if roberta { config.pad_token_id + 1 } else { 0 };
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
            || config.type_vocab_size == 0
            || config.vocab_size == 0
            || config.max_position_embeddings < position_offset + 8
        {
            return Err(invalid(
                &config_file,
                "hidden_size must be a multiple of num_attention_heads, with a vocabulary, a token type and at least 8 positions",
            ));
        }
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
        let positions = config
            .max_position_embeddings
            .saturating_sub(position_offset);
        let max_tokens = if sentence_file.is_file() {
            read_json::<SentenceConfig>(&sentence_file)?.max_seq_length
        } else {
            512
        }
        .clamp(8, positions);
        let shape = Shape {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            layers: config.num_hidden_layers,
            intermediate: config.intermediate_size,
            vocab: config.vocab_size,
            positions: config.max_position_embeddings,
            token_types: config.type_vocab_size,
            activation,
            eps: config.layer_norm_eps as f32,
            position_offset,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            hidden_size: config.hidden_size,
            config,
            shape,
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
    bert: Bert,
    tokenizer: Tokenizer,
}

impl Encoder {
    /// Loads the weights (memory-mapped; copied out, and quantised for 8 bits, except the
    /// word embeddings, read in place)
    /// and the tokenizer, set to truncate at the model's length and not to pad.
    pub fn load(files: &ModelFiles, precision: Precision) -> Result<Self, LoadError> {
        let file = files.dir.join("model.safetensors");
        let map = weights::map(&file).map_err(|e| invalid(&file, e))?;
        let weights = Weights::parse(&map, files.config.model_type.as_deref())
            .map_err(|e| invalid(&file, e))?;
        let shape = files.shape.clone();
        let word = weights
            .locate(
                "embeddings.word_embeddings.weight",
                &[shape.vocab, shape.hidden],
            )
            .map_err(|e| invalid(&file, e))?;
        // A second mapping for the table kept: the first one's pages (every layer's
        // weights, read once to copy them) leave with it, where they would otherwise stay
        // resident for the life of the process.
        let table = weights::map(&file).map_err(|e| invalid(&file, e))?;
        if table.len() != map.len() {
            return Err(invalid(&file, "the file changed while it was loaded"));
        }
        let word = MappedTable::new(table, word, shape.hidden);
        let bert = Bert::load(&weights, word, shape, precision).map_err(|e| invalid(&file, e))?;
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
        Ok(Self { bert, tokenizer })
    }

    /// One unit vector per text, in order, in batches of at most [`TOKENS_PER_BATCH`]
    /// tokens (a text's vector does not depend on its batch).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| format!("tokenizer: {e}"))?;
        let mut vectors = Vec::with_capacity(texts.len());
        let mut batch: Vec<&[u32]> = Vec::new();
        let mut tokens = 0;
        for encoding in &encodings {
            let ids = encoding.get_ids();
            if !batch.is_empty() && tokens + ids.len() > TOKENS_PER_BATCH {
                vectors.extend(self.bert.embed(&batch));
                batch.clear();
                tokens = 0;
            }
            tokens += ids.len();
            batch.push(ids);
        }
        if !batch.is_empty() {
            vectors.extend(self.bert.embed(&batch));
        }
        Ok(vectors)
    }
}
