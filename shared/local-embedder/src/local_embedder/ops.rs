//! The encoder's element-wise steps and attention, as plain loops over rows that the
//! compiler vectorises, each compiled for AVX-512 and AVX2 as well as the baseline and
//! picked at run time (`multiversion`). Sums are taken over [`LANES`] partial sums in a
//! fixed order, so every version gives the same numbers, bit for bit.

use multiversion::multiversion;

/// Partial sums per reduction: one AVX-512 register of f32.
const LANES: usize = 16;

/// Σ x, over [`LANES`] partial sums (a plain fold is one long chain the compiler may not
/// reorder, so it never vectorises).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut partial = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (p, v) in partial.iter_mut().zip(chunk) {
            *p += v;
        }
    }
    partial.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Σ (x - mean)², the same way.
#[inline(always)]
fn squared_deviations(x: &[f32], mean: f32) -> f32 {
    let mut partial = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (p, v) in partial.iter_mut().zip(chunk) {
            *p += (v - mean) * (v - mean);
        }
    }
    partial.iter().sum::<f32>() + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

/// LayerNorm of each row of `x` in place: `(x - mean) / sqrt(var + eps) * gamma + beta`.
pub fn layer_norm(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    add_and_norm(x, None, width, gamma, beta, eps)
}

/// `x = LayerNorm(x + residual)` row by row (`residual` absent: LayerNorm alone).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
pub fn add_and_norm(
    x: &mut [f32],
    residual: Option<&[f32]>,
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    if let Some(residual) = residual {
        for (v, r) in x.iter_mut().zip(residual) {
            *v += r;
        }
    }
    for row in x.chunks_exact_mut(width) {
        let mean = sum(row) / width as f32;
        let variance = squared_deviations(row, mean) / width as f32;
        let inverse = 1.0 / (variance + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inverse * g + b;
        }
    }
}

/// The activation between a layer's two feed-forward products, as config.json names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: x·Φ(x) with the exact normal CDF (BERT, MiniLM).
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    pub fn apply(self, x: &mut [f32]) {
        activate(self, x)
    }
}

#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn activate(activation: Activation, x: &mut [f32]) {
    match activation {
        Activation::Gelu => {
            for v in x {
                *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
            for v in x {
                // tanh(u) = 1 - 2 / (exp(2u) + 1), with the vectorisable exp.
                let inner = C * (*v + 0.044_715 * *v * *v * *v);
                let tanh = 1.0 - 2.0 / (exp((2.0 * inner).min(80.0)) + 1.0);
                *v = 0.5 * *v * (1.0 + tanh);
            }
        }
        Activation::Relu => {
            for v in x {
                *v = v.max(0.0);
            }
        }
    }
}

/// erf to within a few f32 ulps: a rational function of odd and even polynomials on
/// [-4, 4] (beyond it erf is ±1 in f32), the approximation Eigen and XLA use. Branch-free,
/// so a loop of it vectorises; libm's erf does not.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    // Plain multiply-adds: `mul_add` is a call to a software fma where the build does not
    // target FMA (the default x86-64 target), 20 times slower.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_474e-2;
    p / q
}

/// e^x within 2 ulps for x ≤ 88 (below -87.3 it is 0): x = n ln2 + r, e^r by its
/// degree-6 Taylor polynomial on |r| ≤ ln2/2, 2^n put in the exponent bits. Branch-free,
/// so a loop of it vectorises; libm's expf is a call per value.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    // ln 2 in two parts, so n × ln2 is exact to f32's precision.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Softmax of `scores` in place.
#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
    for s in scores.iter_mut() {
        *s = exp(*s - max);
    }
    let inverse = 1.0 / sum(scores);
    for s in scores {
        *s *= inverse;
    }
}

/// Scratch space for [`attend`], kept by its caller across texts.
#[derive(Default)]
pub struct AttentionScratch {
    keys_transposed: Vec<f32>,
    scores: Vec<f32>,
}

/// Queries computed together: four independent sums in flight hide the adds' latency.
const QUERIES: usize = 4;

/// Multi-head self-attention of one text over its own rows of `qkv` (`[token][q | k | v]`,
/// each `hidden` wide) into `out` (`[token][hidden]`).
///
/// The keys are copied transposed (and padded to [`LANES`] tokens) once for all heads.
/// Four queries go together: their scores against 16 keys are four registers summed over
/// the head's dimensions, their context vectors four registers per 16 dimensions summed
/// over the keys, so nothing is stored between multiply-adds. The last group repeats its
/// last query rather than branch.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
pub fn attend(
    qkv: &[f32],
    hidden: usize,
    heads: usize,
    out: &mut [f32],
    scratch: &mut AttentionScratch,
) {
    let d = hidden / heads;
    let width = 3 * hidden;
    let length = out.len() / hidden;
    if length == 0 {
        // A text of no tokens (a tokenizer that adds no special tokens, given ""): its
        // vector is the zero vector, as sentence-transformers gives.
        return;
    }
    let padded = length.div_ceil(LANES) * LANES;
    let scale = 1.0 / (d as f32).sqrt();
    let AttentionScratch {
        keys_transposed,
        scores,
    } = scratch;
    keys_transposed.clear();
    keys_transposed.resize(hidden * padded, 0.0);
    for (t, row) in qkv.chunks_exact(width).enumerate() {
        for (c, k) in row[hidden..2 * hidden].iter().enumerate() {
            keys_transposed[c * padded + t] = *k;
        }
    }
    scores.clear();
    scores.resize(QUERIES * padded, 0.0);
    for head in 0..heads {
        let keys = &keys_transposed[head * d * padded..(head + 1) * d * padded];
        for first in (0..length).step_by(QUERIES) {
            let rows: [usize; QUERIES] = std::array::from_fn(|r| (first + r).min(length - 1));
            let query_at = rows.map(|row| row * width + head * d);
            for block in 0..padded / LANES {
                // Fixed-size arrays throughout: the compiler then keeps `acc` in registers.
                let mut acc = [[0f32; LANES]; QUERIES];
                for c in 0..d {
                    let keys: &[f32; LANES] = keys[c * padded + block * LANES..][..LANES]
                        .try_into()
                        .expect("16 keys");
                    for (acc, at) in acc.iter_mut().zip(query_at) {
                        let q = qkv[at + c];
                        for (a, k) in acc.iter_mut().zip(keys) {
                            *a += q * k;
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let target = &mut scores[r * padded + block * LANES..][..LANES];
                    for (s, a) in target.iter_mut().zip(acc) {
                        *s = a * scale;
                    }
                }
            }
            for weights in scores.chunks_exact_mut(padded) {
                softmax(&mut weights[..length]);
            }
            let value_at = 2 * hidden + head * d;
            let mut offset = 0;
            while offset + LANES <= d {
                let mut acc = [[0f32; LANES]; QUERIES];
                for (j, row) in qkv.chunks_exact(width).enumerate() {
                    let values: &[f32; LANES] = row[value_at + offset..][..LANES]
                        .try_into()
                        .expect("16 values");
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let p = scores[r * padded + j];
                        for (a, v) in acc.iter_mut().zip(values) {
                            *a += p * v;
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(length - first) {
                    let at = (first + r) * hidden + head * d + offset;
                    out[at..at + LANES].copy_from_slice(acc);
                }
                offset += LANES;
            }
            for c in offset..d {
                for r in 0..QUERIES.min(length - first) {
                    out[(first + r) * hidden + head * d + c] = qkv
                        .chunks_exact(width)
                        .enumerate()
                        .map(|(j, row)| scores[r * padded + j] * row[value_at + c])
                        .sum();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf's Taylor series in f64, exact enough on [-4, 4] to check the approximation.
    fn erf_series(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_a_few_ulps_everywhere() {
        let mut worst = (0f64, 0f32);
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            // Beyond 4.5, erf is 1 within 2e-10 (and the series loses f64's precision).
            let expected = if x.abs() >= 4.5 {
                x.signum() as f64
            } else {
                erf_series(x as f64)
            };
            let error = (erf(x) as f64 - expected).abs();
            if error > worst.0 {
                worst = (error, x);
            }
        }
        assert!(worst.0 < 1e-6, "worst error {worst:?}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-1.0), -erf(1.0));
    }

    #[test]
    fn gelu_matches_its_definition_and_the_tanh_form_is_close() {
        let xs: Vec<f32> = (-40..=40).map(|i| i as f32 / 8.0).collect();
        let mut exact = xs.clone();
        Activation::Gelu.apply(&mut exact);
        let mut tanh = xs.clone();
        Activation::GeluTanh.apply(&mut tanh);
        for ((x, g), t) in xs.iter().zip(&exact).zip(&tanh) {
            let expected = 0.5 * *x as f64 * (1.0 + erf_series(*x as f64 / 2f64.sqrt()));
            assert!((*g as f64 - expected).abs() < 2e-6, "gelu({x}) = {g}");
            assert!((g - t).abs() < 2e-3, "tanh form at {x}: {t} vs {g}");
        }
        assert_eq!(Activation::parse("gelu"), Some(Activation::Gelu));
        assert_eq!(Activation::parse("swish"), None);
    }

    /// Attention written the plain way, in f64.
    fn attention_reference(qkv: &[f32], hidden: usize, heads: usize) -> Vec<f64> {
        let d = hidden / heads;
        let length = qkv.len() / (3 * hidden);
        let mut out = vec![0f64; length * hidden];
        for head in 0..heads {
            for i in 0..length {
                let at = |t: usize, part: usize, c: usize| {
                    qkv[t * 3 * hidden + part * hidden + head * d + c] as f64
                };
                let scores: Vec<f64> = (0..length)
                    .map(|j| {
                        (0..d).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for c in 0..d {
                    out[i * hidden + head * d + c] = (0..length)
                        .map(|j| (scores[j] - max).exp() / total * at(j, 2, c))
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_plain_computation() {
        // Heads of 32 (MiniLM's), and of 20 (a part of a register left over); lengths
        // that are and are not multiples of the 4 queries and 16 keys done together.
        attend(&[], 64, 2, &mut [], &mut AttentionScratch::default());
        for (hidden, heads, length) in [(64, 2, 1), (64, 2, 7), (64, 2, 33), (40, 2, 18)] {
            let mut state = 17u32;
            let qkv: Vec<f32> = (0..length * 3 * hidden)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((state >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0) * 3.0
                })
                .collect();
            let mut out = vec![f32::NAN; length * hidden];
            attend(
                &qkv,
                hidden,
                heads,
                &mut out,
                &mut AttentionScratch::default(),
            );
            for (got, expected) in out.iter().zip(attention_reference(&qkv, hidden, heads)) {
                assert!(
                    (*got as f64 - expected).abs() < 1e-5,
                    "hidden {hidden}, length {length}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn exp_is_within_a_few_ulps() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let expected = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - expected) / expected).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn layer_norm_and_softmax() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.5; 4], 1e-12);
        let sd = 1.25f32.sqrt();
        for (v, e) in x[..4]
            .iter()
            .zip([-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd])
        {
            assert!((v - (e + 0.5)).abs() < 1e-5);
        }
        assert_eq!(&x[4..], &[0.5; 4]);
        let mut s = vec![1.0, 2.0, 3.0];
        softmax(&mut s);
        let total: f32 = [1f32, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        for (p, v) in s.iter().zip([1f32, 2.0, 3.0]) {
            assert!((p - v.exp() / total).abs() < 1e-6);
        }
    }
}
