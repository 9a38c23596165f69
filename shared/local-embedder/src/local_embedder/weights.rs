//! model.safetensors, read tensor by tensor into f32.

use std::path::Path;

use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// The file, memory-mapped: the weights are copied out of it once, at load.
pub fn map(file: &Path) -> Result<Mmap, String> {
    let handle = std::fs::File::open(file).map_err(|e| e.to_string())?;
    // SAFETY: the file is only read. The mapping lives as long as the model (the word
    // embeddings are read from it): a model file replaced by a new one (a new inode, as a
    // deployment or `cp` to a temporary name and `mv` does) leaves it intact; one
    // truncated or rewritten in place under a running process is the operator's mistake,
    // as with any mapped model file.
    unsafe { Mmap::map(&handle) }.map_err(|e| e.to_string())
}

/// The parsed file and the prefix its encoder's tensors carry (`""`, `bert.`, `roberta.`).
pub struct Weights<'a> {
    bytes: &'a [u8],
    tensors: SafeTensors<'a>,
    prefix: String,
}

impl<'a> Weights<'a> {
    pub fn parse(bytes: &'a [u8], model_type: Option<&str>) -> Result<Self, String> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let anchor = "embeddings.word_embeddings.weight";
        let prefix = [String::new(), "bert.".into()]
            .into_iter()
            .chain(model_type.map(|t| format!("{}.", t.replace('-', "_"))))
            .find(|prefix| tensors.tensor(&format!("{prefix}{anchor}")).is_ok())
            .ok_or_else(|| format!("no tensor {anchor} (nor under bert.): not a BERT encoder"))?;
        Ok(Self {
            bytes,
            tensors,
            prefix,
        })
    }

    /// The tensor `name`, after checking that it is there, of `shape` and of a float type.
    fn float_view(&self, name: &str, shape: &[usize]) -> Result<TensorView<'_>, String> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full)
            .map_err(|_| format!("tensor {full} is missing"))?;
        if view.shape() != shape {
            return Err(format!(
                "tensor {full} has shape {:?}, the config says {shape:?}",
                view.shape()
            ));
        }
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(format!(
                "tensor {full} is {:?}, not a float type",
                view.dtype()
            ));
        }
        Ok(view)
    }

    /// The tensor `name` as f32.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let view = self.float_view(name, shape)?;
        let mut values = vec![0f32; shape.iter().product()];
        decode(view.dtype(), view.data(), &mut values);
        Ok(values)
    }

    /// Where the tensor `name` lies in the file, for a table read in place
    /// ([`MappedTable`]).
    pub fn locate(&self, name: &str, shape: &[usize]) -> Result<(usize, Dtype), String> {
        let view = self.float_view(name, shape)?;
        let offset = view.data().as_ptr() as usize - self.bytes.as_ptr() as usize;
        Ok((offset, view.dtype()))
    }

    /// A LayerNorm's weight or bias, under its current or its older (TensorFlow) name.
    pub fn norm(
        &self,
        prefix: &str,
        name: &str,
        old_name: &str,
        width: usize,
    ) -> Result<Vec<f32>, String> {
        self.get(&format!("{prefix}.{name}"), &[width])
            .or_else(|_| self.get(&format!("{prefix}.{old_name}"), &[width]))
    }
}

/// A table of rows read from the mapped file when used, not copied at load: the word
/// embeddings (30,522 × 384 floats for MiniLM, 47 MB) of which a corpus touches a few
/// thousand rows. The pages stay file-backed (shared, reclaimable), and a cold start skips
/// converting the table.
pub struct MappedTable {
    map: Mmap,
    offset: usize,
    dtype: Dtype,
    width: usize,
}

impl MappedTable {
    pub fn new(map: Mmap, (offset, dtype): (usize, Dtype), width: usize) -> Self {
        Self {
            map,
            offset,
            dtype,
            width,
        }
    }

    /// Row `index` as f32, into `target`.
    pub fn read_row(&self, index: usize, target: &mut [f32]) {
        let size = if self.dtype == Dtype::F32 { 4 } else { 2 };
        let start = self.offset + index * self.width * size;
        decode(
            self.dtype,
            &self.map[start..start + self.width * size],
            target,
        );
    }
}

/// Little-endian f32, f16 or bf16 values (checked by [`Weights::float_view`]) into f32.
fn decode(dtype: Dtype, bytes: &[u8], target: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (t, b) in target.iter_mut().zip(bytes.chunks_exact(4)) {
                *t = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => {
            for (t, b) in target.iter_mut().zip(bytes.chunks_exact(2)) {
                *t = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (t, b) in target.iter_mut().zip(bytes.chunks_exact(2)) {
                *t = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
    }
}
