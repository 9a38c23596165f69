//! The BERT encoder with mean pooling, written for one job: many short texts on a CPU.
//!
//! - Ragged batches: a batch's texts are laid end to end, never padded. Every step but
//!   attention works row by row, and attention runs per text over its own rows, so a text
//!   costs its own tokens and gets the same vector in any batch.
//! - The six layers' matrix products in 8-bit integers where the CPU has AVX-512 VNNI,
//!   else f32 ([`Precision`]); everything else in f32.
//! - The word-embedding table is read in place from the mapped file.
//! - Rows are split across rayon's threads (`RAYON_NUM_THREADS=1` runs on one core).

use rayon::prelude::*;

use super::int8::QuantizedWeights;
use super::ops::{self, layer_norm, Activation, AttentionScratch};
use super::weights::{MappedTable, Weights};

/// The matrix products' arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// [`Precision::Int8`] where the CPU has AVX-512 VNNI, [`Precision::F32`] elsewhere.
    #[default]
    Auto,
    /// Weights per output and activations per row in 8 bits, sums exact in 32 bits: 2.1-3×
    /// the chunks/s of f32 with AVX-512 VNNI, vectors within 0.99 cosine of f32. Without
    /// VNNI the portable kernel runs, about 10× slower than f32.
    Int8,
    /// The weights as stored (the vectors of sentence-transformers, to float rounding).
    F32,
}

impl Precision {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "int8" => Some(Self::Int8),
            "f32" => Some(Self::F32),
            _ => None,
        }
    }

    /// What [`Precision::Auto`] means on this CPU.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if super::int8::fast_kernel() => Self::Int8,
            Self::Auto => Self::F32,
            chosen => chosen,
        }
    }
}

/// Rows per task when a product is split across threads.
const ROWS_PER_TASK: usize = 48;

/// `y = x Wᵀ + b`.
enum Linear {
    Int8 {
        weights: QuantizedWeights,
        bias: Vec<f32>,
        inputs: usize,
    },
    F32 {
        /// `[outputs][inputs]`.
        weights: Vec<f32>,
        bias: Vec<f32>,
        inputs: usize,
    },
}

impl Linear {
    /// `precision` resolved ([`Precision::resolve`]): `Auto` is taken as f32.
    fn new(weights: Vec<f32>, bias: Vec<f32>, inputs: usize, precision: Precision) -> Self {
        match precision {
            Precision::Int8 => Self::Int8 {
                weights: QuantizedWeights::new(&weights, bias.len(), inputs),
                bias,
                inputs,
            },
            Precision::F32 | Precision::Auto => Self::F32 {
                weights,
                bias,
                inputs,
            },
        }
    }

    fn outputs(&self) -> usize {
        match self {
            Self::Int8 { bias, .. } | Self::F32 { bias, .. } => bias.len(),
        }
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let outputs = self.outputs();
        match self {
            Self::Int8 {
                weights,
                bias,
                inputs,
            } => {
                let mut out = vec![0f32; x.len() / inputs * outputs];
                out.par_chunks_mut(ROWS_PER_TASK * outputs)
                    .zip(x.par_chunks(ROWS_PER_TASK * inputs))
                    .for_each(|(out, x)| weights.forward(x, *inputs, bias, out));
                out
            }
            Self::F32 {
                weights,
                bias,
                inputs,
            } => {
                let rows = x.len() / inputs;
                let mut out: Vec<f32> = bias.iter().copied().cycle().take(rows * outputs).collect();
                let threads = rayon::current_num_threads();
                // SAFETY: the three matrices' sizes and strides are those of the slices:
                // x is rows × inputs, weights outputs × inputs (read transposed), out
                // rows × outputs.
                unsafe {
                    gemm::gemm(
                        rows,
                        outputs,
                        *inputs,
                        out.as_mut_ptr(),
                        1,
                        outputs as isize,
                        true,
                        x.as_ptr(),
                        1,
                        *inputs as isize,
                        weights.as_ptr(),
                        *inputs as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        if threads > 1 {
                            gemm::Parallelism::Rayon(threads)
                        } else {
                            gemm::Parallelism::None
                        },
                    );
                }
                out
            }
        }
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one product (`[3 × hidden][hidden]`).
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    output_norm: Norm,
}

/// The encoder's shape, from config.json.
#[derive(Debug, Clone)]
pub struct Shape {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub positions: usize,
    pub token_types: usize,
    pub activation: Activation,
    pub eps: f32,
    /// RoBERTa counts positions from `pad_token_id + 1`; BERT from 0.
    pub position_offset: usize,
}

pub struct Bert {
    shape: Shape,
    word: MappedTable,
    position: Vec<f32>,
    /// Token type 0's vector (sentence-transformers encodes one segment).
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

impl Bert {
    /// `word` is the word-embedding table, read in place from the same file.
    pub fn load(
        weights: &Weights,
        word: MappedTable,
        shape: Shape,
        precision: Precision,
    ) -> Result<Self, String> {
        let precision = precision.resolve();
        let h = shape.hidden;
        let norm = |prefix: &str| -> Result<Norm, String> {
            Ok(Norm {
                gamma: weights.norm(prefix, "weight", "gamma", h)?,
                beta: weights.norm(prefix, "bias", "beta", h)?,
            })
        };
        let linear = |name: &str, outputs: usize, inputs: usize| -> Result<Linear, String> {
            Ok(Linear::new(
                weights.get(&format!("{name}.weight"), &[outputs, inputs])?,
                weights.get(&format!("{name}.bias"), &[outputs])?,
                inputs,
                precision,
            ))
        };
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let at = format!("encoder.layer.{i}");
            let mut qkv_weights = Vec::with_capacity(3 * h * h);
            let mut qkv_bias = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                let name = format!("{at}.attention.self.{part}");
                qkv_weights.extend(weights.get(&format!("{name}.weight"), &[h, h])?);
                qkv_bias.extend(weights.get(&format!("{name}.bias"), &[h])?);
            }
            layers.push(Layer {
                qkv: Linear::new(qkv_weights, qkv_bias, h, precision),
                attention_out: linear(&format!("{at}.attention.output.dense"), h, h)?,
                attention_norm: norm(&format!("{at}.attention.output.LayerNorm"))?,
                up: linear(&format!("{at}.intermediate.dense"), shape.intermediate, h)?,
                down: linear(&format!("{at}.output.dense"), h, shape.intermediate)?,
                output_norm: norm(&format!("{at}.output.LayerNorm"))?,
            });
        }
        let token_types = weights.get(
            "embeddings.token_type_embeddings.weight",
            &[shape.token_types, h],
        )?;
        Ok(Self {
            word,
            position: weights.get(
                "embeddings.position_embeddings.weight",
                &[shape.positions, h],
            )?,
            token_type: token_types[..h].to_vec(),
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            shape,
        })
    }

    /// One unit vector per token sequence: the encoder, then the mean of the sequence's
    /// token vectors, L2-normalised (sentence-transformers' Pooling + Normalize).
    pub fn embed(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        let h = self.shape.hidden;
        let mut starts = Vec::with_capacity(sequences.len() + 1);
        starts.push(0);
        for sequence in sequences {
            starts.push(starts.last().unwrap() + sequence.len());
        }
        let mut x = self.embeddings(sequences, *starts.last().unwrap());
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x);
            let context = self.attention(&qkv, &starts);
            let attended = layer.attention_out.forward(&context);
            self.add_and_norm(&mut x, &attended, &layer.attention_norm);
            let mut inner = layer.up.forward(&x);
            inner
                .par_chunks_mut(ROWS_PER_TASK * self.shape.intermediate)
                .for_each(|rows| self.shape.activation.apply(rows));
            let out = layer.down.forward(&inner);
            self.add_and_norm(&mut x, &out, &layer.output_norm);
        }
        starts
            .windows(2)
            .map(|range| {
                let mut mean = vec![0f32; h];
                for row in x[range[0] * h..range[1] * h].chunks_exact(h) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += v;
                    }
                }
                let count = (range[1] - range[0]).max(1) as f32;
                let norm = (mean.iter().map(|m| m * m).sum::<f32>().sqrt() / count).max(1e-12);
                mean.iter_mut().for_each(|m| *m /= count * norm);
                mean
            })
            .collect()
    }

    fn embeddings(&self, sequences: &[&[u32]], tokens: usize) -> Vec<f32> {
        let h = self.shape.hidden;
        let mut x = vec![0f32; tokens * h];
        let rows = sequences
            .iter()
            .flat_map(|ids| ids.iter().enumerate())
            .zip(x.chunks_exact_mut(h));
        for ((position, &id), row) in rows {
            let id = (id as usize).min(self.shape.vocab - 1);
            let position = (position + self.shape.position_offset).min(self.shape.positions - 1);
            self.word.read_row(id, row);
            let place = &self.position[position * h..(position + 1) * h];
            for ((v, p), t) in row.iter_mut().zip(place).zip(&self.token_type) {
                *v += p + t;
            }
        }
        let norm = &self.embedding_norm;
        layer_norm(&mut x, h, &norm.gamma, &norm.beta, self.shape.eps);
        x
    }

    /// `x = LayerNorm(x + residual)`, row by row across threads.
    fn add_and_norm(&self, x: &mut [f32], residual: &[f32], norm: &Norm) {
        let h = self.shape.hidden;
        x.par_chunks_mut(ROWS_PER_TASK * h)
            .zip(residual.par_chunks(ROWS_PER_TASK * h))
            .for_each(|(x, r)| {
                ops::add_and_norm(x, Some(r), h, &norm.gamma, &norm.beta, self.shape.eps)
            });
    }

    /// Multi-head self-attention of each sequence over its own rows of `qkv`
    /// (`[token][q | k | v]`), into `[token][hidden]`.
    fn attention(&self, qkv: &[f32], starts: &[usize]) -> Vec<f32> {
        let h = self.shape.hidden;
        let mut context = vec![0f32; (starts.last().unwrap()) * h];
        let mut pieces = Vec::with_capacity(starts.len());
        let mut rest = context.as_mut_slice();
        for range in starts.windows(2) {
            let (piece, tail) = rest.split_at_mut((range[1] - range[0]) * h);
            pieces.push((&qkv[range[0] * 3 * h..range[1] * 3 * h], piece));
            rest = tail;
        }
        pieces
            .into_par_iter()
            .for_each_init(AttentionScratch::default, |scratch, (rows, out)| {
                ops::attend(rows, h, self.shape.heads, out, scratch)
            });
        context
    }
}
