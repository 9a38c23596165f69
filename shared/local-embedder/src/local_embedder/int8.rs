//! Linear layers in 8-bit integers: weights quantised once at load (per output, symmetric,
//! i8), activations per row at each call (from the row's minimum to its maximum, u8: the
//! inputs after GELU are mostly positive, and a symmetric scale would waste half the
//! levels), products summed exactly in 32-bit integers.
//!
//! Why: the encoder is six layers of matrix products, and on one core f32 runs at most 16
//! multiply-adds a cycle with AVX2 (gemm's kernel on stable Rust). AVX-512 VNNI's
//! `vpdpbusd` does 64 u8 × i8 multiply-adds an instruction. The portable kernel computes
//! the same integer sums (the same vectors, bit for bit), but about 30× slower than VNNI
//! and 10× slower than f32, so `Precision::Auto` uses 8 bits only where VNNI is.

use multiversion::multiversion;

/// Outputs per block: one 512-bit register of 32-bit sums.
const LANES: usize = 16;
/// Inputs per group: `vpdpbusd` multiplies 4 bytes into each 32-bit lane.
const GROUP: usize = 4;

/// One layer's weights, quantised.
pub struct QuantizedWeights {
    outputs: usize,
    /// Inputs rounded up to a multiple of [`GROUP`] (the extra weights are zero).
    inputs: usize,
    /// `[block][group][lane][byte]`: each (block, group) is the 64 bytes one VNNI
    /// instruction reads, 16 outputs × 4 consecutive inputs.
    packed: Vec<i8>,
    /// Per output: the weights' scale (max |w| / 127).
    scales: Vec<f32>,
    /// Per output: the sum of its quantised weights (what each row's minimum multiplies).
    sums: Vec<f32>,
}

/// A batch of rows quantised for one product: `x ≈ minimum + q × scale`, q in 0-255.
struct QuantizedRows {
    inputs: usize,
    bytes: Vec<u8>,
    scales: Vec<f32>,
    minimums: Vec<f32>,
}

impl QuantizedWeights {
    /// `weights` is `[outputs][inputs]`, row-major (PyTorch's `nn.Linear` layout).
    pub fn new(weights: &[f32], outputs: usize, inputs: usize) -> Self {
        assert_eq!(weights.len(), outputs * inputs);
        let padded_outputs = outputs.div_ceil(LANES) * LANES;
        let padded_inputs = inputs.div_ceil(GROUP) * GROUP;
        let groups = padded_inputs / GROUP;
        let mut packed = vec![0i8; padded_outputs * padded_inputs];
        let mut scales = vec![0f32; padded_outputs];
        let mut sums = vec![0f32; padded_outputs];
        for (out, row) in weights.chunks_exact(inputs).enumerate() {
            let max = row.iter().fold(0f32, |m, w| m.max(w.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales[out] = scale;
            let (block, lane) = (out / LANES, out % LANES);
            let inverse = 1.0 / scale;
            let mut sum = 0i32;
            for (i, w) in row.iter().enumerate() {
                let q = round_to_byte((w * inverse).clamp(-127.0, 127.0)) as i8;
                sum += q as i32;
                let (group, byte) = (i / GROUP, i % GROUP);
                packed[((block * groups + group) * LANES + lane) * GROUP + byte] = q;
            }
            sums[out] = sum as f32;
        }
        Self {
            outputs,
            inputs: padded_inputs,
            packed,
            scales,
            sums,
        }
    }

    /// `out[r][o] = bias[o] + Σ x[r][i] w[o][i]` for every row of `x` (`inputs` wide),
    /// with the products summed in integers, then scaled and shifted by the row's minimum.
    pub fn forward(&self, x: &[f32], inputs: usize, bias: &[f32], out: &mut [f32]) {
        let rows = QuantizedRows::new(x, inputs);
        assert_eq!(rows.inputs, self.inputs);
        let count = rows.scales.len();
        assert_eq!(out.len(), count * self.outputs);
        let blocks = self.scales.len() / LANES;
        let mut sums = vec![0i32; count * blocks * LANES];
        kernel(self, &rows, &mut sums);
        dequantize(self, &rows, &sums, bias, out);
    }
}

impl QuantizedRows {
    /// Each row of `values` (`inputs` wide) mapped from its minimum (0) to its maximum (255).
    fn new(values: &[f32], inputs: usize) -> Self {
        let padded = inputs.div_ceil(GROUP) * GROUP;
        let count = values.len() / inputs;
        let mut rows = Self {
            inputs: padded,
            bytes: vec![0u8; count * padded],
            scales: vec![0.0; count],
            minimums: vec![0.0; count],
        };
        quantize(values, inputs, &mut rows);
        rows
    }
}

#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn quantize(values: &[f32], inputs: usize, rows: &mut QuantizedRows) {
    for (((row, target), scale), minimum) in values
        .chunks_exact(inputs)
        .zip(rows.bytes.chunks_exact_mut(rows.inputs))
        .zip(&mut rows.scales)
        .zip(&mut rows.minimums)
    {
        // Comparisons written out: `f32::min` also orders NaN, which keeps it scalar.
        let (mut min, mut max) = ([f32::MAX; LANES], [f32::MIN; LANES]);
        let chunks = row.chunks_exact(LANES);
        for v in chunks.remainder() {
            min[0] = if *v < min[0] { *v } else { min[0] };
            max[0] = if *v > max[0] { *v } else { max[0] };
        }
        for chunk in chunks {
            for ((lo, hi), v) in min.iter_mut().zip(&mut max).zip(chunk) {
                *lo = if *v < *lo { *v } else { *lo };
                *hi = if *v > *hi { *v } else { *hi };
            }
        }
        let min = min.iter().fold(f32::MAX, |a, b| a.min(*b));
        let max = max.iter().fold(f32::MIN, |a, b| a.max(*b));
        *scale = if max > min { (max - min) / 255.0 } else { 1.0 };
        *minimum = min;
        let inverse = 1.0 / *scale;
        for (b, v) in target.iter_mut().zip(row) {
            *b = round_to_byte(((v - min) * inverse).clamp(0.0, 255.0));
        }
    }
}

/// `x` (within ±255) rounded to the nearest integer (ties to even), as its low byte: adding
/// 1.5 × 2²³, whose ulp is 1, leaves the integer in the mantissa's low bits. A
/// float-to-int cast saturates and checks for NaN value by value; this stays in vectors.
#[inline(always)]
fn round_to_byte(x: f32) -> u8 {
    (x + 12_582_912.0).to_bits() as u8
}

/// `out = (sums × row scale + row minimum × weight sums) × weight scale + bias`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn dequantize(
    weights: &QuantizedWeights,
    rows: &QuantizedRows,
    sums: &[i32],
    bias: &[f32],
    out: &mut [f32],
) {
    let outputs = weights.outputs;
    let stride = weights.scales.len();
    for (((out_row, sum_row), row_scale), minimum) in out
        .chunks_exact_mut(outputs)
        .zip(sums.chunks_exact(stride))
        .zip(&rows.scales)
        .zip(&rows.minimums)
    {
        for ((((y, sum), weight_sum), weight_scale), bias) in out_row
            .iter_mut()
            .zip(sum_row)
            .zip(&weights.sums)
            .zip(&weights.scales)
            .zip(bias)
        {
            *y = (*sum as f32 * row_scale + minimum * weight_sum) * weight_scale + bias;
        }
    }
}

/// Every row × every block of 16 outputs, into `sums` (`[row][output]`, outputs padded).
fn kernel(weights: &QuantizedWeights, rows: &QuantizedRows, sums: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if vnni::available() {
        // SAFETY: the CPU has the instructions (checked at run time just above).
        unsafe { vnni::kernel(weights, rows, sums) };
        return;
    }
    portable(weights, rows, sums);
}

/// Whether the fast kernel runs on this CPU (reported once at load).
pub fn kernel_name() -> &'static str {
    if fast_kernel() {
        "avx512-vnni"
    } else {
        "portable"
    }
}

/// Whether 8 bits pay here: the portable kernel is about 10× slower than f32 (gemm),
/// as compilers do not turn its byte products into the CPU's dot-product instructions.
pub fn fast_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    if vnni::available() {
        return true;
    }
    false
}

/// The same sums with plain integer arithmetic: for `int8` chosen on a CPU without VNNI,
/// and the fast kernel's check in the tests.
fn portable(weights: &QuantizedWeights, rows: &QuantizedRows, sums: &mut [i32]) {
    let groups = weights.inputs / GROUP;
    let blocks = weights.scales.len() / LANES;
    let block_bytes = groups * LANES * GROUP;
    for (row, row_sums) in rows
        .bytes
        .chunks_exact(weights.inputs)
        .zip(sums.chunks_exact_mut(blocks * LANES))
    {
        for (block, lanes) in weights
            .packed
            .chunks_exact(block_bytes)
            .zip(row_sums.chunks_exact_mut(LANES))
        {
            let mut acc = [0i32; LANES];
            for (x, w) in row
                .chunks_exact(GROUP)
                .zip(block.chunks_exact(LANES * GROUP))
            {
                for (lane, w) in acc.iter_mut().zip(w.chunks_exact(GROUP)) {
                    *lane += x[0] as i32 * w[0] as i32
                        + x[1] as i32 * w[1] as i32
                        + x[2] as i32 * w[2] as i32
                        + x[3] as i32 * w[3] as i32;
                }
            }
            lanes.copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{QuantizedRows, QuantizedWeights, GROUP, LANES};
    use std::arch::x86_64::*;

    /// Rows per tile: 6 rows × 4 blocks = 24 accumulators of the 32 registers.
    const ROWS: usize = 6;
    const BLOCKS: usize = 4;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// Tiles of up to 6 rows × 64 outputs; each tile's weights (64 bytes per group of 4
    /// inputs and block) are read once per 6 rows, each row's 4 bytes broadcast once per
    /// 4 blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn kernel(weights: &QuantizedWeights, rows: &QuantizedRows, sums: &mut [i32]) {
        let groups = weights.inputs / GROUP;
        let blocks = weights.scales.len() / LANES;
        let count = rows.scales.len();
        let stride = blocks * LANES;
        let mut block = 0;
        while block < blocks {
            let width = (blocks - block).min(BLOCKS);
            let mut row = 0;
            while row < count {
                let height = (count - row).min(ROWS);
                let tile = Tile {
                    x: rows.bytes.as_ptr().add(row * weights.inputs),
                    x_stride: weights.inputs,
                    w: weights.packed.as_ptr().add(block * groups * LANES * GROUP),
                    groups,
                    out: sums.as_mut_ptr().add(row * stride + block * LANES),
                    out_stride: stride,
                };
                match (height, width) {
                    (h, 4) => dispatch_rows::<4>(&tile, h),
                    (h, 3) => dispatch_rows::<3>(&tile, h),
                    (h, 2) => dispatch_rows::<2>(&tile, h),
                    (h, _) => dispatch_rows::<1>(&tile, h),
                }
                row += height;
            }
            block += width;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dispatch_rows<const W: usize>(tile: &Tile, height: usize) {
        match height {
            6 => tile.run::<6, W>(),
            5 => tile.run::<5, W>(),
            4 => tile.run::<4, W>(),
            3 => tile.run::<3, W>(),
            2 => tile.run::<2, W>(),
            _ => tile.run::<1, W>(),
        }
    }

    struct Tile {
        x: *const u8,
        x_stride: usize,
        w: *const i8,
        groups: usize,
        out: *mut i32,
        out_stride: usize,
    }

    impl Tile {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn run<const H: usize, const W: usize>(&self) {
            let mut acc = [[_mm512_setzero_si512(); W]; H];
            let block_stride = self.groups * LANES * GROUP;
            for group in 0..self.groups {
                let mut w = [_mm512_setzero_si512(); W];
                for (b, w) in w.iter_mut().enumerate() {
                    *w = _mm512_loadu_si512(
                        self.w.add(b * block_stride + group * LANES * GROUP) as *const _
                    );
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = (self.x.add(r * self.x_stride + group * GROUP) as *const i32)
                        .read_unaligned();
                    let x = _mm512_set1_epi32(x);
                    for (acc, w) in acc.iter_mut().zip(&w) {
                        *acc = _mm512_dpbusd_epi32(*acc, x, *w);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (b, acc) in acc.iter().enumerate() {
                    _mm512_storeu_si512(
                        self.out.add(r * self.out_stride + b * LANES) as *mut _,
                        *acc,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_fast_and_portable_kernels_give_the_same_sums_and_both_approximate_f32() {
        // Odd sizes: rows not a multiple of the tile, outputs not of 16, inputs not of 4.
        let (rows, outputs, inputs) = (13, 37, 70);
        let w = values(outputs * inputs, 7);
        let x = values(rows * inputs, 11);
        let weights = QuantizedWeights::new(&w, outputs, inputs);
        let quantized = QuantizedRows::new(&x, inputs);
        let blocks = weights.scales.len() / LANES;
        let mut portable_sums = vec![0; rows * blocks * LANES];
        portable(&weights, &quantized, &mut portable_sums);
        let mut sums = vec![0; rows * blocks * LANES];
        kernel(&weights, &quantized, &mut sums);
        assert_eq!(sums, portable_sums, "kernel {}", kernel_name());

        let bias: Vec<f32> = values(outputs, 3);
        let mut out = vec![0f32; rows * outputs];
        weights.forward(&x, inputs, &bias, &mut out);
        let mut worst = 0f32;
        for r in 0..rows {
            for o in 0..outputs {
                let exact: f32 = bias[o]
                    + (0..inputs)
                        .map(|i| x[r * inputs + i] * w[o * inputs + i])
                        .sum::<f32>();
                worst = worst.max((out[r * outputs + o] - exact).abs());
            }
        }
        // 70 products of values in [-1, 1], each off by up to half a step of 1/127 and half
        // a step of 2/255 (0.008); the errors' signs vary, so the sum drifts by ~√70 of it.
        assert!(worst < 0.15, "worst error {worst}");
        assert!(worst > 0.0, "quantisation is not exact");
    }

    #[test]
    fn rounding_to_a_byte_is_rounding_to_nearest_even() {
        for i in -2550..=2550 {
            for x in [i as f32 / 10.0, i as f32 / 10.0 + 0.5] {
                let expected = x.round_ties_even() as i32;
                assert_eq!(round_to_byte(x), expected as u8, "{x}");
                assert_eq!(round_to_byte(x) as i8 as i32, expected as i8 as i32, "{x}");
            }
        }
    }

    #[test]
    fn a_row_of_zeros_gives_the_bias() {
        let weights = QuantizedWeights::new(&values(16 * 8, 5), 16, 8);
        let bias: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut out = vec![f32::NAN; 16];
        weights.forward(&[0.0; 8], 8, &bias, &mut out);
        assert_eq!(out, bias);
    }
}
